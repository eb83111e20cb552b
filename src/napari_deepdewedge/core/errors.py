"""One exception type for every problem a user can fix.

Every message names the problem *and* the fix, so that the CLI can print it as one error line
and the widgets can show it as a napari notification, without a traceback.
"""


class DDWError(ValueError):
    """A problem with the user's input or setup; ``str(err)`` is the message to show."""


class CheckpointError(DDWError):
    """A checkpoint that cannot be read, is not ours, or was tampered with."""


class WriteError(DDWError):
    """A file could not be written (full disk, no permission, ...); names path and free space."""


class DDWWarning(UserWarning):
    """Something the engine worked around and the user should know (e.g. a corrupt checkpoint
    replaced by the previous one, a smaller refinement batch after running out of memory)."""
