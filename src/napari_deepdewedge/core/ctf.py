"""The microscope's contrast transfer function (CTF) and strip-wise phase flipping of a tilt series.

Convention (weak-phase approximation; tests pin it down)
--------------------------------------------------------
With λ the relativistic electron wavelength, Δf the defocus (**underfocus positive**), C_s the
spherical aberration, A the amplitude contrast and k the spatial frequency (1/Å)::

    χ(k)   = π λ Δf k² − ½ π C_s λ³ k⁴ (+ a phase plate's extra phase shift)
    CTF(k) = −(√(1 − A²) sin χ + A cos χ)

so CTF(0) = −A: at low frequency an image shows dense material **dark** (what a micrograph
shows), and past each zero of the CTF the contrast flips. ``torch-ctf`` (teamtomo), which computes
the CTF here, returns the opposite overall sign (its CTF(0) = +A); :func:`ctf_1d` and
:func:`ctf_2d` return ours (``tests/test_ctf.py`` checks both against the formula and the first
zero's position).

Phase flipping
--------------
Multiplying an image's spectrum by ``−sign(CTF)`` undoes the contrast reversals past the zeros
and leaves the low frequencies as they were: the flipped images (and their reconstruction) keep
the stack's contrast — dense material dark, as in the micrographs and as IMOD's ``ctfphaseflip``
leaves it. ``invert`` (the CLI's ``--invert``) gives dense = bright.

The defocus gradient across the tilted specimen
-----------------------------------------------
The tilt axis is Y, so at tilt θ the specimen's mid-plane is higher or lower along X: the
defocus at detector column ``u`` (centred, in pixels of size ``p`` Å) is

    Δf(u) = Δf₀ + u · p · tan θ

(Δf₀ the file's defocus, the one at the image centre). In the projector's geometry
(``core.reconstruct.geometry``: x' = x·cosθ + z·sinθ) this is the tomogram's +Z pointing away from the
electron source (towards the detector); a data set recorded the other way round needs
``gradient_sign=-1``. Every projection is flipped strip by strip along X (strips parallel to the
tilt axis), each strip with the defocus at its centre, as IMOD's ``ctfphaseflip`` does; unlike
``ctfphaseflip`` each strip is cut out of a flip of the whole (mirror-padded) projection, so strip
edges carry no boundary artefacts.

Strip width: chosen per tilt so that the defocus changes across a strip by at most
``pb²/λ`` (``pb`` the pixel size of the projections being flipped): then at the Nyquist
frequency the phase χ differs between a strip's centre and its edge by at most π/8. It is capped
at the projection width (low tilts: one strip) and can be fixed (``strip_width``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import DDWError

#: defaults when the metadata does not say (the flags --voltage, --cs, --amplitude-contrast)
DEFAULT_VOLTAGE_KV = 300.0
DEFAULT_CS_MM = 2.7
DEFAULT_AMPLITUDE_CONTRAST = 0.07
#: defoci outside (0, MAX_DEFOCUS_UM] µm are refused: no cryo-ET data are recorded there
MAX_DEFOCUS_UM = 20.0


def wavelength_angstrom(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Å: λ = h / √(2 m₀ e V (1 + e V / (2 m₀ c²)))."""
    h, m0, e, c = 6.62607015e-34, 9.1093837015e-31, 1.602176634e-19, 299792458.0
    v = float(voltage_kv) * 1e3
    return h / math.sqrt(2 * m0 * e * v * (1 + e * v / (2 * m0 * c * c))) * 1e10


def first_zero(defocus_um: float, voltage_kv: float = DEFAULT_VOLTAGE_KV,
               cs_mm: float = DEFAULT_CS_MM, amplitude_contrast: float = 0.0) -> float:
    """Spatial frequency (1/Å) of the CTF's first zero, solved from χ(k) = π − atan(A/√(1−A²))
    (the zero of −(√(1−A²) sin χ + A cos χ) after the origin), by bisection on the formula."""
    lam = wavelength_angstrom(voltage_kv)
    df, cs = defocus_um * 1e4, cs_mm * 1e7
    target = math.pi - math.atan2(amplitude_contrast, math.sqrt(1 - amplitude_contrast**2))

    def chi(k):
        return math.pi * lam * df * k * k - 0.5 * math.pi * cs * lam**3 * k**4

    lo, hi = 0.0, 1.0 / math.sqrt(lam * df) * 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if chi(mid) < target else (lo, mid)
    return 0.5 * (lo + hi)


