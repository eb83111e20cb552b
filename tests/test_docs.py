"""The repository's documents hold together (issue 17).

- The README is the front door: its first code block is the two set-up commands that
  ``scripts/dev.sh`` implements and ``.ci/run`` runs, and it stays short.
- No tracked file points outside the repository (the method spec lives in docs/method.md).
- Every relative link (and #anchor) in README.md and docs/*.md reaches an existing file/heading.
- Every source file the docs name in backticks (`core/fit/loss.py`, `core.fit.loss`) exists, so
  the docs follow the code when modules move.

The checkers are plain functions, tested first on small known inputs so that each can fail.
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 170  # issue 17 asks for "about 150"
SETUP_COMMANDS = ("bash scripts/dev.sh demo", "bash scripts/dev.sh test")
# written in pieces so that this file does not match itself
OUTSIDE_PATTERNS = ("../" + "shared", "/work/" + "shared", "DESIGN" + ".md", "DESIGN" + " §")


# ------------------------------------------------------------------------------------------
# the checkers
# ------------------------------------------------------------------------------------------
def code_blocks(markdown: str) -> list[str]:
    """Contents of the fenced code blocks (```), in order."""
    return re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.M | re.S)


def commands(block: str) -> list[str]:
    """The shell commands of a code block: comments and blank lines dropped, spaces squeezed."""
    out = []
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(" ".join(line.split()))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, inline markup and punctuation dropped
    (§, dots, backticks, ×, …), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(markdown: str) -> set[str]:
    """Anchors of the headings outside code blocks (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    out = set()
    for line in _strip_code(markdown).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def _strip_code(markdown: str) -> str:
    markdown = re.sub(r"^```.*?^```[^\n]*$", "", markdown, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", markdown)


def links(markdown: str) -> list[str]:
    """Targets of Markdown links and images outside code (``[t](x)``, ``![a](x "title")``)."""
    return [m.group(1) for m in re.finditer(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)",
                                            _strip_code(markdown))]


def broken_links(md_path: Path, root: Path) -> list[str]:
    """Relative links of one Markdown file whose file (or #anchor) does not exist."""
    problems = []
    text = md_path.read_text(encoding="utf-8")
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # http:, https:, mailto:, …
            continue
        path, _, anchor = target.partition("#")
        dest = md_path if not path else (md_path.parent / path).resolve()
        if path and not (dest.exists() and (dest == root or root in dest.parents)):
            problems.append(f"{md_path.relative_to(root)}: link to {target!r}: no such file in the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            problems.append(f"{md_path.relative_to(root)}: link to {target!r}: no heading with that anchor")
    return problems


def tracked_files(root: Path) -> list[Path]:
    """Files git tracks (a fresh clone); without git, every file outside hidden folders."""
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout
        names = [n for n in out.decode("utf-8", "replace").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = [str(p.relative_to(root)) for p in root.rglob("*")
                 if p.is_file() and not any(part.startswith(".") or part == "__pycache__"
                                            for part in p.relative_to(root).parts)]
    return [root / n for n in names if (root / n).is_file()]


def outside_references(files, root: Path) -> list[str]:
    """``path:line: text`` for every line of a text file that names something outside the repo."""
    hits = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary (PNG, …)
        for no, line in enumerate(text.splitlines(), 1):
            if any(p in line for p in OUTSIDE_PATTERNS):
                hits.append(f"{path.relative_to(root)}:{no}: {line.strip()[:120]}")
    return hits


PACKAGE = "src/napari_deepdewedge"
_ROOMS = r"(?:core|pipeline|widgets|cli)"


def missing_code_paths(markdown: str, package: Path) -> list[str]:
    """Source paths named in backticks that do not exist under ``package``: file paths
    (`core/fit/loss.py`, with or without `src/napari_deepdewedge/`) and dotted modules
    (`core.fit.loss`, `core.fit.loss.masked_fourier_loss`, `pipeline.plan_fit`: the longest
    prefix that is a module or package, and the next part a name its source mentions)."""
    missing = []
    for m in re.finditer(r"`(?:src/napari_deepdewedge/)?(" + _ROOMS + r"(?:/[\w]+)+\.py)`", markdown):
        if not (package / m.group(1)).is_file():
            missing.append(m.group(1))
    for m in re.finditer(r"`(" + _ROOMS + r"(?:\.\w+)+)(?:\(|`)", markdown):
        parts = m.group(1).split(".")
        found = 0  # the longest prefix that is a module or package
        for i in range(len(parts), 0, -1):
            base = package.joinpath(*parts[:i])
            source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
            if source.is_file():
                found = i
                break
        # past the module: its next part must be a name the module defines or imports
        if found == 0 or (found < len(parts)
                          and not re.search(rf"\b{parts[found]}\b", source.read_text(encoding="utf-8"))):
            missing.append(m.group(1))
    return missing


# ------------------------------------------------------------------------------------------
# the checkers on known inputs
# ------------------------------------------------------------------------------------------
def test_slug_known_answers():
    assert slug("§2.5 One fitting sample") == "25-one-fitting-sample"
    assert slug("§1 Conventions") == "1-conventions"
    assert slug("`deepdewedge run` on a folder") == "deepdewedge-run-on-a-folder"
    assert slug("Speed vs the original DeepDeWedge") == "speed-vs-the-original-deepdewedge"
    assert slug("How good is it?") == "how-good-is-it"
    assert anchors("# A\n## A\n```\n# not a heading\n```\n") == {"a", "a-1"}


def test_link_checker_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Title\n## §2.5 One fitting sample\n", encoding="utf-8")
    (tmp_path / "docs" / "pic.png").write_bytes(b"\x89PNG")
    (tmp_path / "README.md").write_text(
        "[ok](docs/b.md#25-one-fitting-sample) ![p](docs/pic.png) [web](https://example.org/x)\n"
        "[gone](docs/missing.md) [bad anchor](docs/b.md#nope) [out](../elsewhere.md)\n"
        "`[in code](docs/nothing.md)`\n```\n[in a block](docs/nothing.md)\n```\n",
        encoding="utf-8",
    )
    problems = broken_links(tmp_path / "README.md", tmp_path)
    assert len(problems) == 3, problems
    assert "'docs/missing.md'" in problems[0] and "no such file" in problems[0]
    assert "'docs/b.md#nope'" in problems[1] and "anchor" in problems[1]
    assert "'../elsewhere.md'" in problems[2]


def test_outside_reference_checker_finds_each_pattern(tmp_path):
    files = []
    for i, pattern in enumerate(OUTSIDE_PATTERNS):
        f = tmp_path / f"f{i}.py"
        f.write_text(f"ok\n# see {pattern}2.5\n", encoding="utf-8")
        files.append(f)
    clean = tmp_path / "clean.md"
    clean.write_text("see docs/method.md §2.5\n", encoding="utf-8")
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\xff\xfe\x00")
    hits = outside_references(files + [clean, png], tmp_path)
    assert [h.split(":")[0:2] for h in hits] == [[f"f{i}.py", "2"] for i in range(len(OUTSIDE_PATTERNS))]


def test_code_path_checker_finds_moved_modules(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "core" / "fit").mkdir(parents=True)
    (pkg / "core" / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "core" / "fit" / "__init__.py").write_text("", encoding="utf-8")
    (pkg / "core" / "fit" / "loss.py").write_text("def f(x):\n    pass\n", encoding="utf-8")
    text = ("`core/fit/loss.py` `src/napari_deepdewedge/core/fit/loss.py` `core.fit.loss.f` "
            "`core.fit.loss.f(x)` `core.fit` and gone: `core/loss.py` `core.metrics.cc` "
            "`pipeline/halves.py` `core/fit` (a folder: not checked) `core.fit.loss.g`")
    assert missing_code_paths(text, pkg) == ["core/loss.py", "pipeline/halves.py", "core.metrics.cc",
                                             "core.fit.loss.g"]


def test_commands_of_a_block():
    block = "bash scripts/dev.sh demo   # comment\n\n  bash   scripts/dev.sh test\n"
    assert commands(block) == ["bash scripts/dev.sh demo", "bash scripts/dev.sh test"]


# ------------------------------------------------------------------------------------------
# the repository
# ------------------------------------------------------------------------------------------
def test_readme_starts_with_the_two_setup_commands_that_ci_and_dev_sh_implement():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = code_blocks(readme)
    assert blocks, "README.md has no code block; its first one must be the two set-up commands"
    assert commands(blocks[0]) == list(SETUP_COMMANDS), (
        f"README.md's first code block must be exactly {SETUP_COMMANDS}, got {commands(blocks[0])}")
    dev = (ROOT / "scripts" / "dev.sh").read_text(encoding="utf-8")
    for sub in ("demo", "test"):
        assert re.search(rf"^\s*{sub}\)", dev, flags=re.M), f"scripts/dev.sh has no '{sub})' branch"
    ci = commands((ROOT / ".ci" / "run").read_text(encoding="utf-8"))
    assert "bash scripts/dev.sh test" in ci, f".ci/run must run the README's test command, runs {ci}"


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, (
        f"README.md has {n} lines (at most {README_MAX_LINES}): it is the front door; move details to docs/")


def test_no_tracked_file_refers_outside_the_repository():
    files = tracked_files(ROOT)
    assert any(f.name == "README.md" for f in files)  # the listing works
    hits = outside_references(files, ROOT)
    assert not hits, ("files refer to something outside the repository (cite docs/method.md §x "
                      "instead):\n" + "\n".join(hits))


@pytest.mark.parametrize("md", ["README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
def test_relative_links_reach_existing_files(md):
    assert not broken_links(ROOT / md, ROOT)


@pytest.mark.parametrize("md", ["README.md"] + sorted(
    str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("*.md")))
def test_the_source_files_the_docs_name_exist(md):
    missing = missing_code_paths((ROOT / md).read_text(encoding="utf-8"), ROOT / PACKAGE)
    assert not missing, f"{md} names source files that do not exist (moved?): {missing}"
