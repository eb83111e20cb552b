"""The docks do not import each other (issue 7): what they share lives in _panel, _common,
_halves, _names, _workers, _state; only the combined dock and the package put them together.
No Qt needed: the imports are read from the source."""
from __future__ import annotations

import ast
from pathlib import Path

WIDGETS = Path(__file__).resolve().parents[1] / "src" / "napari_deepdewedge" / "widgets"
DOCKS = {"_tiltseries", "_inspector", "_fit", "_refine", "_batch_refine", "_compare"}
ASSEMBLERS = {"__init__", "_combined"}


def imported_widget_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level == 1:  # from ._fit import …  /  from . import _fit
                names.add(module.split(".")[0] if module else "")
                if not module:
                    names.update(alias.name for alias in node.names)
            elif module.startswith("napari_deepdewedge.widgets."):
                names.add(module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("napari_deepdewedge.widgets."):
                    names.add(alias.name.split(".")[2])
    return names


def test_docks_do_not_import_each_other():
    modules = sorted(WIDGETS.glob("*.py"))
    assert {p.stem for p in modules} >= DOCKS | ASSEMBLERS
    bad = [f"{path.name} imports {name}" for path in modules if path.stem not in ASSEMBLERS
           for name in imported_widget_modules(path) if name in DOCKS and name != path.stem]
    assert not bad, bad
    # and the check sees a dock import where there is one
    assert "_fit" in imported_widget_modules(WIDGETS / "_combined.py")
