"""The simulator's CTF: tilt series of a phantom as a microscope records them, and the defocus files
the field's CTF programs would write for them.

Image formation (the weak-phase convention of :mod:`core.ctf`; dense material comes out dark):
every projection is the sum over thin layers of the specimen (along the tomogram's Z), each
layer's projection multiplied in Fourier space by the CTF at the defocus that layer has at each
detector column. With the tilt axis Y, the projector's x' = x·cosθ + z·sinθ and the tomogram's +Z
pointing away from the source (the convention of :mod:`core.ctf`), a point at (z, x') is at
height x'·tanθ − z/cosθ above the mid-plane's centre, so its defocus is

    Δf_t + p·(x'·tanθ − z / cosθ)

(Δf_t the view's defocus: a mean with a seeded spread per view). The CTF is applied column by
column (each detector column its own defocus: no strips), on projections that extend past the
box in X (the specimen continues, as in ``simulate_tilt_series``) and are mirrored in Y, then
cropped; noise is added after (per-projection SNR as ``simulate_tilt_series``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..ctf import ViewCTF, _torch_ctf_2d, wavelength_angstrom
from ..errors import DDWError


@dataclass
class CTFSample:
    """A simulated tilt series with the CTF: images ``(n, Y, X)`` (dense dark), angles, the
    phantom (positive = dense), pixel size (Å) and each view's true CTF (``ctf``)."""

    tilt_series: np.ndarray
    angles: np.ndarray
    ground_truth: np.ndarray
    pixel_size: float
    ctf: ViewCTF


def view_defoci(n: int, mean_um: float, spread_um: float, seed: int = 0) -> np.ndarray:
    """Per-view defocus (µm): ``mean ± spread`` (normal, seeded), kept within ±3 spreads."""
    rng = np.random.default_rng(int(seed))
    return mean_um + spread_um * np.clip(rng.standard_normal(int(n)), -3, 3)


def simulate_ctf_tilt_series(volume, angles, pixel_size: float, *, defocus_um: float = 5.0,
                             spread_um: float = 0.3, snr: float | None = 0.5, seed: int = 0,
                             voltage: float = 300.0, cs: float = 2.7,
                             amplitude_contrast: float = 0.07, layer_voxels: int = 8,
                             device=None) -> CTFSample:
    """Projections of ``volume`` with the CTF of a tilted specimen (see the module's text)."""
    import torch

    from ..device import pick_device
    from .phantom import simulate_tilt_series

    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise DDWError(f"simulate_ctf_tilt_series needs a (Z, Y, X) volume, got {vol.shape}")
    ang = np.asarray(angles, dtype=np.float64).ravel()
    n_z, n_y, n_x = vol.shape
    dev = pick_device(device)
    defoci = view_defoci(ang.size, defocus_um, spread_um, seed)
    ctf = ViewCTF(defoci, defoci.copy(), np.zeros(ang.size), np.zeros(ang.size),
                  voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast,
                  kind="simulated")
    lam = wavelength_angstrom(voltage)
    # margin in X (real specimen beyond the box) and mirror in Y: the CTF's point spread
    spread_px = lam * (defoci.max() + 1.0) * 1e4 / (2 * pixel_size**2)
    margin = int(math.ceil(spread_px)) + 8
    ice = np.median(vol.reshape(n_z, -1), axis=1).astype(np.float32)[:, None, None]
    side = np.broadcast_to(ice, (n_z, n_y, margin))
    wide = np.concatenate([side, vol, side], axis=2)
    width = n_x + 2 * margin
    pad_y = int(min(n_y - 1, margin))
    images = torch.zeros((ang.size, n_y, n_x), dtype=torch.float64)
    u = torch.arange(width, dtype=torch.float64) - width // 2  # detector column, centred
    for z0 in range(0, n_z, int(layer_voxels)):
        z1 = min(n_z, z0 + int(layer_voxels))
        if not np.any(wide[z0:z1]):
            continue
        layer = np.zeros_like(wide)
        layer[z0:z1] = wide[z0:z1]
        proj = simulate_tilt_series(layer, ang, snr=None, device=dev)  # (n, Y, width)
        z_mid = (z0 + z1 - 1) / 2 - n_z // 2
        for t, theta in enumerate(np.radians(ang)):
            p = torch.as_tensor(proj[t], dtype=torch.float64)
            padded = torch.nn.functional.pad(p[None, None], (0, 0, pad_y, pad_y),
                                             mode="reflect")[0, 0]
            spec = torch.fft.rfft2(padded)
            shift = pixel_size * (u * math.tan(theta) - z_mid / math.cos(theta)) / 1e4
            columns = torch.arange(margin, margin + n_x)
            d = defoci[t] + shift[columns].numpy()
            for c0 in range(0, n_x, 32):
                c1 = min(n_x, c0 + 32)
                ours = -_torch_ctf_2d(d[c0:c1], d[c0:c1], np.zeros(c1 - c0), np.zeros(c1 - c0),
                                      ctf, pixel_size, tuple(padded.shape), "cpu").double()
                out = torch.fft.irfft2(spec[None] * ours, s=tuple(padded.shape))
                j = torch.arange(c1 - c0)
                images[t, :, c0:c1] += out[j, pad_y:pad_y + n_y, margin + c0 + j].T
    result = images.float().numpy()
    if snr is not None:
        rng = np.random.default_rng(int(seed) + 1)
        var = result.reshape(ang.size, -1).astype(np.float64).var(axis=1)
        for i in range(ang.size):
            result[i] += np.float32(math.sqrt(var[i] / float(snr))) * \
                rng.standard_normal(result.shape[1:], dtype=np.float32)
    return CTFSample(result, ang, vol, float(pixel_size), ctf)


