"""``--config FILE.yaml``: fill the options a user did not give from the file.

Precedence: explicit flag > config file > preset > engine default. The file is read by
``cli.config.load_config`` (both layouts); values are converted and checked with the option
specs of :mod:`.options` — the same specs the parser was built from.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import DDWError
from ..core.fit.settings import yaml_keys
from .options import COMMANDS, Opt, options_of
from .output import warn

#: DeepDeWedge-layout keys that have no flag of their own (used by the commands if they can)
EXTRA_KEYS = frozenset({"project_dir", "logdir", "output_dir", "model", "refine_batch_size"})


def known_keys() -> set[str]:
    """The flat config vocabulary: every option of every command, except ``config``, and every
    fit setting our layout reads (also those without a flag, e.g. ``residual``)."""
    keys = {dest for name in COMMANDS for dest in options_of(name)}
    return (keys - {"config"}) | EXTRA_KEYS | yaml_keys()


def coerce(opt: Opt, key: str, value, source: str):
    """A YAML value converted with the option's own type, nargs and choices."""
    def one(v):
        if opt.type is None or v is None:
            return v
        if isinstance(v, bool) and getattr(opt.type, "numeric", False):
            raise DDWError(f"{source}: {key} must be a number, got {v!r}")
        try:
            return opt.type(v if isinstance(v, str) else str(v))
        except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
            raise DDWError(f"{source}: {key} = {v!r} is not valid ({exc})") from None

    if opt.kind == "append":  # one value or a list of them
        return [one(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if opt.kind in ("switch", "bool"):
        if not isinstance(value, bool):
            raise DDWError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if isinstance(opt.nargs, int):
        names = " ".join(opt.metavar) if isinstance(opt.metavar, tuple) else ""
        if not isinstance(value, (list, tuple)):
            raise DDWError(f"{source}: {key} needs a list, e.g. [{', '.join(opt.metavar or ())}]")
        if len(value) != opt.nargs:
            raise DDWError(f"{source}: {key} needs {opt.nargs} values ({names}), got {len(value)}")
        return [one(v) for v in value]
    if isinstance(value, (list, tuple, dict)):
        raise DDWError(f"{source}: {key} needs a single value, got {value!r}")
    if opt.choices is not None and value not in opt.choices:
        raise DDWError(f"{source}: {key} = {value!r}; choose one of {', '.join(opt.choices)}")
    return one(value)


def _adapt(command: str, values: dict, layout: str) -> dict:
    """Command-specific readings of shared keys."""
    values = dict(values)
    tilt_range = values.get("tilt_range")
    if command == "fit" and isinstance(tilt_range, list):
        values["tilt_range"] = tilt_range[:2]  # a run config's MIN MAX STEP is fine
    if command == "refine" and "refine_batch_size" not in values and "batch_size" in values \
            and layout == "flat":
        values["refine_batch_size"] = values.pop("batch_size")
    return values


def apply_config(args) -> None:
    """Fill options not given on the command line from ``args.config``; keys without an option
    of this command go to ``args.config_values``; ``args.from_config`` names what was filled."""
    args.config_values, args.from_config = {}, set()
    path = getattr(args, "config", None)
    if not path:
        return
    from .config import load_config

    loaded = load_config(path, known_keys=known_keys())
    for line in loaded.warnings:
        warn(line)
    options = options_of(args.command)
    source = Path(path).name
    angles_given = getattr(args, "angles", None) is not None or getattr(args, "tilt_range", None) is not None
    for key, value in _adapt(args.command, loaded.values, loaded.layout).items():
        opt = options.get(key)
        if opt is None:
            args.config_values[key] = value  # e.g. project_dir; used by the command if it can
            continue
        if getattr(args, key, None) not in (None, False):
            continue  # an explicit flag wins
        if key in ("angles", "tilt_range") and angles_given:
            continue  # the user chose the angles on the command line
        setattr(args, key, coerce(opt, key, value, source))
        args.from_config.add(key)
