"""Write the CTF fixtures in tests/data/ctf (run: python tests/data/make_ctf_fixtures.py).

The same tiny tilt series as make_fixtures.py (TS_01: 21 views of 6×8 pixels, -60…+60° in 6°
steps, 2.675 Å/pixel; stack order = sorted angles), with a made-up defocus of 3.9 µm + 10 nm
per view (view i, 1-based: 3.9 + 0.01·(i − 1) µm) and 0.1 µm astigmatism at 35°. Layouts follow
each program's documentation (README.md); the numbers are ours.

- ``TS_01_ctffind4.txt``: CTFFIND 4.1 diagnostic output: ``#`` header lines (version, input,
  pixel size / voltage / Cs / amplitude contrast, box and search ranges, the column legend), then
  one line per micrograph (view) of 7 ``%f`` numbers: number, defocus 1 and 2 (Å), azimuth of
  astigmatism (°), additional phase shift (rad), cross correlation, fit resolution (Å).
- ``TS_01.defocus``: IMOD ctfplotter, version 2: ``start end angle1 angle2 defocus(nm)`` per
  view, the first line ending with the version number 2.
- ``TS_01_v3.defocus``: version 3 with astigmatism: first line ``flags 0 0. 0. 0 3`` (flags 1 =
  astigmatism), then ``start end angle1 angle2 defocus1 defocus2 astig_angle`` (nm, degrees).
- ``warp/TS_01.xml``: a Warp tilt-series XML with its ``<CTF>`` params (µm, kV, mm) and the
  per-tilt ``<GridCTF>``/``<GridCTFDefocusDelta>``/``<GridCTFDefocusAngle>`` nodes (Z = view).
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


def imod_v2() -> str:
    lines = []
    for v, a in enumerate(ANGLES, 1):
        line = f"{v}\t{v}\t{a:.2f}\t{a:.2f}\t{defocus_um(v) * 1e3:.1f}"
        lines.append(line + ("\t2" if v == 1 else ""))
    return "\n".join(lines) + "\n"


def imod_v3() -> str:
    lines = ["1\t0\t0.0\t0.0\t0.0\t3"]
    for v, a in enumerate(ANGLES, 1):
        d = defocus_um(v) * 1e3
        lines.append(f"{v}\t{v}\t{a:.2f}\t{a:.2f}\t{d + 50:.1f}\t{d - 50:.1f}\t{35.00:.2f}")
    return "\n".join(lines) + "\n"


def warp_xml() -> str:
    join = "\n".join
    use = ["False"] + ["True"] * 19 + ["False"]
    params = [("PixelSize", "2.675"), ("PixelSizeDeltaPercent", "0"), ("PixelSizeAngle", "0"),
              ("Cs", "2.7"), ("Voltage", "300"), ("Amplitude", "0.07"), ("Bfactor", "0"),
              ("Scale", "1"), ("Defocus", "3.9"), ("DefocusDelta", "0.1"),
              ("DefocusAngle", "35"), ("PhaseShift", "0"), ("Cc", "2.7"),
              ("IllumAngle", "30"), ("EnergySpread", "0.7"), ("Thickness", "0")]

    def grid(tag, value):
        nodes = join(f'\t\t<Node X="0" Y="0" Z="{z}" W="{value(z + 1):g}" />' for z in range(21))
        return f'\t<{tag} Width="1" Height="1" Depth="21" Duration="1">\n{nodes}\n\t</{tag}>\n'

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<TiltSeries DataDirectory="" AreAnglesInverted="False" PlaneNormal="0, 0, 1" '
        'Bfactor="0" Weight="1" MagnificationCorrection="1, 0, 0, 1" UnselectFilter="False" '
        'UnselectManual="null" CTFResolutionEstimate="6.2">\n'
        f"\t<Angles>{join(f'{a:g}' for a in ANGLES)}</Angles>\n"
        f"\t<UseTilt>{join(use)}</UseTilt>\n"
        f"\t<AxisAngle>{join('85.3' for _ in ANGLES)}</AxisAngle>\n"
        "\t<CTF>\n" + join(f'\t\t<Param Name="{n}" Value="{v}" />' for n, v in params)
        + "\n\t</CTF>\n"
        + grid("GridCTF", defocus_um) + grid("GridCTFDefocusDelta", lambda v: 0.1)
        + grid("GridCTFDefocusAngle", lambda v: 35.0) + "</TiltSeries>\n"
    )


def main() -> None:
    files = {"TS_01_ctffind4.txt": ctffind_txt(), "TS_01.defocus": imod_v2(),
             "TS_01_v3.defocus": imod_v3(), "warp/TS_01.xml": warp_xml()}
    for name, text in files.items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    main()
