"""The projection geometry shared by the back-projector and the forward projector, and the
forward projector itself.

Geometry and sign convention (the one place where it is stated; tests pin it down)
----------------------------------------------------------------------------------
Tilt series are ``(n_tilts, Y, X)``, tomograms ``(Z, Y, X)``; the tilt axis is Y. Every axis of
length ``N`` uses centered coordinates: index ``i`` sits at ``i - N // 2``. The projection at
tilt θ (degrees) of the voxel at centered ``(z, y, x)`` lands on detector row ``y`` at column

    x' = x·cos θ + z·sin θ

so at θ > 0 a point above the centre (z > 0) moves towards +x on the detector. The detector has
the width of the tomogram (``X``), and its centre column is ``X // 2``. :func:`forward_project`
and :func:`.fbp.fbp` share this geometry exactly (the projector is the transpose of the
back-projector, both with linear interpolation along x').

The back-projection of one Y-row is a fixed linear map ``(tilt, x') -> (z, x)`` with two
linear-interpolation weights per (voxel, tilt). It is built once per call as a sparse CSR matrix
and applied to a chunk of Y-rows in one sparse matrix product; on devices without sparse support
(e.g. Apple MPS) an equivalent gather formulation is used.
"""
from __future__ import annotations

import warnings

import numpy as np

from ..device import pick_device
from ..errors import DDWError

#: Upper bound on one Y-chunk of output (float32 values) when ``chunk_y`` is not given.
_CHUNK_VALUES = 32 * 1024 * 1024
#: Default Y-rows per sparse product: a few dozen columns keep the dense operand's rows in
#: cache; measured on CPU, 16–32 rows take about half the time of 512 rows at once.
_CHUNK_ROWS = 32
def as_stack(data, what: str):
    """A 3D numpy array (no copy for memmaps) or a torch tensor; refuse anything else."""
    import torch

    if isinstance(data, torch.Tensor):
        arr = data.detach()
        dtype_ok = not (arr.is_complex() or arr.dtype == torch.bool)
    else:
        arr = np.asarray(data)
        dtype_ok = arr.dtype.kind in "fiu"
    if arr.ndim != 3:
        raise DDWError(
            f"the {what} must be a 3D array, got {arr.ndim}D with shape {tuple(arr.shape)}; "
            + (
                "pass the whole stack as (n_tilts, Y, X)"
                if what == "tilt series"
                else "pass the volume as (Z, Y, X)"
            )
        )
    if not dtype_ok:
        raise DDWError(
            f"the {what} has data type {arr.dtype}, which is not a real number type; "
            "convert it to float32 (or an integer type) first"
        )
    if min(arr.shape) < 1:
        raise DDWError(f"the {what} is empty (shape {tuple(arr.shape)}); load a non-empty file")
    return arr


