"""From a tilt series to tomograms: even/odd halves and weighted back-projection."""
