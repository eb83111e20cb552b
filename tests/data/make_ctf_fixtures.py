"""Write the CTF fixtures in tests/data/ctf (run: python tests/data/make_ctf_fixtures.py).

The same tiny tilt series as make_fixtures.py (TS_01: 21 views of 6×8 pixels, -60…+60° in 6°
steps, 2.675 Å/pixel; stack order = sorted angles), with a made-up defocus of 3.9 µm + 10 nm
per view (view i, 1-based: 3.9 + 0.01·(i − 1) µm) and 0.1 µm astigmatism at 35°. Layouts follow
each program's documentation (README.md); the numbers are ours.

- ``TS_01_ctffind4.txt``: CTFFIND 4.1 diagnostic output: ``#`` header lines (version, input,
  pixel size / voltage / Cs / amplitude contrast, box and search ranges, the column legend), then
  one line per micrograph (view) of 7 ``%f`` numbers: number, defocus 1 and 2 (Å), azimuth of
  astigmatism (°), additional phase shift (rad), cross correlation, fit resolution (Å).
- ``TS_01_ctffind5.txt``: CTFFIND 5.0.2's: the same header (its box line says ``min. def.: 0.0
  um``) with the column legend going on to ``#8 - Estimated tilt axis angle; #9 - Estimated tilt
  angle ; #10 Estimated sample thickness (in Angstroms)``, and 10 ``%f`` numbers per line.
- ``TS_01.defocus``: IMOD ctfplotter, version 2, as its ``writeDefocusFile`` prints it:
  ``"%d\t%d\t%5.2f\t%5.2f\t%6.0f"`` (start and end view from 1, the two tilt angles, defocus in
  whole nm) per view, the first line ending with ``"   2"`` (the version).
- ``TS_01_v3.defocus``: version 3 with astigmatism as ctfplotter's ``writeDefocusOrTempFile``
  prints it: ``"%d\t0\t0.0\t0.0\t0.0\t%d"`` (flags 1 = astigmatism, version 3), then
  ``"%d\t%d\t%5.2f\t%5.2f\t%7.1f\t%7.1f\t%7.2f"`` (views, angles, defocus 1 and 2 in nm, the
  astigmatism angle in degrees).
- ``TS_01_v3_phase.defocus``: the same with a phase plate (flags 5): the phase shift in degrees
  (``%9.2f``, ctfplotter's ``platePhase / RADIANS_PER_DEGREE``) after the astigmatism angle.
- ``warp/TS_01.xml``: a Warp tilt-series XML as Warp's ``TiltSeries.SaveMeta`` writes it
  (``core.evaluate.ctf_phantom.warp_xml_text``): the ``<CTF>`` params (µm, kV, mm) and the
  per-tilt ``GridCTF``/``GridCTFDefocusDelta``/``GridCTFDefocusAngle``/``GridCTFPhase`` grids of
  ``CubicGrid.Save`` (``Width Height Depth MarginX MarginY MarginZ``, nodes
  ``<Node X= Y= Z= Value= />``, Z = view).
- ``warp/TS_01_nofit.xml``: the same series before Warp's CTF estimation: the default ``<CTF>``
  (Defocus 1.0) and 1×1×1 grids of 0 — no per-tilt defocus.
"""
from pathlib import Path

HERE = Path(__file__).parent / "ctf"
ANGLES = [-60.0 + 6.0 * i for i in range(21)]


def defocus_um(view: int) -> float:  # view 1-based
    return 3.9 + 0.01 * (view - 1)


def ctffind_txt() -> str:
    lines = [
        "# Output from CTFFind version 4.1.14, run on 2024-03-04 11:02:17",
        "# Input file: /data/TS_01/TS_01.mrc ; Number of micrographs: 21",
        "# Pixel size: 2.675 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: "
        "2.70 mm ; amplitude contrast: 0.07",
        "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; min. "
        "def.: 5000.0 um; max. def. 50000.0 um",
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - "
        "azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
        "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully",
    ]
    for v in range(1, 22):
        d = defocus_um(v) * 1e4
        lines.append(f"{v:.6f} {d + 500:.6f} {d - 500:.6f} {35.0:.6f} {0.0:.6f} "
                     f"{0.031 + 0.001 * v:.6f} {8.1 + 0.1 * v:.6f}")
    return "\n".join(lines) + "\n"


def ctffind5_txt() -> str:
    lines = [
        "# Output from CTFFind version 5.0.2, run on 2025-02-13 21:14:21",
        "# Input file: /data/TS_01/TS_01.mrc ; Number of micrographs: 21",
        "# Pixel size: 2.675 Angstroms ; acceleration voltage: 300.0 keV ; spherical aberration: "
        "2.70 mm ; amplitude contrast: 0.07",
        "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; min. "
        "def.: 0.0 um; max. def. 50000.0 um",
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - "
        "azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
        "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully; #8 - Estimated "
        "tilt axis angle; #9 - Estimated tilt angle ; #10 Estimated sample thickness (in "
        "Angstroms)",
    ]
    for v, a in enumerate(ANGLES, 1):
        d = defocus_um(v) * 1e4
        lines.append(f"{v:.6f} {d + 500:.6f} {d - 500:.6f} {35.0:.6f} {0.0:.6f} "
                     f"{0.031 + 0.001 * v:.6f} {8.1 + 0.1 * v:.6f} {85.3:.6f} {abs(a):.6f} "
                     f"{1500.0:.6f}")
    return "\n".join(lines) + "\n"


def imod_v2() -> str:
    lines = []
    for v, a in enumerate(ANGLES, 1):
        line = f"{v}\t{v}\t{a:5.2f}\t{a:5.2f}\t{defocus_um(v) * 1e3:6.0f}"
        lines.append(line + ("   2" if v == 1 else ""))
    return "\n".join(lines) + "\n"


def imod_v3(phase_deg: float | None = None) -> str:
    """ctfplotter's version 3 (writeDefocusOrTempFile): flags 1 (astigmatism), + 4 with a phase
    plate (the phase in degrees, after the astigmatism angle)."""
    flags = 1 + (4 if phase_deg is not None else 0)
    lines = [f"{flags}\t0\t0.0\t0.0\t0.0\t3"]
    for v, a in enumerate(ANGLES, 1):
        d = defocus_um(v) * 1e3
        line = f"{v}\t{v}\t{a:5.2f}\t{a:5.2f}\t{d + 50:7.1f}\t{d - 50:7.1f}\t{35.00:7.2f}"
        if phase_deg is not None:
            line += f"\t{phase_deg:9.2f}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def warp_xml(fit: bool = True) -> str:
    import numpy as np

    from napari_deepdewedge.core.ctf import ViewCTF
    from napari_deepdewedge.core.evaluate.ctf_phantom import warp_xml_text

    d = np.array([defocus_um(v) for v in range(1, 22)])
    ctf = ViewCTF(d + 0.05, d - 0.05, np.full(21, 35.0), np.zeros(21)) if fit else None
    use = [False] + [True] * 19 + [False]
    return warp_xml_text(ANGLES, pixel_size=2.675, use=use, axis=85.3, ctf=ctf, stem="TS_01")


def main() -> None:
    files = {"TS_01_ctffind4.txt": ctffind_txt(), "TS_01_ctffind5.txt": ctffind5_txt(),
             "TS_01.defocus": imod_v2(), "TS_01_v3.defocus": imod_v3(),
             "TS_01_v3_phase.defocus": imod_v3(phase_deg=90.0),
             "warp/TS_01.xml": warp_xml(), "warp/TS_01_nofit.xml": warp_xml(fit=False)}
    for name, text in files.items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    main()
