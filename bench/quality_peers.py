"""Quality against the tools users would pick instead, and the ablations of our departures (issue 11).

Set-up (once; each peer in its own virtual environment, run as a subprocess of this benchmark):
      bash bench/peers/setup_topaz.sh          # Topaz-Denoise 3D, /work/peers/topaz-venv
      bash bench/peers/setup_careamics.sh      # CAREamics Noise2Noise 3D, /work/peers/careamics-venv
      bash bench/peers/setup_ddw.sh /work/peers/DeepDeWedge   # the original DeepDeWedge + its venv
A peer whose environment is missing is printed as "not run" with the command that sets it up.

Run:  python bench/quality_peers.py --ddw-path /work/peers/DeepDeWedge          (full size, hours)
      python bench/quality_peers.py --quick                                    (minutes; the test's run)
      python bench/quality_peers.py --size reduced --phantoms sym60 --ablations all

Phantoms (core.evaluate.phantom, held-out seed 2024): ``sym60`` ±60° (2° steps), SNR 0.3; ``asym``
−54…+62°, SNR 0.3; ``lowsnr`` ±60°, SNR 0.1; ``thick`` ±60°, SNR 0.3, ice slab 85 % of Z (vs
60 %) with twice the particle density. Even/odd halves by angle parity, each FBP'd.

Rows: FBP of the full series; the best Gaussian low-pass of it (σ scanned against the ground
truth: an oracle, so an upper bound for that baseline); Topaz-Denoise 3D (its pretrained
model, on the full FBP); a Noise2Noise denoiser without wedge filling (CAREamics N2N 3D fitted
half0 → half1, applied to both halves, averaged); the original DeepDeWedge (its own classes,
``--ddw-path``); ours. Learners get equal fitting budgets (same cube size, channels, depth,
batch and epochs; CAREamics the same epochs over its own patches); with ``--equal-time`` ours
also runs for exactly the CPU seconds the original's fit took.

Columns: CC with the ground truth inside the ice slab; FSC 0.143 crossing against the ground
truth (Å); correlation inside the missing wedge (core.evaluate.metrics.wedge_correlation); CPU seconds
(this process's CPU time for in-process work, the children's for peers; all pinned to
``--threads``).

Ablations (``--ablations residual,matching,bspline,valupdate`` or ``all``), on ours:
``residual`` U-Net residual on (at the run's epochs; at full size also at 200 epochs);
``matching`` the same fit refined without the matching filter, and that unfiltered refinement
followed by the best Gaussian (the control: is the filter's gain plain smoothing?);
``bspline`` cubic B-spline rotation with its own matching filter; ``valupdate`` validation
cubes not wedge-updated (the refined tomogram comes from best.pt, which that choice moves).

Sizes: ``full`` 64×160×160, s = 32, 16 channels, depth 3, batch 4, 40 epochs (the original's
CPU settings); ``reduced`` 32×96×96, s = 16, 8 channels, depth 2, batch 8, 10 epochs (what a
shared 2-core machine finishes in about an hour); ``small`` 32×64×64, same network, 6 epochs
(what it finishes in tens of minutes under a load of 12);
``--quick`` 32×64×64, s = 16, 4 channels, depth 2, batch 4, 1 epoch with a wedge update (a smoke run: numbers
without meaning). ``--json`` writes every figure; ``--figure`` the slice panel (bench/quality_figure.py).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

SEED = 2024
PHANTOMS = {  # name: (tilt min, max, step), SNR, slab fraction, particle density
    "sym60": ((-60, 60, 2), 0.3, 0.6, 1.0),
    "asym": ((-54, 62, 2), 0.3, 0.6, 1.0),
    "lowsnr": ((-60, 60, 2), 0.1, 0.6, 1.0),
    "thick": ((-60, 60, 2), 0.3, 0.85, 2.0),
}
SIZES = {  # shape, subtomo size, channels, depth, batch, epochs
    "full": ((64, 160, 160), 32, 16, 3, 4, 40),
    "reduced": ((32, 96, 96), 16, 8, 2, 8, 10),
    "small": ((32, 64, 64), 16, 8, 2, 8, 6),
    "quick": ((32, 64, 64), 16, 4, 2, 4, 1),
}
ABLATIONS = ("residual", "matching", "bspline", "valupdate")
PEER_VENVS = {
    "topaz": ("/work/peers/topaz-venv", "bash bench/peers/setup_topaz.sh"),
    "n2n": ("/work/peers/careamics-venv", "bash bench/peers/setup_careamics.sh"),
}


@dataclass
class Row:
    name: str
    cc_slab: float | None = None
    fsc143: float | None = None
    wedge: float | None = None
    cpu: float | None = None
    note: str = ""
    volume: np.ndarray | None = field(default=None, repr=False)

    def figures(self) -> dict:
        return {k: getattr(self, k) for k in ("cc_slab", "fsc143", "wedge", "cpu", "note")}


class CpuClock:
    """CPU seconds of this process plus its finished children (peers run as subprocesses)."""

    def __enter__(self):
        self.t0 = self._now()
        return self

    @staticmethod
    def _now() -> float:
        me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime

    def __exit__(self, *exc):
        self.seconds = self._now() - self.t0

    def elapsed(self) -> float:
        return self._now() - self.t0


# --------------------------------------------------------------------------------------------
# data and scoring
# --------------------------------------------------------------------------------------------
@dataclass
class Sample:
    name: str
    truth: np.ndarray
    full: np.ndarray
    half0: np.ndarray
    half1: np.ndarray
    tilt_min: float
    tilt_max: float
    slab: tuple[int, int]
    pixel_size: float
    fbp_cpu: float


def make_data(name: str, shape) -> Sample:
    from napari_deepdewedge.core.reconstruct.halves import split_even_odd
    from napari_deepdewedge.core.io.mrc import TiltSeries
    from napari_deepdewedge.core.io.angles import angles_from_range
    from napari_deepdewedge.core.evaluate.phantom import make_phantom, simulate_tilt_series, slab_extent
    from napari_deepdewedge.core.reconstruct.fbp import fbp

    (tmin, tmax, step), snr, slab_fraction, density = PHANTOMS[name]
    angles = angles_from_range(tmin, tmax, step)
    truth = make_phantom(shape, SEED, pixel_size=10.0, slab_fraction=slab_fraction, particle_density=density)
    series = TiltSeries(simulate_tilt_series(truth, angles, snr=snr, seed=SEED + 1), angles, pixel_size=10.0)
    even, odd = split_even_odd(series)
    with CpuClock() as clock:
        full = fbp(series.data, series.angles, shape[0])
    half0, half1 = fbp(even.data, even.angles, shape[0]), fbp(odd.data, odd.angles, shape[0])
    return Sample(name, truth, full, half0, half1, float(tmin), float(tmax), slab_extent(shape, slab_fraction),
                  10.0, clock.seconds)


def score(name: str, vol: np.ndarray, sample: Sample, cpu: float | None, note: str = "") -> Row:
    from napari_deepdewedge.core.evaluate.metrics import cc, fsc, fsc_crossing, wedge_correlation

    z0, z1 = sample.slab
    f, c = fsc(vol, sample.truth, voxel_size=sample.pixel_size)
    return Row(name, cc(vol[z0:z1], sample.truth[z0:z1]), fsc_crossing(f, c, 0.143),
               wedge_correlation(vol, sample.truth, sample.tilt_min, sample.tilt_max), cpu, note, vol)


def gaussian_lowpass(vol: np.ndarray, sigma: float) -> np.ndarray:
    """Isotropic Gaussian blur with standard deviation ``sigma`` voxels (periodic, via FFT)."""
    k = np.meshgrid(*[np.fft.fftfreq(n) for n in vol.shape[:-1]], np.fft.rfftfreq(vol.shape[-1]), indexing="ij")
    spec = np.fft.rfftn(vol.astype(np.float64)) * np.exp(-2 * np.pi**2 * sigma**2 * sum(x**2 for x in k))
    return np.fft.irfftn(spec, s=vol.shape, axes=(0, 1, 2)).astype(np.float32)


def best_gaussian(vol, sample: Sample, sigmas=(0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0)):
    """(blurred volume, σ) with the best CC in the slab against the ground truth (an oracle)."""
    from napari_deepdewedge.core.evaluate.metrics import cc

    z0, z1 = sample.slab
    best = max(((cc(gaussian_lowpass(vol, s)[z0:z1], sample.truth[z0:z1]), s) for s in sigmas))
    return gaussian_lowpass(vol, best[1]), best[1]


# --------------------------------------------------------------------------------------------
# ours
# --------------------------------------------------------------------------------------------
def update_every(epochs: int) -> int:
    """Wedge updates every 10 epochs (the default) — or twice per run in runs shorter than 20."""
    return min(10, max(1, epochs // 2))


def fit_ours(sample: Sample, size, out_dir: Path, *, cpu_limit: float | None = None, epochs=None, **overrides):
    """Fit ours; returns (best checkpoint path, fit CPU seconds, epochs done)."""
    from napari_deepdewedge.core.fit.config import FitConfig
    from napari_deepdewedge.core.fit.loop import FitFinished, fit_iter

    _, s, ch, depth, batch, n_epochs = size
    cfg = FitConfig(subtomo_size=s, channels=ch, depth=depth, batch_size=batch, epochs=epochs or n_epochs,
                    tilt_min=sample.tilt_min, tilt_max=sample.tilt_max, device="cpu", out_dir=str(out_dir),
                    voxel_size=(sample.pixel_size,) * 3, seed=0, checkpoint_every=0,
                    **{"update_every": update_every(n_epochs), **overrides})
    with CpuClock() as clock:
        stop = (lambda: clock.elapsed() >= cpu_limit) if cpu_limit else None
        finished = [ev for ev in fit_iter(sample.half0, sample.half1, cfg, should_stop=stop)
                    if isinstance(ev, FitFinished)][-1]
    return finished.best_path or finished.latest_path, clock.seconds, finished.epochs_done


def refine_ours(checkpoint, sample: Sample, **kw):
    from napari_deepdewedge.core.refine.tomogram import refine_halves

    with CpuClock() as clock:
        refined = refine_halves(checkpoint, sample.half0, sample.half1, device="cpu", batch_size=4, **kw).refined
    return refined, clock.seconds


def ours_rows(sample: Sample, size, work: Path, ablations, equal_time_cpu=None, full_size=False) -> list[Row]:
    rows = []

    def run(label, note="", refine_kw=None, **fit_kw):
        ckpt, fit_cpu, done = fit_ours(sample, size, work / label, **fit_kw)
        vol, ref_cpu = refine_ours(ckpt, sample, **(refine_kw or {}))
        rows.append(score(label, vol, sample, fit_cpu + ref_cpu, note or f"{done} epochs"))
        return ckpt, fit_cpu, vol

    ckpt, fit_cpu, _ = run("ours")
    if equal_time_cpu:
        run("ours @ original's CPU time", cpu_limit=equal_time_cpu, epochs=10 * size[5])
    if "matching" in ablations:
        vol, ref_cpu = refine_ours(ckpt, sample, match_resampling=False)
        rows.append(score("ours, no matching filter", vol, sample, fit_cpu + ref_cpu, "same fit"))
        blurred, sigma = best_gaussian(vol, sample)
        rows.append(score("ours unfiltered + best Gaussian (control)", blurred, sample, fit_cpu + ref_cpu,
                          f"same fit, σ={sigma:g}"))
    if "bspline" in ablations:
        run("ours, cubic B-spline + its matching", resampling="bspline3")
    if "valupdate" in ablations:
        run("ours, validation cubes not updated", update_val_wedges=False)
    if "residual" in ablations:
        run("ours, residual on", residual=True)
        if full_size:
            run("ours, 200 epochs", epochs=200)
            run("ours, residual on, 200 epochs", residual=True, epochs=200)
    return rows


# --------------------------------------------------------------------------------------------
# peers (subprocesses in their own venvs)
# --------------------------------------------------------------------------------------------
def peer_python(key: str) -> str | None:
    venv, _ = PEER_VENVS[key]
    py = Path(os.environ.get(f"DDW_BENCH_{key.upper()}_VENV", venv)) / "bin" / "python"
    return str(py) if py.exists() else None


def not_run(name: str, why: str) -> Row:
    print(f"  {name}: not run — {why}", flush=True)
    return Row(name, note=f"not run: {why}")


def run_peer_script(python: str, script: str, args: list[str], threads: int) -> None:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.pop("PYTHONPATH", None)  # our package must not leak into the peer's environment
    proc = subprocess.run([python, str(HERE / "peers" / script), *args, "--threads", str(threads)], env=env,
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.returncode != 0:
        raise RuntimeError(f"{script} failed (exit {proc.returncode}): {proc.stderr.strip()[-600:]}")


def topaz_row(sample: Sample, work: Path, threads: int) -> Row:
    name = "Topaz-Denoise 3D (pretrained)"
    python = peer_python("topaz")
    if python is None:
        return not_run(name, f"no venv; set it up with `{PEER_VENVS['topaz'][1]}`")
    src, dst = work / "topaz_in.npy", work / "topaz_out.npy"
    np.save(src, sample.full)
    try:
        with CpuClock() as clock:
            run_peer_script(python, "topaz_denoise3d.py", ["--input", str(src), "--output", str(dst)], threads)
    except RuntimeError as exc:
        return not_run(name, str(exc))
    return score(name, np.load(dst), sample, clock.seconds, "on the full FBP")


def n2n_row(sample: Sample, size, work: Path, threads: int) -> Row:
    name = "Noise2Noise 3D, no wedge filling (CAREamics)"
    python = peer_python("n2n")
    if python is None:
        return not_run(name, f"no venv; set it up with `{PEER_VENVS['n2n'][1]}`")
    paths = [work / f"n2n_{k}.npy" for k in ("half0", "half1", "out")]
    np.save(paths[0], sample.half0)
    np.save(paths[1], sample.half1)
    _, s, ch, depth, batch, epochs = size
    try:
        with CpuClock() as clock:
            run_peer_script(python, "careamics_n2n.py",
                            ["--half0", str(paths[0]), "--half1", str(paths[1]), "--output", str(paths[2]),
                             "--patch", str(s), "--epochs", str(epochs), "--batch", str(batch),
                             "--depth", str(depth), "--channels", str(ch), "--work", str(work / "careamics")],
                            threads)
    except RuntimeError as exc:
        return not_run(name, str(exc))
    return score(name, np.load(paths[2]), sample, clock.seconds, f"{epochs} epochs")


def ours_n2n_row(sample: Sample, size, work: Path) -> Row:
    """Substitute for a cryoCARE-kind denoiser: our U-Net with a plain Noise2Noise loss (no wedge
    term: wedge_weight 0) and no wedge updates."""
    ckpt, fit_cpu, done = fit_ours(sample, size, work / "ours_n2n", wedge_weight=0.0, update_every=0)
    vol, ref_cpu = refine_ours(ckpt, sample)
    return score("our U-Net, plain N2N loss, no wedge term", vol, sample, fit_cpu + ref_cpu, f"{done} epochs")


def ddw_rows(sample: Sample, size, ddw_path: str | None, threads: int) -> tuple[list[Row], float | None]:
    name = "original DeepDeWedge"
    if not ddw_path:
        return [not_run(name, "no --ddw-path (a checkout of MLI-lab/DeepDeWedge; bash bench/peers/setup_ddw.sh DIR)")], None
    try:
        from peers.ddw import OriginalDDW
    except ImportError as exc:
        return [not_run(name, f"bench/peers/ddw.py missing ({exc})")], None
    _, s, ch, depth, batch, epochs = size
    try:
        with OriginalDDW(ddw_path, threads=threads) as ddw:
            with CpuClock() as fit_clock:
                run = ddw.fit(sample.half0, sample.half1, subtomo_size=s, channels=ch, depth=depth, batch_size=batch,
                              epochs=epochs, tilt_range=(sample.tilt_min, sample.tilt_max), val_fraction=0.1,
                              update_every=update_every(epochs), seed=0)
            with CpuClock() as ref_clock:
                r0, _ = ddw.refine(run, sample.half0, batch_size=batch)
                r1, _ = ddw.refine(run, sample.half1, batch_size=batch)
    except (RuntimeError, SystemExit, OSError) as exc:
        return [not_run(name, str(exc)[:300])], None
    note = f"{epochs} epochs" + (" (symmetric wedge of the same width: its only model)"
                                 if abs(sample.tilt_min + sample.tilt_max) > 1e-6 else "")
    return [score(name, 0.5 * (r0 + r1), sample, fit_clock.seconds + ref_clock.seconds, note)], fit_clock.seconds


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
def print_table(phantom: str, rows: list[Row]) -> None:
    print(f"\n{phantom}: {'':44s} CC slab   FSC0.143 Å  wedge CC   CPU s  note")
    for r in rows:
        if r.cc_slab is None:
            print(f"  {r.name:52s} {'—':>7s} {'—':>10s} {'—':>10s} {'—':>7s}  {r.note}")
        else:
            cpu = "" if r.cpu is None else f"{r.cpu:7.1f}"
            print(f"  {r.name:52s} {r.cc_slab:7.3f} {r.fsc143:10.1f} {r.wedge:10.3f} {cpu:>7s}  {r.note}")


def markdown(results: dict) -> str:
    """The docs/benchmarks.md table of a run's JSON: one block of rows per phantom."""
    run = results["run"]
    lines = [f"Run {run['date']} on {run['machine']} ({run['cpu_count']} cores, {run['threads']} threads), "
             f"{run['size']} size: {'×'.join(map(str, run['shape']))} voxels, s = {run['subtomo_size']}, "
             f"{run['channels']} channels, depth {run['depth']}, batch {run['batch']}, {run['epochs']} epochs.", "",
             "| phantom | method | CC in slab | FSC 0.143 (Å) | in-wedge CC | CPU s | note |",
             "|---|---|---|---|---|---|---|"]
    for name, ph in results["phantoms"].items():
        label = f"{name} ({ph['tilt_range'][0]:g}…{ph['tilt_range'][1]:g}°)"
        for method, r in ph["rows"].items():
            if r["cc_slab"] is None:
                lines.append(f"| {label} | {method} | — | — | — | — | {r['note']} |")
            else:
                lines.append(f"| {label} | {method} | {r['cc_slab']:.3f} | {r['fsc143']:.1f} | {r['wedge']:.3f} | "
                             f"{r['cpu']:.0f} | {r['note']} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=tuple(SIZES), default="full")
    ap.add_argument("--quick", action="store_true", help="--size quick")
    ap.add_argument("--epochs", type=int, default=None, help="override the size's epochs (all learners)")
    ap.add_argument("--phantoms", default=",".join(PHANTOMS), help=f"comma list of {', '.join(PHANTOMS)}")
    ap.add_argument("--peers", default="topaz,n2n,ddw", help="comma list of topaz, n2n, ddw (or 'none')")
    ap.add_argument("--ablations", default="", help=f"comma list of {', '.join(ABLATIONS)}, or 'all'")
    ap.add_argument("--ablations-on", default="sym60", help="phantoms the ablations run on (comma list or 'all')")
    ap.add_argument("--equal-time", action="store_true", help="also ours for the original's fit CPU time")
    ap.add_argument("--n2n-substitute", action="store_true",
                    help="also (or, without CAREamics, instead) our U-Net with a plain N2N loss")
    ap.add_argument("--ddw-path", default=None, help="a checkout of MLI-lab/DeepDeWedge (bench/peers/setup_ddw.sh)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    ap.add_argument("--figure", default=None, help="PNG of central slices and Fourier x–z slices (first phantom)")
    ap.add_argument("--render", default=None, metavar="JSON", help="print a run's --json as a Markdown table; exit")
    args = ap.parse_args(argv)
    if args.render:
        print(markdown(json.loads(Path(args.render).read_text())))
        return {}
    import torch

    torch.set_num_threads(args.threads)
    size_name = "quick" if args.quick else args.size
    size = SIZES[size_name]
    if args.epochs:
        size = size[:5] + (args.epochs,)
    phantoms = [p for p in args.phantoms.split(",") if p]
    peers = set() if args.peers == "none" else set(args.peers.split(","))
    ablations = set(ABLATIONS) if args.ablations == "all" else {a for a in args.ablations.split(",") if a}
    abl_on = set(PHANTOMS) if args.ablations_on == "all" else set(args.ablations_on.split(","))
    for bad in [p for p in phantoms if p not in PHANTOMS] + [a for a in ablations if a not in ABLATIONS]:
        ap.error(f"unknown phantom or ablation '{bad}'")
    shape, s, ch, depth, batch, epochs = size
    header = dict(date=datetime.datetime.now().isoformat(timespec="minutes"), machine=platform.platform(),
                  cpu_count=os.cpu_count(), threads=args.threads, size=size_name, shape=list(shape), subtomo_size=s,
                  channels=ch, depth=depth, batch=batch, epochs=epochs, seed=SEED)
    print(f"quality vs peers: {size_name} size {shape}, s={s}, {ch} channels, depth {depth}, batch {batch}, "
          f"{epochs} epochs, {args.threads} threads, {header['date']}", flush=True)
    results, volumes = {"run": header, "phantoms": {}}, {}
    work = Path(tempfile.mkdtemp(prefix="ddw-quality-peers-"))
    try:
        for name in phantoms:
            t = time.perf_counter()
            sample = make_data(name, shape)
            print(f"[{name}] data in {time.perf_counter() - t:.0f} s", flush=True)
            pw = work / name
            pw.mkdir()
            rows = [score("FBP", sample.full, sample, sample.fbp_cpu)]
            with CpuClock() as clock:
                gauss, sigma = best_gaussian(sample.full, sample)
            rows.append(score("best Gaussian low-pass of FBP (oracle σ)", gauss, sample, sample.fbp_cpu + clock.seconds,
                              f"σ={sigma:g}"))
            if "topaz" in peers:
                rows.append(topaz_row(sample, pw, args.threads))
            if "n2n" in peers:
                row = n2n_row(sample, size, pw, args.threads)
                rows.append(row)
                if args.n2n_substitute or row.cc_slab is None:
                    rows.append(ours_n2n_row(sample, size, pw))
            ddw_cpu = None
            if "ddw" in peers:
                more, ddw_cpu = ddw_rows(sample, size, args.ddw_path, args.threads)
                rows += more
            rows += ours_rows(sample, size, pw, ablations if name in abl_on else set(),
                              equal_time_cpu=ddw_cpu if args.equal_time else None, full_size=size_name == "full")
            print_table(name, rows)
            results["phantoms"][name] = {"tilt_range": [sample.tilt_min, sample.tilt_max], "slab": list(sample.slab),
                                         "rows": {r.name: r.figures() for r in rows}}
            if args.figure and not volumes:
                volumes = {"truth": sample.truth, "sample": sample, "rows": rows}
            if args.json:  # after every phantom: a long run keeps what it measured
                Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.figure and volumes:
        from quality_figure import slice_figure

        slice_figure(volumes["sample"], volumes["rows"], args.figure, header)
        print(f"figure: {args.figure}")
    return results


if __name__ == "__main__":
    main()
