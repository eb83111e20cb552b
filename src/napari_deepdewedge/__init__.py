"""napari-deepdewedge: DeepDeWedge (self-supervised denoising and missing-wedge filling for
cryo-ET) as a napari plugin and a headless command line.

The engine lives in :mod:`napari_deepdewedge.core` and imports neither Qt nor napari; torch is
imported lazily by the modules that need it so that napari starts fast.
"""

__version__ = "0.1.0"