def ctf_zeros(defocus_um: float, k_max: float, *, voltage: float = DEFAULT_VOLTAGE_KV,
              cs: float = DEFAULT_CS_MM, amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST,
              phase_shift: float = 0.0) -> np.ndarray:
    """Spatial frequencies (1/Å) of every zero of the CTF in ``(0, k_max]``, ascending.

    Closed form: the CTF is ``−sin(χ(k) + φ)`` with ``φ = atan(A/√(1−A²)) + phase shift``, so
    its zeros are where ``χ + φ = nπ``; in ``u = k²``, ``χ = πλΔf·u − ½πC_sλ³·u²`` is a
    concave parabola, and each level ``nπ − φ`` it reaches on ``[0, k_max²]`` gives one root on
    its rising side and (past its top, far beyond any tomogram's Nyquist frequency at cryo-ET
    defoci) one on its falling side. ``phase_shift`` in degrees. ``tests/test_ctf.py`` checks
    the result against :func:`first_zero` (bisection), a value worked by hand and the sign
    changes of torch-ctf's CTF."""
    if not (k_max > 0):
        return np.zeros(0)
    lam = wavelength_angstrom(voltage)
    df, c_s = float(defocus_um) * 1e4, float(cs) * 1e7
    a = 0.5 * math.pi * c_s * lam**3  # χ(u) = b·u − a·u²
    b = math.pi * lam * df
    phi = math.atan2(amplitude_contrast, math.sqrt(1 - amplitude_contrast**2)) \
        + math.radians(phase_shift)
    top = float(k_max) ** 2

    def theta(u):
        return b * u - a * u * u + phi

    ends = [theta(0.0), theta(top)]
    if a > 0 and 0 < b / (2 * a) < top:
        ends.append(theta(b / (2 * a)))
    roots = []
    for n in range(math.ceil(min(ends) / math.pi), math.floor(max(ends) / math.pi) + 1):
        level = n * math.pi - phi  # solve a·u² − b·u + level = 0
        if a == 0:
            candidates = [level / b] if b != 0 else []
        else:
            disc = b * b - 4 * a * level
            if disc < 0:
                continue
            root = math.sqrt(disc)
            # the rising-side root in the cancellation-free form, then the falling side's
            rising = 2 * level / (b + root) if b + root != 0 else (b - root) / (2 * a)
            candidates = [rising, (b + root) / (2 * a)]
        roots += [u for u in candidates if 0 < u <= top]
    return np.sqrt(np.unique(np.asarray(roots, dtype=np.float64)))


def xz_zero_radii(shape_zx, voxel_size: float, defocus_um: float, **optics) -> np.ndarray:
    """The CTF zeros at ``defocus_um`` as ellipses over an ``xz_log_power`` image.

    A view's CTF depends on the length of its 2D frequency, and in the x–z slice (ky = 0) that
    is the distance from the centre: each zero is a circle of radius ``k`` (1/Å), which the
    image's pixels (steps of ``1/(Z·v)`` along kz and ``1/(X·v)`` along kx, ``v`` the voxel
    size in Å) draw as an ellipse. Returns ``(n, 2)``: the semi-axes ``(rows, cols)`` in pixels
    of every zero up to the Nyquist frequency ``0.5/v``. ``optics``: :func:`ctf_zeros`'
    keywords; :func:`mean_ctf_record` gives all of them for a series (its mean defocus: the
    astigmatism averaged away, the defocus gradient of the tilted views left out)."""
    z, x = (int(s) for s in shape_zx)
    if not (voxel_size > 0):
        raise DDWError(f"the CTF zeros need the voxel size in Å; got {voxel_size!r}")
    k = ctf_zeros(float(defocus_um), 0.5 / float(voxel_size), **optics)
    return np.stack([k * voxel_size * z, k * voxel_size * x], axis=1) if k.size else \
        np.zeros((0, 2))