def make_ctf_sample(shape=(48, 128, 128), tilt_range=(-60, 60, 2), *, pixel_size: float = 5.0,
                    defocus_um: float = 5.0, spread_um: float = 0.3, snr: float | None = 0.5,
                    seed: int = 0, device=None, **kw) -> CTFSample:
    """A phantom (``make_phantom``) and its tilt series with the CTF."""
    from ..io.angles import angles_from_range
    from .phantom import make_phantom

    angles = angles_from_range(*(float(v) for v in tilt_range))
    truth = make_phantom(shape, seed, pixel_size=pixel_size)
    return simulate_ctf_tilt_series(truth, angles, pixel_size, defocus_um=defocus_um,
                                    spread_um=spread_um, snr=snr, seed=seed, device=device,
                                    **kw)


# ------------------------------------------------------------------------ the programs' files


def write_ctffind_txt(path, ctf: ViewCTF, pixel_size: float, stack_name: str = "TS.mrc") -> Path:
    """The CTFFIND 4.1 diagnostic ``.txt`` for these views (defocus in Å, phase in radians)."""
    lines = [
        "# Output from CTFFind version 4.1.14, run on 2026-12-05 08:00:00",
        f"# Input file: {stack_name} ; Number of micrographs: {ctf.count}",
        f"# Pixel size: {pixel_size:.3f} Angstroms ; acceleration voltage: {ctf.voltage:.1f} keV ; "
        f"spherical aberration: {ctf.cs:.2f} mm ; amplitude contrast: {ctf.amplitude_contrast:.2f}",
        "# Box size: 512 pixels ; min. res.: 30.0 Angstroms ; max. res.: 5.0 Angstroms ; min. "
        "def.: 5000.0 um; max. def. 50000.0 um",
        "# Columns: #1 - micrograph number; #2 - defocus 1 [Angstroms]; #3 - defocus 2; #4 - "
        "azimuth of astigmatism; #5 - additional phase shift [radians]; #6 - cross correlation; "
        "#7 - spacing (in Angstroms) up to which CTF rings were fit successfully",
    ]
    for i in range(ctf.count):
        lines.append(f"{i + 1:.6f} {ctf.defocus_u[i] * 1e4:.6f} {ctf.defocus_v[i] * 1e4:.6f} "
                     f"{ctf.astigmatism_angle[i]:.6f} {math.radians(ctf.phase_shift[i]):.6f} "
                     f"{0.05:.6f} {2.5 * pixel_size:.6f}")
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def write_imod_defocus(path, ctf: ViewCTF, angles, version: int = 3) -> Path:
    """IMOD ctfplotter's ``.defocus`` (nm, views from 1), printed as ctfplotter's
    ``writeDefocusOrTempFile`` prints it. Version 2: ``"%d\\t%d\\t%5.2f\\t%5.2f\\t%6.0f"`` per
    view (whole nm), the first line ending ``"   2"``. Version 3 with astigmatism (flags 1): the
    line ``"%d\\t0\\t0.0\\t0.0\\t0.0\\t%d"`` (flags, version 3), then
    ``"%d\\t%d\\t%5.2f\\t%5.2f\\t%7.1f\\t%7.1f\\t%7.2f"`` (defocus 1 and 2 in nm, the
    astigmatism angle in degrees)."""
    angles = np.asarray(angles, dtype=float)
    lines = ["1\t0\t0.0\t0.0\t0.0\t3"] if version == 3 else []
    for i in range(ctf.count):
        a = angles[i]
        if version == 3:
            lines.append(f"{i + 1}\t{i + 1}\t{a:5.2f}\t{a:5.2f}\t{ctf.defocus_u[i] * 1e3:7.1f}\t"
                         f"{ctf.defocus_v[i] * 1e3:7.1f}\t{ctf.astigmatism_angle[i]:7.2f}")
        else:
            lines.append(f"{i + 1}\t{i + 1}\t{a:5.2f}\t{a:5.2f}\t{ctf.defocus[i] * 1e3:6.0f}"
                         + ("   2" if i == 0 else ""))
    path = Path(path)
    path.write_text("\n".join(lines) + "\n")
    return path


