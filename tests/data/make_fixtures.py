"""Write the metadata fixtures in this folder (run: python tests/data/make_fixtures.py).

Each file reproduces the layout its tool writes, taken from the format's documentation and
the parsers' docs (see README.md here); the numbers are made up for a tiny 21-view tilt series
of 6×8 (Y×X) projections at -60…+60° in 6° steps. The old-style MRC header is written byte
by byte at test time by ``tests/mrc_fixtures.py`` (not here).
"""
from pathlib import Path

HERE = Path(__file__).parent
ANGLES = [-60.0 + 6.0 * i for i in range(21)]  # -60 … 60
# dose-symmetric acquisition (groups of two, as SerialEM's Hagen scheme): 0, 6, -6, -12, 12, …
DOSE_SYMMETRIC = [0.0]
for k in range(1, 11):
    pair = [6.0 * k, -6.0 * k] if k % 2 == 1 else [-6.0 * k, 6.0 * k]
    DOSE_SYMMETRIC += pair


def serialem_mdoc() -> str:
    lines = ["PixelSpacing = 2.675", "Voltage = 300", "ImageFile = TS_01.mrc",
             "ImageSize = 8 6", "DataMode = 1", "",
             "[T = SerialEM: Digitized on EMBL Krios G4          04-Mar-24  10:12:54    ]", "",
             "[T =     Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 0]", ""]
    for z, angle in enumerate(DOSE_SYMMETRIC):
        lines += [
            f"[ZValue = {z}]",
            f"TiltAngle = {angle + 0.0012:.4f}",
            f"StagePosition = 120.431 -45.118",
            "StageZ = -12.06",
            "Magnification = 42000",
            "Intensity = 0.131204",
            "ExposureDose = 3.05",
            "PixelSpacing = 2.675",
            "SpotSize = 8",
            f"Defocus = {-3.9 - 0.01 * z:.3f}",
            "ImageShift = 0.0123 -0.0456",
            "RotationAngle = 175.3",
            "ExposureTime = 1.2",
            "Binning = 1",
            "MagIndex = 31",
            "CountsPerElectron = 1",
            "MinMaxMean = -12 310 80.5",
            "TargetDefocus = -4",
            f"SubFramePath = X:\\frames\\TS_01_{z:03d}_{angle:.1f}.tif",
            "NumSubFrames = 10",
            "FrameDosesAndNumber = 0.305 10",
            f"DateTime = 04-Mar-24  10:{13 + z // 4:02d}:{(z * 13) % 60:02d}",
            "FilterSlitAndLoss = 20 0",
            "",
        ]
    return "\n".join(lines)


def aretomo_aln() -> str:
    kept = ANGLES[1:-1]  # views 1 and 21 (±60°) are dark
    lines = ["# AreTomo Alignment / Priims bprmMn ", "# RawSize = 8 6 21", "# NumPatches = 0",
             f"# DarkFrame ={0:>6}{0:>5}{-60.0:>9.2f}",
             f"# DarkFrame ={20:>6}{20:>5}{60.0:>9.2f}",
             f"# AlphaOffset ={0.0:>9.2f}", f"# BetaOffset ={0.0:>9.2f}",
             "# SEC     ROT         GMAG       TX          TY      SMEAN     SFIT    SCALE"
             "     BASE     TILT"]
    for sec, angle in enumerate(kept):
        lines.append(f"{sec:>5}{85.3 + 0.01 * (sec % 3):>11.4f}{1.0:>11.5f}{0.5 * sec:>11.3f}"
                     f"{-0.25 * sec:>11.3f}{1.0:>9.2f}{1.0:>9.2f}{1.0:>9.2f}{0.0:>9.2f}"
                     f"{angle:>10.2f}")
    lines.append("# Local Alignment")
    return "\n".join(lines) + "\n"


def warp_xml() -> str:
    """Laid out as Warp's TiltSeries.SaveMeta writes it (core.evaluate.ctf_phantom.warp_xml_text):
    before any CTF fit, so its <CTF> holds Warp's defaults and its grids are 1×1×1 of 0."""
    from napari_deepdewedge.core.evaluate.ctf_phantom import warp_xml_text

    use = [False] + [True] * 19 + [False]
    dose = [3.05 * DOSE_SYMMETRIC.index(a) for a in ANGLES]
    return warp_xml_text(ANGLES, pixel_size=2.675, use=use, dose=dose, axis=85.3, stem="TS_01")


def warp_tomostar() -> str:
    lines = ["", "data_", "", "loop_", "_wrpMovieName #1", "_wrpAngleTilt #2",
             "_wrpAxisAngle #3", "_wrpDose #4", "_wrpAverageIntensity #5",
             "_wrpMaskedFraction #6"]
    for i, a in enumerate(ANGLES):
        dose = 3.05 * DOSE_SYMMETRIC.index(a)
        lines.append(f"../frames/TS_01_{i:03d}_{a:.1f}.tif  {a:.2f}  85.3  {dose:.2f}  1.21  0")
    return "\n".join(lines) + "\n\n"