def mean_ctf_record(ctf: "ViewCTF") -> dict:
    """The series' mean CTF as plain numbers (a layer's metadata keeps it): the keywords of
    :func:`xz_zero_radii`, and ``summary`` (:meth:`ViewCTF.summary`)."""
    return {"defocus_um": float(np.mean(ctf.defocus)), "voltage": float(ctf.voltage),
            "cs": float(ctf.cs), "amplitude_contrast": float(ctf.amplitude_contrast),
            "phase_shift": float(np.mean(ctf.phase_shift)), "summary": ctf.summary()}


@dataclass
class ViewCTF:
    """The CTF of every view of a tilt series (stack order, the views the stack uses).

    Defocus in µm, underfocus positive; ``defocus_u``/``defocus_v`` the two principal defoci and
    ``astigmatism_angle`` (degrees) the direction of ``defocus_u`` from the X axis (CTFFIND's
    convention); ``phase_shift`` in degrees (phase plates). ``voltage`` kV, ``cs`` mm,
    ``amplitude_contrast`` a fraction; ``given`` names those that came from the file (the rest
    are the defaults or the flags).
    """

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    astigmatism_angle: np.ndarray
    phase_shift: np.ndarray
    voltage: float = DEFAULT_VOLTAGE_KV
    cs: float = DEFAULT_CS_MM
    amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST
    kind: str = "list"
    source: Path | None = None
    notes: tuple[str, ...] = ()
    given: tuple[str, ...] = ()
    warnings: tuple[str, ...] = field(default=())
    file_pixel_size: float | None = None  # Å, as the file says (to spot another stack)

    @property
    def count(self) -> int:
        return int(self.defocus_u.size)

    @property
    def defocus(self) -> np.ndarray:
        """Mean defocus (µm) of every view."""
        return 0.5 * (self.defocus_u + self.defocus_v)

    def take(self, index) -> "ViewCTF":
        """The CTF of the views ``index`` (stack indices): follows a split or a selection."""
        index = np.asarray(index)
        return replace(self, defocus_u=self.defocus_u[index], defocus_v=self.defocus_v[index],
                       astigmatism_angle=self.astigmatism_angle[index],
                       phase_shift=self.phase_shift[index])

    def summary(self) -> str:
        """``61 defoci from TS_ctffind4.txt, 4.7…5.3 µm`` (and the optics' source)."""
        where = self.source.name if self.source is not None else self.kind
        lo, hi = float(self.defocus.min()), float(self.defocus.max())
        text = f"{self.count} defoci from {where}, {lo:.2f}…{hi:.2f} µm"
        optics = f"{self.voltage:g} kV, Cs {self.cs:g} mm, amplitude contrast {self.amplitude_contrast:g}"
        text += f" ({optics}{'' if self.given else ', defaults'})"
        if np.any(self.phase_shift != 0):
            text += f", phase shift {float(self.phase_shift.mean()):.0f}°"
        return text


def constant_ctf(count: int, defocus_um: float, **optics) -> ViewCTF:
    """One defocus for every view (tests, the simulator)."""
    d = np.full(int(count), float(defocus_um))
    return ViewCTF(d, d.copy(), np.zeros(count), np.zeros(count), **optics)


# ------------------------------------------------------------------------------------ the CTF


def _torch_ctf_2d(defocus_u, defocus_v, angle, phase_shift, ctf: ViewCTF, pixel_size: float,
                  shape, device):
    """torch-ctf's 2D CTF (rfft layout, its sign) for a batch of defoci (µm)."""
    import torch
    from torch_ctf import calculate_ctf_2d

    def tensor(values):
        return torch.as_tensor(np.asarray(values, dtype=np.float32), device=device)

    du, dv = tensor(defocus_u), tensor(defocus_v)
    return calculate_ctf_2d(
        defocus=0.5 * (du + dv), astigmatism=0.5 * (du - dv), astigmatism_angle=tensor(angle),
        voltage=float(ctf.voltage), spherical_aberration=float(ctf.cs),
        amplitude_contrast=float(ctf.amplitude_contrast), phase_shift=tensor(phase_shift),
        pixel_size=float(pixel_size), image_shape=tuple(int(s) for s in shape), rfft=True,
        fftshift=False)


