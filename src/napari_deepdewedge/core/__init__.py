"""The headless engine. No Qt or napari imports anywhere below this package."""
