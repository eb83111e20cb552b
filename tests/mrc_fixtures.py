"""MRC files written byte by byte, as older IMOD/SerialEM wrote them (no help from mrcfile).

Layout (IMOD's MRC header description, 1024 bytes, little-endian): words 1-3 NX NY NZ, 4 MODE,
5-7 NXSTART…, 8-10 MX MY MZ, 11-13 cell lengths (Å), 14-16 cell angles, 17-19 MAPC/R/S, 20-22
DMIN/DMAX/DMEAN, 23 ISPG, 24 NSYMBT, bytes 96-195 extra (IMOD stamp at 152, flags at 156),
196-207 origin, 208 MAP ID, 212 machine stamp, 216 RMS, 220 NLABL, 224-1023 ten 80-char labels.
"""
import struct

import numpy as np

MODE_OF = {np.dtype(np.int8): 0, np.dtype(np.uint8): 0, np.dtype(np.int16): 1,
           np.dtype(np.float32): 2, np.dtype(np.uint16): 6, np.dtype(np.float16): 12}


def old_style_header(shape, mode, pixel, *, origin=(0.0, 0.0, 0.0), ispg=0, map_id=b"\0\0\0\0",
                     machst=b"\0\0\0\0", labels=(), imod_flags=None, nversion=0, mxyz=None):
    """A 1024-byte header; ``shape`` is (NZ, NY, NX); defaults reproduce an old SerialEM stack."""
    nz, ny, nx = shape
    mx, my, mz = mxyz if mxyz is not None else (nx, ny, nz)
    head = bytearray(1024)
    struct.pack_into("<10i", head, 0, nx, ny, nz, mode, 0, 0, 0, mx, my, mz)
    struct.pack_into("<6f", head, 40, mx * pixel, my * pixel, mz * pixel, 90.0, 90.0, 90.0)
    struct.pack_into("<3i", head, 64, 1, 2, 3)
    struct.pack_into("<3f", head, 76, -1.0, 1.0, 0.0)
    struct.pack_into("<2i", head, 88, ispg, 0)
    struct.pack_into("<i", head, 108, nversion)
    if imod_flags is not None:
        struct.pack_into("<2i", head, 152, 1146047817, imod_flags)
    struct.pack_into("<3f", head, 196, origin[2], origin[1], origin[0])  # x, y, z
    head[208:212] = map_id
    head[212:216] = machst
    struct.pack_into("<f", head, 216, 0.0)
    struct.pack_into("<i", head, 220, len(labels))
    for i, text in enumerate(labels):
        head[224 + 80 * i: 224 + 80 * (i + 1)] = text.encode("ascii").ljust(80)[:80]
    return bytes(head)


SERIALEM_LABELS = (
    "SerialEM: Digitized on EMBL Krios G4          04-Mar-24  10:12:54    ",
    "     Tilt axis angle = 85.3, binning = 1  spot = 8  camera = 0",
)


def write_old_style_mrc(path, data, pixel=2.675, **header_kw):
    """Write ``data`` (NZ, NY, NX) after an old-style header; returns the path."""
    data = np.ascontiguousarray(data)
    header = old_style_header(data.shape, MODE_OF[data.dtype], pixel, **header_kw)
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(data.astype(data.dtype.newbyteorder("<"), copy=False).tobytes())
    return path


def marker_stack(shape=(5, 6, 8), dtype=np.int16):
    """Values that tell every axis apart: 100·z + 10·y + x (orientation checks)."""
    z, y, x = np.indices(shape)
    return (100 * z + 10 * y + x).astype(dtype)
