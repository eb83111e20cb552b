"""YAML job configurations, in two layouts, turned into one flat dictionary of options.

Two layouts are understood and told apart automatically:

* **flat** (ours): top-level keys are the command-line long option names with underscores,
  e.g. ``subtomo_size: 48``, ``tilt_range: [-60, 60]``, ``epochs: 100``, ``even: tomo_even.mrc``.
* **deepdewedge**: the layout of the original DeepDeWedge command-line tool (``ddw``), with the
  sections ``shared``, ``prepare_data``, ``fit_model`` and ``refine_tomogram``. Its keys are
  translated to ours (``mw_angle`` → a symmetric ``tilt_range``, ``unet_params_dict.chans`` →
  ``channels``, ``num_downsample_layers`` → ``depth``, ``unet_params_dict.residual`` →
  ``residual``, ``adam_params_dict.lr`` → ``lr``, …).

Unknown keys never stop a job: they come back as warning lines. A file that is not valid YAML,
or values that cannot be used at all, raise :class:`~.errors.DDWError`.

No torch import here; :func:`fit_config_from_options` imports the fitting module lazily.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import DDWError
from ..core.fit.settings import BY_NAME, PRESETS, config_overrides, ddw_keys

LAYOUT_FLAT = "flat"
LAYOUT_DDW = "deepdewedge"
DDW_SECTIONS = ("shared", "prepare_data", "fit_model", "refine_tomogram")

#: deepdewedge key → our key, for the fit settings (core/fit/settings.py: ``Setting.ddw``)
_DDW_SETTINGS = ddw_keys()
#: keys the original layout converts (not copies): batch_size (per section), mw_angle, gpu
_DDW_CONVERTED = {"batch_size", "mw_angle", "gpu"}
# deepdewedge key → our key (same in every section), the fit settings' and the others'
_DDW_SIMPLE = {
    **{k: v for k, v in _DDW_SETTINGS.items() if "." not in k and k not in _DDW_CONVERTED},
    "resume_from_checkpoint": "resume",
    "model_checkpoint_file": "model",
    "subtomo_overlap": "overlap",
    "device": "device",  # not the original's key (it has gpu), read as ours
    "project_dir": "project_dir",
    "logdir": "logdir",
    "output_dir": "output_dir",
}
# keys of the original tool that have no meaning here (its data loader, logger, …): accepted
# silently, since a working ddw config always carries them
_DDW_NO_EFFECT = {
    "num_workers",
    "logger",
    "distributed_backend",
    "subtomo_dir",
    "save_n_models_with_lowest_val_loss",
    "save_n_models_with_lowest_fitting_loss",
    "recompute_normalization",
    "pin_memory",
}
_DDW_FILE_LISTS = {"tomo0_files": "even", "tomo1_files": "odd", "mask_files": "mask"}


@dataclass
class LoadedConfig:
    """Options from a config file: ``values`` uses our flat key names."""

    values: dict
    layout: str
    warnings: list[str] = field(default_factory=list)
    path: Path | None = None


def load_config(path, known_keys=None) -> LoadedConfig:
    """Read a YAML config file (either layout); see :func:`normalize_config`."""
    import yaml

    path = Path(path)
    if not path.exists():
        raise DDWError(f"{path}: config file not found; check the path")
    try:
        with open(path, encoding="utf-8") as fh:
            raw = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise DDWError(
            f"{path.name}: not valid YAML{where} ({problem}); fix the file (keys as 'name: value')"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DDWError(f"{path.name}: cannot be read ({exc}); check the file") from None
    loaded = normalize_config(raw, known_keys=known_keys, source=path.name)
    loaded.path = path
    return loaded


def detect_layout(raw: dict) -> str:
    """``"deepdewedge"`` when any of its sections is present as a mapping, else ``"flat"``."""
    if any(isinstance(raw.get(name), dict) for name in DDW_SECTIONS):
        return LAYOUT_DDW
    return LAYOUT_FLAT


def normalize_config(raw, known_keys=None, source: str = "config") -> LoadedConfig:
    """Turn a parsed YAML document into our flat option names.

    ``known_keys``: the flat keys a front end understands; other flat keys give a warning
    (``None`` accepts every key). Returns the values with the detected layout and warnings.
    """
    if raw is None:
        return LoadedConfig(values={}, layout=LAYOUT_FLAT, warnings=[f"{source}: is empty"])
    if not isinstance(raw, dict):
        raise DDWError(
            f"{source}: expected a mapping of 'name: value' lines at the top level but found a "
            f"{type(raw).__name__}; see docs/cli.md for the config layouts"
        )
    if detect_layout(raw) == LAYOUT_DDW:
        return _from_ddw(raw, source)
    values, warnings = {}, []
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        if name in _DDW_FILE_LISTS:  # the original tool's file-list names, written flat
            path = _file_list(name, value, source)
            if path is not None:
                values[_DDW_FILE_LISTS[name]] = path
            continue
        if known_keys is not None and name not in known_keys:
            warnings.append(f"{source}: unknown key '{key}' ignored")
            continue
        values[name] = value
    return LoadedConfig(values=values, layout=LAYOUT_FLAT, warnings=warnings)


def tilt_range_from_mw_angle(mw_angle) -> list[float]:
    """A missing wedge of full width ``mw_angle``° ↔ the symmetric tilt range ±(90 − mw/2)."""
    try:
        mw = float(mw_angle)
    except (TypeError, ValueError):
        raise DDWError(f"mw_angle must be a number of degrees, got {mw_angle!r}") from None
    if not 0 <= mw < 180:
        raise DDWError(
            f"mw_angle {mw:g}° is outside [0°, 180°); it is the full width of the missing wedge, "
            "e.g. 60 for a ±60° tilt series"
        )
    half = 90.0 - mw / 2.0
    return [-half, half]


def _device_from_gpu(gpu, source: str) -> str:
    if isinstance(gpu, (list, tuple)):
        if not gpu:
            return "cpu"
        gpu = gpu[0]
    if gpu is None:
        return "cpu"
    if isinstance(gpu, str):
        text = gpu.strip().lower()
        if text in ("cpu", "auto", "mps") or text.startswith("cuda"):
            return text
        try:
            gpu = int(text)
        except ValueError:
            raise DDWError(f"{source}: gpu '{gpu}' is not a GPU index; give e.g. 0 or [0, 1]") from None
    if isinstance(gpu, bool) or not isinstance(gpu, int):
        raise DDWError(f"{source}: gpu {gpu!r} is not a GPU index; give e.g. 0 or [0, 1]")
    return "cpu" if gpu < 0 else f"cuda:{gpu}"


def _file_list(key: str, value, source: str):
    """One file as a string, several as a list of strings (``fit`` takes several pairs), none as None."""
    if isinstance(value, (list, tuple)):
        if any(not isinstance(v, (str, Path)) for v in value):
            raise DDWError(f"{source}: {key} must list file paths, got {value!r}")
        if len(value) == 0:
            return None
        return str(value[0]) if len(value) == 1 else [str(v) for v in value]
    return None if value is None else str(value)


def _from_ddw(raw: dict, source: str) -> LoadedConfig:
    values: dict = {}
    warnings: list[str] = []
    for key in raw:
        if key not in DDW_SECTIONS:
            warnings.append(f"{source}: unknown top-level key '{key}' ignored (deepdewedge layout)")
    for section in DDW_SECTIONS:
        entries = raw.get(section)
        if entries is None:
            continue
        if not isinstance(entries, dict):
            raise DDWError(f"{source}: section '{section}' must be a mapping of 'name: value' lines")
        for key, value in entries.items():
            where = f"{section}.{key}"
            if key in _DDW_SIMPLE:
                values[_DDW_SIMPLE[key]] = value
            elif key == "batch_size":
                values["refine_batch_size" if section == "refine_tomogram" else "batch_size"] = value
            elif key in _DDW_FILE_LISTS:
                path = _file_list(key, value, source)
                if path is not None:
                    values[_DDW_FILE_LISTS[key]] = path
            elif key == "mw_angle":
                values["tilt_range"] = tilt_range_from_mw_angle(value)
            elif key == "gpu":
                values["device"] = _device_from_gpu(value, source)
            elif key == "unet_params_dict":
                _unet_params(value, values, warnings, source, where)
            elif key == "adam_params_dict":
                _adam_params(value, values, warnings, source, where)
            elif key in _DDW_NO_EFFECT:
                continue
            else:
                warnings.append(f"{source}: unknown key '{where}' ignored")
    return LoadedConfig(values=values, layout=LAYOUT_DDW, warnings=warnings)


def _nested(where: str, key: str):
    """The fit setting of a nested original-layout key (``unet_params_dict.chans``), or None."""
    return _DDW_SETTINGS.get(f"{where.split('.')[-1]}.{key}")


def _unet_params(params, values, warnings, source, where):
    if not isinstance(params, dict):
        raise DDWError(f"{source}: {where} must be a mapping (chans, num_downsample_layers, …)")
    for key, value in params.items():
        name = _nested(where, key)
        if name is not None:
            if BY_NAME[name].type is bool and not isinstance(value, bool):
                raise DDWError(f"{source}: {where}.{key} must be true or false, got {value!r}")
            values[name] = value
        elif key == "drop_prob":
            if value not in (None, 0, 0.0):
                warnings.append(f"{source}: {where}.drop_prob={value} ignored (no dropout here)")
        else:
            warnings.append(f"{source}: unknown key '{where}.{key}' ignored")


def _adam_params(params, values, warnings, source, where):
    if not isinstance(params, dict):
        raise DDWError(f"{source}: {where} must be a mapping (lr, …)")
    for key, value in params.items():
        name = _nested(where, key)
        if name is not None:
            values[name] = value
        else:
            warnings.append(f"{source}: '{where}.{key}' ignored (only lr is used)")


def fit_config_from_options(options: dict, preset: str = "fast", **extra):
    """A ``FitConfig`` from flat options (``None`` values are skipped), on top of ``preset``.

    The options are read as the settings declare them (``core.fit.settings.config_overrides``:
    ``tilt_range`` ``[min, max(, step)]`` becomes ``tilt_min``/``tilt_max``, ``strides`` a
    3-tuple); ``extra`` (e.g. ``out_dir``, ``voxel_size``) is passed through last.
    """
    from ..core.fit.config import FitConfig

    if preset not in PRESETS:
        raise DDWError(f"unknown preset '{preset}'; choose one of {', '.join(PRESETS)}")
    overrides = config_overrides(options)
    overrides.update({k: v for k, v in extra.items() if v is not None})
    return FitConfig.from_preset(preset, **overrides)
