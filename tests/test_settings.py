"""One declaration per fit setting (core/fit/settings.py): every FitConfig field has its row,
and every row reaches the front ends it declares — its flag sets the field through the CLI, its
YAML keys (ours and the original layout's) set it through a config file, its dock row sets it
through the Fit dock's form. A row without a flag or dock row says why."""
from __future__ import annotations

import dataclasses

import pytest

from napari_deepdewedge import cli
from napari_deepdewedge.core.fit.config import FitConfig
from napari_deepdewedge.core.fit.settings import FIXED, PRESETS, SETTINGS, Flag, Setting
from conftest import dock as add_dock

DATA_TILT = (-60.0, 60.0)  # what a command reads from the data when no tilt range is given


def sample(setting: Setting):
    """A valid value of a setting that differs from its default and from every preset."""
    default = FitConfig()
    if setting.name == "tilt_range":
        return (-55.0, 55.0)
    if setting.name == "device":
        return "cpu"
    if setting.name == "out_dir":
        return "out"
    if setting.name == "strides":
        return (4, 5, 6)
    value = getattr(default, setting.name)
    if setting.choices:
        return [c for c in setting.choices if c != value][-1]
    if setting.type is bool:
        return not value
    if setting.type is float:
        return value * 2 if value else 0.25
    if setting.name == "subtomo_size":
        return 56  # a multiple of 2**depth
    if setting.name == "depth":
        return 4  # every preset's edge (48, 96) is a multiple of 16
    return value + 1


def field_values(setting: Setting, value) -> dict:
    if setting.name == "tilt_range":
        return {"tilt_min": value[0], "tilt_max": value[1]}
    return {setting.name: value}


def cli_args(setting: Setting, value) -> list[str]:
    if setting.type is bool:
        return [setting.flag.flags[0] if value else "--no-" + setting.flag.flags[0][2:]]
    values = value if isinstance(value, tuple) else (value,)
    return [setting.flag.flags[0], *map(str, values)]


def config_of(args) -> FitConfig:
    tilt = DATA_TILT if args.tilt_range is None else cli.tilt_range_for_fit(args)
    return cli.fit_config(args, tilt_range=tilt, out_dir=None, voxel_size=(1, 1, 1))


def through_the_cli(setting: Setting, value, tmp_path) -> FitConfig:
    args = cli.build_parser().parse_args(["fit", "--even", "e.mrc", "--odd", "o.mrc",
                                          "--preset", "fast", *cli_args(setting, value)])
    cli.apply_config(args)
    return config_of(args)


def through_a_config(text: str, tmp_path) -> FitConfig:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    args = cli.build_parser().parse_args(["fit", "--config", str(path), "--preset", "fast"])
    cli.apply_config(args)
    return config_of(args)


def ddw_yaml(setting: Setting, value) -> str:
    """The setting in the original layout's ``fit_model`` section (nested keys nested)."""
    import yaml

    key = setting.ddw
    if key == "mw_angle":
        value = 180.0 - 2 * value[1]  # the full width of a symmetric wedge
    elif key == "gpu":
        assert value == "cpu"
        value = -1
    elif isinstance(value, tuple):
        value = list(value)
    entry = {key: value}
    if "." in key:
        outer, inner = key.split(".")
        entry = {outer: {inner: value}}
    return yaml.safe_dump({"fit_model": {"tomo0_files": ["e.mrc"], "tomo1_files": ["o.mrc"], **entry}})


def flat_yaml(setting: Setting, value) -> str:
    import yaml

    return yaml.safe_dump({"even": "e.mrc", "odd": "o.mrc",
                           setting.name: list(value) if isinstance(value, tuple) else value})


def declaration_problems(config_cls, settings) -> list[str]:
    """What is declared twice, or not at all (no front ends needed)."""
    problems = []
    fields = {f.name for f in dataclasses.fields(config_cls)}
    covered = [name for s in settings for name in s.config_fields]
    problems += [f"FitConfig.{name} has no row in SETTINGS" for name in sorted(fields - set(covered))]
    problems += [f"row '{name}' names no FitConfig field" for name in sorted(set(covered) - fields)]
    problems += [f"FitConfig.{name} has more than one row" for name in sorted(set(covered))
                 if covered.count(name) > 1]
    for s in settings:
        for what, value in (("flag", s.cli), ("dock row", s.dock)):
            if isinstance(value, str) and not value.strip():
                problems.append(f"row '{s.name}' has no {what} and no reason why")
        if s.flag is None and s.ddw is not None and not s.yaml:
            problems.append(f"row '{s.name}' has an original-layout key but no key of ours")
    for name, values in PRESETS.items():
        problems += [f"preset {name}: {key} is not a setting" for key in values if key not in fields]
    return problems


