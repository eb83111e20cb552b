"""Compression of OME-Zarr chunks (core.io.omezarr.CHUNKS, float32): ratio and single-thread
encode/decode speed of Blosc codecs on a noisy chunk and on a smooth-plus-noise chunk (a
tomogram is mostly noise at the voxel level, so neither compresses much).

    python bench/omezarr_codecs.py
"""
from __future__ import annotations

import time

import numpy as np


def main() -> None:
    from numcodecs import Blosc

    from napari_deepdewedge.core.io.omezarr import CHUNKS

    rng = np.random.default_rng(0)
    noise = rng.standard_normal(CHUNKS).astype(np.float32)
    smooth = (0.3 * noise + np.sin(np.arange(CHUNKS[2]) / 9)[None, None, :]).astype(np.float32)
    codecs = {"blosc lz4 5 shuffle": Blosc("lz4", 5, Blosc.SHUFFLE),
              "blosc zstd 1 shuffle": Blosc("zstd", 1, Blosc.SHUFFLE),
              "blosc zstd 5 shuffle": Blosc("zstd", 5, Blosc.SHUFFLE),
              "blosc lz4 5 noshuffle": Blosc("lz4", 5, Blosc.NOSHUFFLE)}
    from numcodecs import blosc

    blosc.set_nthreads(1)
    for name, codec in codecs.items():
        for label, x in (("noise", noise), ("smooth+noise", smooth)):
            t = time.perf_counter()
            for _ in range(5):
                encoded = codec.encode(x)
            enc = (time.perf_counter() - t) / 5
            t = time.perf_counter()
            for _ in range(5):
                codec.decode(encoded)
            dec = (time.perf_counter() - t) / 5
            print(f"{name:22s} {label:13s} ratio {x.nbytes / len(encoded):.2f}  encode "
                  f"{x.nbytes / enc / 1e6:5.0f} MB/s  decode {x.nbytes / dec / 1e6:5.0f} MB/s")


if __name__ == "__main__":
    main()