def as_angles(angles, n_tilts: int) -> np.ndarray:
    try:
        a = np.asarray(angles, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise DDWError(
            "the tilt angles are not a list of numbers; give one angle in degrees per projection"
        ) from None
    if a.size != n_tilts:
        raise DDWError(
            f"there are {a.size} tilt angles but the tilt series has {n_tilts} projections; "
            "use the angle file (.tlt/.rawtlt) that belongs to this stack, one angle per projection"
        )
    if not np.all(np.isfinite(a)):
        raise DDWError("the tilt angles contain NaN or infinity; fix the angle file")
    return a


def check_int(value, name: str, minimum: int, fix: str) -> int:
    if isinstance(value, bool) or not float(value).is_integer():
        raise DDWError(f"{name} must be a whole number, got {value!r}; {fix}")
    value = int(value)
    if value < minimum:
        raise DDWError(f"{name} must be at least {minimum}, got {value}; {fix}")
    return value


class _Geometry:
    """Linear-interpolation map between detector columns (tilt, x') and voxels (z, x) of a row.

    ``apply_back(q)`` maps ``q (n_tilts·n_det, m)`` to ``(n_z·n_x, m)``;
    ``apply_forward(v)`` is its transpose. Built once; applied to any number of Y-rows.
    """

    def __init__(self, angles_deg, n_z: int, n_x: int, n_det: int, device):
        import torch

        self.device = device
        self.n_tilts = len(angles_deg)
        self.n_z, self.n_x, self.n_det = n_z, n_x, n_det
        theta = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
        # float64 coordinates (exact for any detector width); MPS has no float64: build on CPU
        build = device if device.type != "mps" else torch.device("cpu")
        cos = torch.as_tensor(np.cos(theta), device=build)
        sin = torch.as_tensor(np.sin(theta), device=build)
        z = torch.arange(n_z, device=build, dtype=torch.float64) - n_z // 2
        x = torch.arange(n_x, device=build, dtype=torch.float64) - n_x // 2
        u = (z[:, None, None] * sin) + (x[None, :, None] * cos) + n_det // 2  # (Z, X, n)
        i0 = torch.floor(u)
        frac = (u - i0).float()
        del u
        i0 = i0.to(torch.int32)
        w1 = frac
        w0 = 1.0 - frac
        w0.masked_fill_((i0 < 0) | (i0 >= n_det), 0.0)
        w1.masked_fill_((i0 < -1) | (i0 >= n_det - 1), 0.0)
        offset = torch.arange(self.n_tilts, device=build, dtype=torch.int32) * n_det
        # flat (tilt, x') indices of the two neighbours; out-of-detector ones carry weight 0
        self._i0 = (i0.clamp(0, n_det - 1) + offset).to(device)
        self._i1 = ((i0 + 1).clamp_(0, n_det - 1) + offset).to(device)
        self._w0, self._w1 = w0.to(device), w1.to(device)
        self._csr = None
        self._sparse_ok = device.type in ("cpu", "cuda")

    def _flat(self):
        rows = self.n_z * self.n_x
        return (
            self._i0.reshape(rows, self.n_tilts).long(),
            self._i1.reshape(rows, self.n_tilts).long(),
            self._w0.reshape(rows, self.n_tilts),
            self._w1.reshape(rows, self.n_tilts),
        )

    def _matrix(self):
        import torch

        if self._csr is None:
            rows = self.n_z * self.n_x
            cols = torch.stack((self._i0, self._i1), dim=-1).reshape(-1)
            vals = torch.stack((self._w0, self._w1), dim=-1).reshape(-1)
            per_row = 2 * self.n_tilts
            crow = torch.arange(
                0, rows * per_row + 1, per_row, device=self.device, dtype=torch.int32
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                self._csr = torch.sparse_csr_tensor(
                    crow,
                    cols,
                    vals,
                    size=(rows, self.n_tilts * self.n_det),
                    check_invariants=False,
                )
        return self._csr

    def apply_back(self, q):
        """``q``: (n_tilts·n_det, m) float32 → (n_z·n_x, m)."""
        import torch

        if self._sparse_ok:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return self._matrix() @ q
            except (RuntimeError, NotImplementedError):
                self._sparse_ok = False
                self._csr = None
        rows = self.n_z * self.n_x
        out = torch.zeros((rows, q.shape[1]), device=q.device, dtype=q.dtype)
        i0, i1, w0, w1 = self._flat()
        for t in range(self.n_tilts):
            out.addcmul_(q.index_select(0, i0[:, t]), w0[:, t, None])
            out.addcmul_(q.index_select(0, i1[:, t]), w1[:, t, None])
        return out

    def apply_forward(self, v):
        """``v``: (n_z·n_x, m) float32 → (n_tilts·n_det, m) (transpose of ``apply_back``)."""
        import torch

        if self._sparse_ok:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return self._matrix().t() @ v
            except (RuntimeError, NotImplementedError):
                self._sparse_ok = False
                self._csr = None
        rows = self.n_z * self.n_x
        out = torch.zeros((self.n_tilts * self.n_det, v.shape[1]), device=v.device, dtype=v.dtype)
        i0, i1, w0, w1 = self._flat()
        for t in range(self.n_tilts):
            out.index_add_(0, i0[:, t], v * w0[:, t, None])
            out.index_add_(0, i1[:, t], v * w1[:, t, None])
        return out


def _default_chunk(rows_per_y: int, n_y: int, device) -> int:
    by_memory = _CHUNK_VALUES // max(1, rows_per_y)
    rows = min(by_memory, _CHUNK_ROWS) if device.type == "cpu" else by_memory  # GPUs: big chunks
    return int(max(1, min(n_y, rows)))


def forward_project(volume, angles, *, device=None, chunk_y: int | None = None) -> np.ndarray:
    """Line-integral projections of a ``(Z, Y, X)`` volume: ``(n_tilts, Y, X)`` float32.

    Same geometry and sign as :func:`fbp` (x' = x·cos θ + z·sin θ, detector width X, centred
    coordinates); each voxel is spread over the two nearest detector columns by linear
    interpolation (the transpose of the back-projector), so the total mass of each projection
    equals the mass of the volume that falls on the detector.
    """
    import torch

    vol = as_stack(volume, "volume")
    n_z, n_y, n_x = (int(s) for s in vol.shape)
    ang = np.asarray(angles, dtype=np.float64).reshape(-1)
    if ang.size < 1 or not np.all(np.isfinite(ang)):
        raise DDWError("give at least one finite tilt angle in degrees to project at")
    if chunk_y is not None:
        chunk_y = check_int(chunk_y, "chunk_y", 1, "use None for an automatic chunk size")
    dev = pick_device(device)
    if isinstance(vol, torch.Tensor):
        v = vol.to(device=dev, dtype=torch.float32)
    else:
        v = torch.from_numpy(np.array(vol, dtype=np.float32)).to(dev)
    if not bool(torch.isfinite(v).all()):
        raise DDWError("the volume contains NaN or infinite values; fix it before projecting")
    geom = _Geometry(ang, n_z, n_x, n_x, dev)
    v = v.permute(0, 2, 1)  # (Z, X, Y)
    out = np.empty((ang.size, n_y, n_x), dtype=np.float32)
    step = chunk_y or _default_chunk(max(n_z, ang.size) * n_x, n_y, dev)
    for y0 in range(0, n_y, step):
        y1 = min(n_y, y0 + step)
        block = v[:, :, y0:y1].reshape(n_z * n_x, y1 - y0).contiguous()
        res = geom.apply_forward(block).reshape(ang.size, n_x, y1 - y0).permute(0, 2, 1)
        torch.from_numpy(out[:, y0:y1, :]).copy_(res)
    return out
