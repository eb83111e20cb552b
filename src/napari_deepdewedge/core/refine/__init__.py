"""Applying a fitted model to whole tomograms (tiles, bands, memory)."""
