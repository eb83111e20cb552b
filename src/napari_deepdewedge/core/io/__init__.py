"""Reading and writing: MRC volumes, tilt-angle metadata of every kind, atomic storage."""