def test_every_fit_setting_is_declared_once_and_reaches_its_front_ends(tmp_path, make_napari_viewer):
    assert declaration_problems(FitConfig, SETTINGS) == []
    fit_parser_flags = {flag for opt in cli.options.options_of("fit").values() for flag in opt.flags}
    from napari_deepdewedge.widgets._fit import set_field

    viewer = make_napari_viewer()
    dock = add_dock(viewer, "Fit")
    problems = []
    for setting in SETTINGS:
        if setting.flag is None and not setting.yaml and not setting.ddw and setting.row is None:
            continue  # an engine-only setting: its row says why
        value = sample(setting)
        expected = field_values(setting, value)

        def check(route, cfg):
            got = {k: getattr(cfg, k) for k in expected}
            if got != expected:
                problems.append(f"{setting.name} through {route}: {got} != {expected}")

        if setting.flag is not None:
            if not set(setting.flag.flags) <= fit_parser_flags:
                problems.append(f"{setting.name}: 'fit' has no {setting.flag.flags}")
            elif setting.name != "out_dir":  # the commands derive the folder (--out DIR/model)
                check("its flag", through_the_cli(setting, value, tmp_path))
        if setting.yaml:
            check("our YAML key", through_a_config(flat_yaml(setting, value), tmp_path))
        if setting.ddw:
            check(f"the original layout's {setting.ddw}", through_a_config(ddw_yaml(setting, value), tmp_path))
        if setting.row is not None:
            if setting.name not in dock.fields:
                problems.append(f"{setting.name}: the Fit dock has no field")
                continue
            before = dock.config()
            if setting.name == "tilt_range":
                dock.tilt_min.setValue(value[0])
                dock.tilt_max.setValue(value[1])
            elif setting.name == "out_dir":
                dock.out_dir.setText(str(tmp_path / "out"))
                expected = {"out_dir": str(tmp_path / "out")}
            else:
                set_field(dock.fields[setting.name], value)
            check("the Fit dock", dock.config())
            for name in setting.config_fields:  # back, so that the next row's value is valid
                widget = dock.fields.get(name) or {"tilt_min": dock.tilt_min, "tilt_max": dock.tilt_max}[name]
                old = getattr(before, name)
                if name == "out_dir":
                    widget.setText(old or "")
                else:
                    set_field(widget, old)
    assert problems == [], problems


def test_the_declaration_check_finds_a_field_without_its_row_and_a_row_without_a_reason():
    @dataclasses.dataclass
    class WithNewField(FitConfig):
        a_new_setting: bool = False

    bare = Setting("seed", int, "random seed", Flag(("--seed",)), "", resume=FIXED("the split"))
    problems = declaration_problems(WithNewField, [s for s in SETTINGS if s.name != "seed"] + [bare])
    assert "FitConfig.a_new_setting has no row in SETTINGS" in problems
    assert "row 'seed' has no dock row and no reason why" in problems
    assert declaration_problems(FitConfig, SETTINGS + SETTINGS[:1]) == \
        ["FitConfig.subtomo_size has more than one row"]


def test_a_row_must_say_what_a_resume_may_do_and_the_tables_follow_the_rows():
    with pytest.raises(TypeError, match="resume"):
        Setting("seed", int, "random seed", Flag(("--seed",)), "a reason")
    from napari_deepdewedge.core.fit.resume import RESUME_CHANGEABLE, RESUME_FIXED

    for s in SETTINGS:
        table = RESUME_FIXED if s.resume.fixed else RESUME_CHANGEABLE
        for name in s.config_fields:  # tilt_range's row decides tilt_min and tilt_max
            assert table[name] == s.resume.why, name
    assert {"tilt_min", "tilt_max"} <= set(RESUME_FIXED) and "tilt_range" not in RESUME_FIXED


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_preset_sets_what_its_rows_declare(preset):
    cfg = FitConfig.from_preset(preset)
    for s in SETTINGS:
        if preset in s.presets:
            assert getattr(cfg, s.name) == s.presets[preset], s.name
