"""The network, the resampling it is fitted with, and its checkpoint files."""