def ctf_2d(ctf: ViewCTF, view: int, pixel_size: float, shape, *, device=None):
    """The CTF of one view over an rfft grid of ``shape`` (Y, X) at ``pixel_size`` Å (our sign)."""
    return -_torch_ctf_2d([ctf.defocus_u[view]], [ctf.defocus_v[view]],
                          [ctf.astigmatism_angle[view]], [ctf.phase_shift[view]], ctf,
                          pixel_size, shape, device)[0]


def ctf_1d(defocus_um: float, k_per_angstrom, *, voltage: float = DEFAULT_VOLTAGE_KV,
           cs: float = DEFAULT_CS_MM, amplitude_contrast: float = DEFAULT_AMPLITUDE_CONTRAST,
           phase_shift: float = 0.0) -> np.ndarray:
    """Our-sign CTF at frequencies ``k`` (1/Å), from torch-ctf's 2D CTF along kx."""
    k = np.asarray(k_per_angstrom, dtype=np.float64).ravel()
    # a grid whose kx samples are exactly k·p for p = 0.5 / max(k) (k = 0 … Nyquist)
    kmax = float(k.max()) if k.size and k.max() > 0 else 1.0
    n = 2 * 4096
    pixel = 0.5 / kmax
    c = constant_ctf(1, defocus_um, voltage=voltage, cs=cs, amplitude_contrast=amplitude_contrast)
    c.phase_shift[:] = phase_shift
    row = ctf_2d(c, 0, pixel, (2, n)).cpu().numpy()[0]  # ky = 0 row, kx = j / (n p)
    grid = np.arange(row.size) / (n * pixel)
    return np.interp(k, grid, row)


# ------------------------------------------------------------------------------ phase flipping


def strip_width_for(angle_deg: float, pixel_size: float, voltage: float, n_x: int) -> int:
    """Automatic strip width (pixels) at one tilt: defocus change across a strip ≤ p²/λ."""
    slope = abs(math.tan(math.radians(angle_deg))) * pixel_size  # Å of defocus per pixel
    if slope < 1e-9:
        return int(n_x)
    tolerance = pixel_size**2 / wavelength_angstrom(voltage)
    return int(max(1, min(n_x, math.floor(tolerance / slope))))


