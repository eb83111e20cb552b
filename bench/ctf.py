"""Phase flipping measured on the CTF phantom: FSC-0.143 resolution of the full FBP against the
truth, uncorrected vs our flip (read from the CTFFIND and IMOD files, through the command line's
path: load_tilt_series(ctf=FILE) → reconstruct_halves) vs an ideal flip (the true defoci, every
detector column its own defocus).

Run:  OMP_NUM_THREADS=1 python bench/ctf.py            (the three cases below, ~8 min on 1 core)
      OMP_NUM_THREADS=1 python bench/ctf.py --case A   (one case)

Cases (core.evaluate.ctf_phantom: 5 ± 0.3 µm per view, 300 kV, Cs 2.7 mm, A 0.07, the gradient across
the tilted specimen and through its thickness; seed 3):
  A  5 Å pixels, 48×128×128, 61 views ±60°, SNR 0.5 (the issue's setting)
  B  10 Å pixels, same (the first zero, ~32 Å, sits near Nyquist = 20 Å)
  C  5 Å pixels, a wide field 32×64×384, 41 views, noiseless: where the gradient across the
     field matters (0.33 µm at 60°); also flipped without the gradient and with its sign wrong.
  D  2.5 Å pixels, 16×32×512, 21 views (6°), noiseless: finer pixels, where the tolerance is
     tighter (0.22 µm across the field at 60°).
Each figure: [FSC-0.143 resolution in pixels (lower is better, 2 = Nyquist), mean FSC over the
shells past the first zero of the mean defocus (higher is better)].
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

CASES = {
    "A": dict(shape=(48, 128, 128), step=2.0, pixel=5.0, snr=0.5),
    "B": dict(shape=(48, 128, 128), step=2.0, pixel=10.0, snr=0.5),
    "C": dict(shape=(32, 64, 384), step=3.0, pixel=5.0, snr=None, layer_voxels=32),
    "D": dict(shape=(16, 32, 512), step=6.0, pixel=2.5, snr=None, layer_voxels=16),
}


def run_case(name: str, shape, step, pixel, snr, layer_voxels=8) -> dict:
    from napari_deepdewedge.core.ctf import PhaseFlip, first_zero
    from napari_deepdewedge.core.evaluate.ctf_phantom import (
        make_ctf_sample,
        write_ctffind_txt,
        write_imod_defocus,
    )
    from napari_deepdewedge.core.io.series import load_tilt_series
    from napari_deepdewedge.core.io.mrc import write_mrc
    from napari_deepdewedge.core.evaluate.metrics import fsc, fsc_crossing
    from napari_deepdewedge.core.reconstruct.fbp import fbp
    from napari_deepdewedge.pipeline.halves import HalvesRequest, reconstruct_halves

    t0 = time.perf_counter()
    s = make_ctf_sample(shape, (-60, 60, step), pixel_size=pixel, snr=snr, seed=3,
                        layer_voxels=layer_voxels)
    t_sim = time.perf_counter() - t0
    k1 = first_zero(float(s.ctf.defocus.mean()), amplitude_contrast=0.07)

    def res(volume):  # the output keeps the images' contrast (dense dark): compare −volume
        """(FSC-0.143 resolution in px, mean FSC over the shells past the first zero)."""
        freqs, curve = fsc(-volume, s.ground_truth, pixel)
        past = np.isfinite(curve) & (freqs >= k1)
        crossing = fsc_crossing(freqs, curve) / pixel  # inf: never above 0.143 → null
        return [round(crossing, 2) if np.isfinite(crossing) else None,
                round(float(curve[past].mean()), 3)]

    out = {"case": name, "shape": list(shape), "views": int(s.angles.size), "pixel_A": pixel,
           "snr": snr, "defocus_um": [round(float(s.ctf.defocus.min()), 2),
                                      round(float(s.ctf.defocus.max()), 2)],
           "simulate_s": round(t_sim, 1)}
    out["uncorrected"] = res(fbp(s.tilt_series, s.angles, shape[0]))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        stack = write_mrc(folder / "TS.mrc", s.tilt_series, voxel_size=pixel)
        (folder / "TS.tlt").write_text("\n".join(f"{a:.2f}" for a in s.angles) + "\n")
        files = {"ctffind4_txt": write_ctffind_txt(folder / "TS_ctffind4.txt", s.ctf, pixel),
                 "imod_defocus_v3": write_imod_defocus(folder / "TS.defocus", s.ctf, s.angles)}
        for key, path in files.items():
            series = load_tilt_series(stack, angles=str(folder / "TS.tlt"), ctf=str(path))
            t0 = time.perf_counter()
            halves = reconstruct_halves(HalvesRequest(series=series, thickness=shape[0],
                                                      want_full=True, device="cpu"))
            out[f"flip_{key}"] = res(halves.full)
            out[f"flip_{key}_s"] = round(time.perf_counter() - t0, 1)
            out["log_line"] = halves.ctf_summary
    t0 = time.perf_counter()
    plain = fbp(s.tilt_series, s.angles, shape[0])
    out["fbp_only_s"] = round(time.perf_counter() - t0, 1)
    del plain
    ideal = PhaseFlip(s.ctf, s.angles, pixel, strip_width=1)
    out["ideal_flip"] = res(fbp(s.tilt_series, s.angles, shape[0], phase_flip=ideal))
    if name in ("C", "D"):
        for label, sign in (("flip_without_gradient", 0.0), ("flip_gradient_sign_wrong", -1.0)):
            flip = PhaseFlip(s.ctf, s.angles, pixel, gradient_sign=sign)
            out[label] = res(fbp(s.tilt_series, s.angles, shape[0], phase_flip=flip))
        for width in (16, 64):
            flip = PhaseFlip(s.ctf, s.angles, pixel, strip_width=width)
            out[f"flip_strip_{width}px"] = res(fbp(s.tilt_series, s.angles, shape[0],
                                                   phase_flip=flip))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--json", default=str(Path(__file__).with_name("results_ctf.json")))
    args = parser.parse_args()
    results = []
    for name in args.case or sorted(CASES):
        result = run_case(name, **CASES[name])
        print(json.dumps(result), flush=True)
        results.append(result)
    Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
