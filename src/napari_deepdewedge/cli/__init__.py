"""``deepdewedge``: the DeepDeWedge engine from a terminal (workstations, cluster nodes).

A thin front end over :mod:`napari_deepdewedge.pipeline`: argument parsing (:mod:`.options`),
YAML configs (:mod:`.config_merge`), progress on stderr (:mod:`.progress`: bars on a terminal,
plain lines in a log), one short function per command (:mod:`.commands`, :mod:`.demo`).
No Qt or napari imports, and torch is only imported by the commands that need it
(``deepdewedge --help`` stays fast).

Errors a user can fix (:class:`~napari_deepdewedge.core.errors.DDWError`, and OS errors such as
a folder that cannot be written) print exactly one line ``error: <message>`` on stderr and exit
with status 2, as argparse does for usage errors. Ctrl-C during fitting saves a ``stopped``
checkpoint and exits with status 130.

Run ``deepdewedge COMMAND --help`` or see ``docs/cli.md``.
"""
from __future__ import annotations

import sys

from ..core.errors import DDWError
from .config_merge import apply_config
from .inputs import tilt_range_for_fit
from .options import PRESET_NAMES, build_parser
from .output import engine_warnings_as_lines, one_line

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

__all__ = ["main", "build_parser", "apply_config", "tilt_range_for_fit", "fit_config",
           "PRESET_NAMES", "DEMO_SIZES"]


def _command(name: str):
    """The function of a command (imported on use: the pipeline stays unloaded for --help)."""
    if name == "demo":
        from .demo import cmd_demo

        return cmd_demo
    if name == "mask":
        from .mask import cmd_mask

        return cmd_mask
    from . import commands

    return getattr(commands, f"cmd_{name}")


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0, 2 for user errors, 130 on Ctrl-C)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        # torchrun … -m napari_deepdewedge.cli -- fit …: the '--' keeps torchrun's own parser
        # from reading our options (it mistakes --even for its --event-log-handler)
        argv = argv[1:]
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help/--version (0) or a usage error (2)
        return int(exc.code or 0) if not isinstance(exc.code, str) else EXIT_USER_ERROR
    args.argv = argv
    try:
        apply_config(args)
        with engine_warnings_as_lines():
            return int(_command(args.command)(args) or 0)
    except DDWError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:  # a folder that cannot be written, a full disk, …
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {where}{one_line(exc.strerror or exc)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def __getattr__(name):  # torch-free import of the package; these load their modules on use
    if name == "fit_config":
        from .fitting import fit_config

        return fit_config
    if name == "DEMO_SIZES":
        from .demo import DEMO_SIZES

        return DEMO_SIZES
    raise AttributeError(name)