@dataclass
class PhaseFlip:
    """Strip-wise phase flipping of a tilt series' projections (see the module's text).

    ``ctf``: the views' CTF in stack order; ``angles``: their tilt (degrees); ``pixel_size``: Å
    of the UNBINNED projections (flipping happens after binning, at ``pixel_size·binning``;
    Fourier binning keeps the low frequencies exactly, so the flip is the same as before
    binning there). ``strip_width``: pixels of the projections flipped, ``None`` = automatic.
    """

    ctf: ViewCTF
    angles: np.ndarray
    pixel_size: float
    strip_width: int | None = None
    gradient_sign: float = 1.0

    def __post_init__(self):
        self.angles = np.asarray(self.angles, dtype=np.float64).ravel()
        if self.ctf.count != self.angles.size:
            raise DDWError(f"{self.ctf.count} defoci for {self.angles.size} projections: the "
                           "CTF must follow the views the stack uses")
        if not (self.pixel_size > 0):
            raise DDWError(f"phase flipping needs the pixel size; got {self.pixel_size!r} Å "
                           "(give --voxel-size)")
        if self.strip_width is not None and int(self.strip_width) < 1:
            raise DDWError(f"strip width {self.strip_width} must be ≥ 1 pixel")

    def widths(self, n_x: int, binning: int = 1) -> np.ndarray:
        """The strip width (pixels of the binned projections) at every tilt."""
        pb = self.pixel_size * binning
        if self.strip_width is not None:
            return np.full(self.angles.size, min(int(self.strip_width), n_x))
        return np.asarray([strip_width_for(a, pb, self.ctf.voltage, n_x) for a in self.angles])

    def describe(self, n_x: int, binning: int = 1) -> str:
        """``phase flipped in 16-px strips`` (the narrowest; wider at low tilt)."""
        w = self.widths(n_x, binning)
        if int(w.min()) >= n_x:
            return "phase flipped (whole projections: the gradient is below the tolerance)"
        return (f"phase flipped in {int(w.min())}-px strips (at the highest tilt; "
                f"{int(np.median(w))} px median)")

    def apply(self, p, start: int, binning: int = 1):
        """Flip the projections ``p`` ``(b, Y, X)`` (torch, float32) that are views
        ``start … start+b−1``; returns a new tensor of the same shape."""
        import torch

        b, n_y, n_x = (int(s) for s in p.shape)
        pb = self.pixel_size * binning
        widths = self.widths(n_x, binning)
        lam = wavelength_angstrom(self.ctf.voltage)
        pad_y, pad_x = (self._pad(n, pb, lam) for n in (n_y, n_x))
        out = torch.empty_like(p)
        for i in range(b):
            view = start + i
            img = p[i][None, None]
            padded = torch.nn.functional.pad(img, (pad_x, pad_x, pad_y, pad_y), mode="reflect")[0, 0]
            shape = tuple(padded.shape)
            spec = torch.fft.rfft2(padded)
            w = int(widths[view])
            n_strips = -(-n_x // w)
            centres = (np.arange(n_strips) * w + (np.minimum(np.arange(n_strips) * w + w, n_x)
                       - np.arange(n_strips) * w - 1) / 2.0) - n_x // 2  # centred columns
            shift = self.gradient_sign * centres * pb * math.tan(math.radians(self.angles[view])) / 1e4
            du = self.ctf.defocus_u[view] + shift
            dv = self.ctf.defocus_v[view] + shift
            for s0 in range(0, n_strips, self._batch(shape)):
                s1 = min(n_strips, s0 + self._batch(shape))
                sign = _torch_ctf_2d(du[s0:s1], dv[s0:s1],
                                     np.full(s1 - s0, self.ctf.astigmatism_angle[view]),
                                     np.full(s1 - s0, self.ctf.phase_shift[view]), self.ctf, pb,
                                     shape, p.device)
                # torch-ctf's sign is −ours, so sign(its CTF) = −sign(CTF): low frequencies kept
                sign = torch.where(sign >= 0, 1.0, -1.0).to(spec.real.dtype)
                flipped = torch.fft.irfft2(spec[None] * sign, s=shape)
                for j, s in enumerate(range(s0, s1)):
                    c0, c1 = s * w, min(n_x, s * w + w)
                    out[i, :, c0:c1] = flipped[j, pad_y:pad_y + n_y, pad_x + c0:pad_x + c1]
        return out

    def _pad(self, n: int, pb: float, lam: float) -> int:
        """Mirror padding: the CTF's point spread (λ·Δf·k_Nyquist, in pixels) plus a margin."""
        spread = lam * float(np.max(self.ctf.defocus_u.max())) * 1e4 / (2 * pb * pb)
        return int(min(n - 1, max(8, math.ceil(spread) + 8)))

    @staticmethod
    def _batch(shape) -> int:
        return max(1, (16 * 1024 * 1024) // (shape[0] * shape[1]))


# ------------------------------------------------------------ the CTF-aware fit's envelope


def ctf_record(ctf: ViewCTF) -> dict:
    """A plain (JSON) record of the views' CTF: what the fit's envelope needs, what a checkpoint
    and the halves' ``<stem>_ctf.json`` store (:func:`ctf_from_record` reads it back)."""
    return {"defocus_u_um": [round(float(v), 5) for v in ctf.defocus_u],
            "defocus_v_um": [round(float(v), 5) for v in ctf.defocus_v],
            "astigmatism_angle_deg": [round(float(v), 3) for v in ctf.astigmatism_angle],
            "phase_shift_deg": [round(float(v), 3) for v in ctf.phase_shift],
            "voltage_kv": float(ctf.voltage), "cs_mm": float(ctf.cs),
            "amplitude_contrast": float(ctf.amplitude_contrast),
            "source": None if ctf.source is None else Path(ctf.source).name}


def ctf_from_record(record: dict, *, what: str = "CTF record") -> ViewCTF:
    """The :class:`ViewCTF` of a :func:`ctf_record` (DDWError naming a missing or bad key)."""
    try:
        du = np.asarray(record["defocus_u_um"], dtype=np.float64).ravel()
        dv = np.asarray(record.get("defocus_v_um", du), dtype=np.float64).ravel()
        n = du.size
        angle = np.asarray(record.get("astigmatism_angle_deg", np.zeros(n)), dtype=np.float64).ravel()
        phase = np.asarray(record.get("phase_shift_deg", np.zeros(n)), dtype=np.float64).ravel()
        optics = dict(voltage=float(record.get("voltage_kv", DEFAULT_VOLTAGE_KV)),
                      cs=float(record.get("cs_mm", DEFAULT_CS_MM)),
                      amplitude_contrast=float(record.get("amplitude_contrast",
                                                          DEFAULT_AMPLITUDE_CONTRAST)))
    except (KeyError, TypeError, ValueError) as exc:
        raise DDWError(f"{what}: cannot read the defoci ({exc!s}); it needs 'defocus_u_um' (a list of "
                       "µm, one per view) and optionally defocus_v_um, astigmatism_angle_deg, "
                       "phase_shift_deg, voltage_kv, cs_mm, amplitude_contrast") from None
    if n == 0 or not (dv.size == angle.size == phase.size == n):
        raise DDWError(f"{what}: {n} defoci, {dv.size} second defoci, {angle.size} angles and "
                       f"{phase.size} phase shifts; give one of each per view")
    both = np.concatenate([du, dv])
    if not np.all(np.isfinite(both)) or both.min() <= 0 or both.max() > MAX_DEFOCUS_UM:
        raise DDWError(f"{what}: defoci must be in (0, {MAX_DEFOCUS_UM:g}] µm (underfocus positive), "
                       f"got {both.min():g}…{both.max():g}")
    source = record.get("source")
    return ViewCTF(du, dv, angle, phase, kind="record", given=("voltage", "cs", "amplitude_contrast"),
                   source=Path(source) if source else None, **optics)


def tilt_averaged_abs_ctf(ctf: ViewCTF, k_per_angstrom, *, n_azimuth: int = 8) -> np.ndarray:
    """The mean of ``|CTF(k)|`` over the views (and, for astigmatic views, over ``n_azimuth``
    directions in the image plane) at frequencies ``k`` (1/Å): the radial envelope of the
    CTF-aware fit (docs/method.md §2.5).

    Each view's |CTF| is radial in its own projection plane (the mean defocus; an astigmatic
    view's |CTF| is averaged over the directions, its defocus ``Δf(φ) = Δf_mean + ½(Δf_u − Δf_v)
    cos 2(φ − angle)``). Their mean over the views is then a function of ``|k|`` alone in 3D,
    so it is the same for every rotation of a sub-tomogram (see :mod:`core.fit.ctf_envelope`).
    """
    k = np.asarray(k_per_angstrom, dtype=np.float64)
    flat = k.ravel()
    total = np.zeros_like(flat)
    count = 0
    azimuths = (np.arange(int(n_azimuth)) + 0.5) * math.pi / int(n_azimuth)
    for view in range(ctf.count):
        mean = 0.5 * (ctf.defocus_u[view] + ctf.defocus_v[view])
        half = 0.5 * (ctf.defocus_u[view] - ctf.defocus_v[view])
        phis = azimuths if abs(half) > 1e-6 else azimuths[:1]
        for phi in phis:
            d = mean + half * math.cos(2 * (phi - math.radians(ctf.astigmatism_angle[view])))
            c = ctf_1d(d, flat, voltage=ctf.voltage, cs=ctf.cs,
                       amplitude_contrast=ctf.amplitude_contrast,
                       phase_shift=float(ctf.phase_shift[view]))
            total += np.abs(c) / len(phis)
        count += 1
    return (total / max(count, 1)).reshape(k.shape)