def relion_tomograms_star() -> str:
    header = ["", "# version 50001", "", "data_global", "", "loop_"]
    columns = ["rlnTomoName", "rlnTomoTiltSeriesStarFile", "rlnVoltage",
               "rlnSphericalAberration", "rlnAmplitudeContrast",
               "rlnMicrographOriginalPixelSize", "rlnTomoHand", "rlnTomoTiltSeriesPixelSize",
               "rlnTomoTomogramBinning", "rlnTomoSizeX", "rlnTomoSizeY", "rlnTomoSizeZ"]
    header += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    rows = [f"{name} AlignTiltSeries/job007/tilt_series/{name}.star 300.000000 2.700000 "
            "0.100000 2.675000 -1.000000 2.675000 1.000000 8 6 100" for name in ("TS_01", "TS_02")]
    return "\n".join(header + rows) + "\n\n"


def relion_tilt_series_star(name: str, shift: float) -> str:
    """A RELION 5 tilt-series star after CtfFind and AlignTiltSeries: the import and motion
    columns, the CTF columns RELION's CtfFind job writes (rlnCtfPowerSpectrum … rlnCtfImage,
    rlnDefocusU/V in Å, rlnCtfAstigmatism, rlnDefocusAngle in degrees, rlnCtfFigureOfMerit,
    rlnCtfMaxResolution), then the alignment's rlnTomoXTilt … rlnTomoYShiftAngst."""
    header = ["", "# version 50001", "", f"data_{name}", "", "loop_"]
    columns = ["rlnMicrographMovieName", "rlnTomoTiltMovieFrameCount",
               "rlnTomoNominalStageTiltAngle", "rlnTomoNominalTiltAxisAngle",
               "rlnMicrographPreExposure", "rlnTomoNominalDefocus", "rlnCtfPowerSpectrum",
               "rlnMicrographName", "rlnMicrographMetadata", "rlnAccumMotionTotal",
               "rlnAccumMotionEarly", "rlnAccumMotionLate", "rlnCtfImage", "rlnDefocusU",
               "rlnDefocusV", "rlnCtfAstigmatism", "rlnDefocusAngle", "rlnCtfFigureOfMerit",
               "rlnCtfMaxResolution", "rlnTomoXTilt", "rlnTomoYTilt", "rlnTomoZRot",
               "rlnTomoXShiftAngst", "rlnTomoYShiftAngst"]
    header += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    rows = []
    for i, a in enumerate(DOSE_SYMMETRIC):
        mic = f"MotionCorr/job002/frames/{name}_{i:03d}_{a:.1f}"
        rows.append(f"frames/{name}_{i:03d}_{a:.1f}.tif 10 {a:.6f} 85.300000 {3.05 * i:.6f} "
                    f"-4.000000 {mic}_PS.mrc {mic}.mrc {mic}.star 2.304019 1.009749 1.294269 "
                    f"CtfFind/job003/{mic}_PS.ctf:mrc {39000 + 10 * i:.6f} {38800 + 10 * i:.6f} "
                    f"200.000000 -35.476660 0.036367 7.166976 "
                    f"0.000000 {a + shift:.6f} 85.712000 {1.5 * i:.6f} {-0.5 * i:.6f}")
    return "\n".join(header + rows) + "\n\n"


TILT_COM = """# Command file to run Tilt
#
####CreatedVersion#### 4.11.24
#
$tilt -StandardInput
InputProjections TS_01.ali
OutputFile TS_01_full_rec.mrc
IMAGEBINNED 1
TILTFILE TS_01.tlt
THICKNESS 100
RADIAL 0.35 0.035
FalloffIsTrueSigma 1
XAXISTILT 0.0
LOG 0.0
SCALE 0.0 250.0
PERPENDICULAR
MODE 2
FULLIMAGE 8 6
SUBSETSTART 0 0
AdjustOrigin
EXCLUDELIST 1,20-21
ActionIfGPUFails 1,2
$if (-e ./savework) ./savework
"""


def main() -> None:
    files = {
        "serialem/TS_01.mrc.mdoc": serialem_mdoc(),
        "aretomo/TS_01.aln": aretomo_aln(),
        "warp/TS_01.xml": warp_xml(),
        "warp/TS_01.tomostar": warp_tomostar(),
        "relion/AlignTiltSeries/job007/tomograms.star": relion_tomograms_star(),
        "relion/AlignTiltSeries/job007/tilt_series/TS_01.star":
            relion_tilt_series_star("TS_01", 0.35),
        "relion/AlignTiltSeries/job007/tilt_series/TS_02.star":
            relion_tilt_series_star("TS_02", -0.2),
        "imod/TS_01.tlt": "\n".join(f"{a + 0.21:8.2f}" for a in ANGLES) + "\n",
        "imod/TS_01.rawtlt": "\n".join(f"{a:8.2f}" for a in ANGLES) + "\n",
        "imod/tilt.com": TILT_COM,
    }
    for name, text in files.items():
        path = HERE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


if __name__ == "__main__":
    main()
