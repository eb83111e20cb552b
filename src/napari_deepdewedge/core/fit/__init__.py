"""Fitting the model on sub-tomogram cubes: data, loss, the loop, its events and state."""