def _cs_text(value) -> str:
    """A C# ``float.ToString(InvariantCulture)``: the shortest text that reads back the float32."""
    return np.format_float_positional(np.float32(value), trim="-")


def warp_xml_text(angles, *, pixel_size: float, use=None, dose=None, axis: float = 85.3,
                  ctf: ViewCTF | None = None, stem: str = "TS") -> str:
    """A Warp tilt-series XML laid out as Warp's ``TiltSeries.SaveMeta`` writes it: the
    ``<TiltSeries …>`` attributes, the newline-joined per-tilt ``Angles``, ``Dose``, ``UseTilt``,
    ``AxisAngle``, ``AxisOffsetX/Y``, ``MoviePath``, ``FOVFraction``, the ``<CTF>`` node (one
    ``<Param Name= Value= />`` per serialized CTF property: decimals as C# prints them, so
    ``1.0``, ``300.0``, ``0.07``), then the grids (``CubicGrid.Save``: ``Width Height Depth
    MarginX MarginY MarginZ`` and one ``<Node X= Y= Z= Value= />`` per point). ``ctf``: the
    per-tilt fit (``GridCTF`` = mean defocus µm, ``GridCTFDefocusDelta`` = U − V,
    ``GridCTFDefocusAngle`` °, ``GridCTFPhase`` in units of π, Depth = the tilts); ``None``:
    an XML before any CTF fit (Warp's defaults: Defocus 1.0, 1×1×1 grids of 0). ``stem``: the
    movies' names."""
    join = "\n".join
    angles = np.asarray(angles, dtype=float)
    n = angles.size
    use = [True] * n if use is None else list(use)
    dose = np.zeros(n) if dose is None else np.asarray(dose, dtype=float)

    def grid(tag, values):
        values = [0.0] if values is None else list(values)
        nodes = join(f'\t\t<Node X="0" Y="0" Z="{z}" Value="{_cs_text(v)}" />'
                     for z, v in enumerate(values))
        return (f'\t<{tag} Width="1" Height="1" Depth="{len(values)}" MarginX="0" MarginY="0" '
                f'MarginZ="0">\n{nodes}\n\t</{tag}>\n')

    fit = ctf is not None
    mean = float(np.mean(ctf.defocus)) if fit else None
    params = [("PixelSize", f"{pixel_size:g}"), ("PixelSizeDeltaPercent", "0"),
              ("PixelSizeAngle", "0"), ("Distortion", "1, 0, 0, 1"),
              ("Cs", f"{ctf.cs:g}" if fit else "2.7"), ("Cc", "2.7"),
              ("Voltage", f"{ctf.voltage:g}" if fit else "300.0"),
              ("Defocus", f"{mean:.4f}" if fit else "1.0"), ("DefocusDelta", "0"),
              ("DefocusAngle", "0"),
              ("Amplitude", f"{ctf.amplitude_contrast:g}" if fit else "0.07"),
              ("Bfactor", "0"), ("BfactorDelta", "0"), ("BfactorAngle", "0"), ("Scale", "1.0"),
              ("PhaseShift", "0"), ("BeamTilt", "0,0"), ("BeamTilt2", "1,0,1"),
              ("ZernikeCoeffsOdd", ""), ("ZernikeCoeffsEven", ""), ("Thickness", "0")]
    image = f"{8 * pixel_size:g}, {6 * pixel_size:g}"
    return ('<?xml version="1.0" encoding="utf-8"?>\n'
            '<TiltSeries DataDirectory="" AreAnglesInverted="False" PlaneNormal="0, 0, 1" '
            'LevelAngleX="0" LevelAngleY="0" Bfactor="0" Weight="1" '
            f'MagnificationCorrection="1, 0, 0, 1" ImageDimensionsAngstrom="{image}" '
            'VolumeDimensionsAngstrom="0, 0, 0" UnselectFilter="False" UnselectManual="" '
            f'CTFResolutionEstimate="{"6.2" if fit else "0"}">\n'
            f"\t<Angles>{join(_cs_text(a) for a in angles)}</Angles>\n"
            f"\t<Dose>{join(_cs_text(d) for d in dose)}</Dose>\n"
            f"\t<UseTilt>{join('True' if u else 'False' for u in use)}</UseTilt>\n"
            f"\t<AxisAngle>{join(_cs_text(axis) for _ in range(n))}</AxisAngle>\n"
            f"\t<AxisOffsetX>{join('0' for _ in range(n))}</AxisOffsetX>\n"
            f"\t<AxisOffsetY>{join('0' for _ in range(n))}</AxisOffsetY>\n"
            f"\t<MoviePath>{join(f'../frames/{stem}_{i:03d}_{a:.1f}.tif' for i, a in enumerate(angles))}"
            "</MoviePath>\n"
            f"\t<FOVFraction>{join('1' for _ in range(n))}</FOVFraction>\n"
            "\t<CTF>\n" + join(f'\t\t<Param Name="{k}" Value="{v}" />' for k, v in params)
            + "\n\t</CTF>\n"
            + grid("GridCTF", ctf.defocus if fit else None)
            + grid("GridCTFDefocusDelta", ctf.defocus_u - ctf.defocus_v if fit else None)
            + grid("GridCTFDefocusAngle", ctf.astigmatism_angle if fit else None)
            + grid("GridCTFPhase", np.asarray(ctf.phase_shift) / 180.0 if fit else None)
            + grid("GridMovementX", None) + grid("GridMovementY", None)
            + "</TiltSeries>\n")


