"""One exception type for every problem a user can fix.

Every message names the problem *and* the fix, so that the CLI can print it as one error line
and the widgets can show it as a napari notification, without a traceback.
"""


class DDWError(ValueError):
    """A problem with the user's input or setup; ``str(err)`` is the message to show."""


class CheckpointError(DDWError):
    """A checkpoint that cannot be read, is not ours, or was tampered with."""