def write_warp_xml(path, ctf: ViewCTF, angles, pixel_size: float) -> Path:
    """A Warp tilt-series XML with this per-tilt CTF fit (:func:`warp_xml_text`)."""
    path = Path(path)
    path.write_text(warp_xml_text(angles, pixel_size=pixel_size, ctf=ctf))
    return path


def write_relion_star(folder, stem: str, ctf: ViewCTF, angles, pixel_size: float) -> Path:
    """RELION 5: ``tomograms.star`` (the optics, the series' star path relative to ``folder``)
    and ``tilt_series/<stem>.star`` (``rlnDefocusU/V`` Å, ``rlnDefocusAngle``, tilt angles)."""
    folder = Path(folder)
    (folder / "tilt_series").mkdir(parents=True, exist_ok=True)
    columns = ["rlnTomoName", "rlnTomoTiltSeriesStarFile", "rlnVoltage",
               "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnTomoTiltSeriesPixelSize"]
    lines = ["", "# version 50001", "", "data_global", "", "loop_"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    lines.append(f"{stem} tilt_series/{stem}.star {ctf.voltage:.6f} {ctf.cs:.6f} "
                 f"{ctf.amplitude_contrast:.6f} {pixel_size:.6f}")
    (folder / "tomograms.star").write_text("\n".join(lines) + "\n\n")
    columns = ["rlnTomoNominalStageTiltAngle", "rlnTomoYTilt", "rlnDefocusU", "rlnDefocusV",
               "rlnDefocusAngle"]
    lines = ["", "# version 50001", "", f"data_{stem}", "", "loop_"]
    lines += [f"_{c} #{i + 1}" for i, c in enumerate(columns)]
    for i, a in enumerate(np.asarray(angles, dtype=float)):
        lines.append(f"{a:.6f} {a:.6f} {ctf.defocus_u[i] * 1e4:.6f} {ctf.defocus_v[i] * 1e4:.6f} "
                     f"{ctf.astigmatism_angle[i]:.6f}")
    (folder / "tilt_series" / f"{stem}.star").write_text("\n".join(lines) + "\n\n")
    return folder / "tomograms.star"
