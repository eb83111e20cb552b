"""Runs INSIDE the original DeepDeWedge's virtual environment (bench/peers/setup_ddw.sh); the
napari-deepdewedge side talks to it through :mod:`bench.peers.ddw` (files + one JSON job).

    <venv>/bin/python bench/peers/ddw_runner.py JOB.json

The job names the checkout (``ddw_path``), a working directory and what to do:

``fit``     extract sub-tomograms from two half tomograms (``.npy``) with the original's own
            ``extract_subtomos`` into the directory layout its ``SubtomoDataset`` reads, then fit
            its ``Unet3D`` with its ``masked_loss`` and Adam in a plain loop (its trainer needs
            a GPU and PyTorch Lightning's machinery; the loop does what its ``LitUnet3D`` does:
            model-input normalization from the data loader at the start and after every wedge
            update, wedge updates every ``update_every`` epochs on un-rotated cubes). Stops
            after ``epochs`` epochs or ``steps`` optimizer steps. Writes the model's state dict
            at the end and at every epoch listed in ``snapshot_epochs``; returns per-step and
            per-epoch wall/CPU times and losses.
``refine``  the original's ``_refine_single_tomogram`` on a tomogram with a saved model.

Only the original's functions and classes do the work; this file is the glue.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path


def _setup(job):
    sys.path.insert(0, job["ddw_path"])
    import torch

    torch.set_num_threads(int(job.get("threads") or os.cpu_count() or 1))
    return torch


def _write_cubes(torch, half0, half1, subdir: Path, s: int, strides, val_fraction: float, seed: int):
    """Cubes as the original's ``prepare_data`` lays them out (``fitting_subtomos`` and
    ``val_subtomos``, each with ``subtomo0/i.pt`` and ``subtomo1/i.pt``), made with its
    ``extract_subtomos`` (enlarged for rotating)."""
    import random

    from ddw.utils.subtomos import extract_subtomos

    t0 = torch.from_numpy(half0).float()
    t1 = torch.from_numpy(half1).float()
    kw = dict(subtomo_size=s, subtomo_extraction_strides=strides, enlarge_subtomos_for_rotating=True,
              pad_before_subtomo_extraction=False)
    c0, _ = extract_subtomos(tomo=t0, **kw)
    c1, _ = extract_subtomos(tomo=t1, **kw)
    n_val = math.ceil(len(c0) * val_fraction) if val_fraction > 0 else 0
    val_ids = set(random.Random(seed).sample(range(len(c0)), n_val)) if n_val else set()
    dirs = {}
    for name in ("fitting_subtomos", "val_subtomos"):
        for h in ("subtomo0", "subtomo1"):
            (subdir / name / h).mkdir(parents=True, exist_ok=True)
        dirs[name] = subdir / name
    counts = {"fitting_subtomos": 0, "val_subtomos": 0}
    for i in range(len(c0)):
        name = "val_subtomos" if i in val_ids else "fitting_subtomos"
        k = counts[name]
        torch.save(c0[i].clone(), dirs[name] / "subtomo0" / f"{k}.pt")
        torch.save(c1[i].clone(), dirs[name] / "subtomo1" / f"{k}.pt")
        counts[name] += 1
    return dirs, counts


def _update_wedges(torch, unet, dataset, mw_angle, depth, batch_size):
    """What the original's ``LitUnet3D.update_subtomo_missing_wedges`` does, with its functions:
    un-rotated model inputs, zero-padded to a multiple of 2**depth, refined, the prediction's
    missing-wedge frequencies written into the stored cube0 files."""
    from ddw.utils.fourier import apply_fourier_mask_to_tomo
    from ddw.utils.missing_wedge import get_missing_wedge_mask

    dataset.rotate_subtomos = False
    try:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=0)
        dim = dataset[0]["model_input"].shape[-1]
        f = 2 ** depth
        pad = f * math.ceil(dim / f) - dim
        mw = get_missing_wedge_mask(grid_size=3 * [dim + pad], mw_angle=mw_angle)
        with torch.no_grad():
            for batch in loader:
                x = torch.nn.functional.pad(batch["model_input"], (0, pad, 0, pad, 0, pad))
                ref = unet(x.unsqueeze(1)).squeeze(1)
                m = mw.repeat((x.shape[0], 1, 1, 1))
                x = apply_fourier_mask_to_tomo(x, m) + apply_fourier_mask_to_tomo(ref, 1 - m)
                for cube, path in zip(x[..., :dim, :dim, :dim], batch["subtomo0_file"]):
                    torch.save(cube.clone(), path)
    finally:
        dataset.rotate_subtomos = True


def _set_normalization(unet, loader, batches=None):
    from ddw.utils.normalization import get_avg_model_input_mean_and_std_from_dataloader

    loc, scale = get_avg_model_input_mean_and_std_from_dataloader(loader, batches=batches, verbose=False)
    unet.normalization_loc = loc
    unet.normalization_scale = scale
    return loc, scale


def fit(job: dict) -> dict:
    torch = _setup(job)
    import numpy as np

    from ddw.utils.masked_loss import masked_loss
    from ddw.utils.subtomo_dataset import SubtomoDataset
    from ddw.utils.unet import Unet3D

    work = Path(job["work_dir"])
    s, depth, B = int(job["subtomo_size"]), int(job["depth"]), int(job["batch_size"])
    half0, half1 = np.load(job["half0"]), np.load(job["half1"])
    if job.get("standardize", True):  # the original's standardize_full_tomos
        half0 = (half0 - half0.mean()) / half0.std()
        half1 = (half1 - half1.mean()) / half1.std()
    strides = job.get("strides") or [s, s, s]
    dirs, counts = _write_cubes(torch, half0, half1, work / "subtomos", s, strides, float(job.get("val_fraction", 0)),
                                int(job.get("seed", 0)))
    torch.manual_seed(int(job.get("seed", 0)))
    mw_angle = float(job["mw_angle"])
    fit_set = SubtomoDataset(subtomo_dir=str(dirs["fitting_subtomos"]), mw_angle=mw_angle, crop_subtomos_to_size=s)
    loader = torch.utils.data.DataLoader(fit_set, batch_size=B, shuffle=True, num_workers=int(job.get("num_workers", 0)))
    val_loader = None
    if counts["val_subtomos"]:
        val_set = SubtomoDataset(subtomo_dir=str(dirs["val_subtomos"]), mw_angle=mw_angle, crop_subtomos_to_size=s,
                                 deterministic_rotations=True)
        val_loader = torch.utils.data.DataLoader(val_set, batch_size=B, num_workers=0)
    unet = Unet3D(in_chans=1, out_chans=1, chans=int(job["channels"]), num_downsample_layers=depth,
                  drop_prob=0.0, residual=bool(job.get("residual", True)))
    opt = torch.optim.Adam(unet.parameters(), lr=float(job.get("lr", 4e-4)))
    t_norm = time.perf_counter()
    norm_batches = job.get("normalization_batches")  # None = all (what the original does)
    _set_normalization(unet, loader, norm_batches)
    norm_seconds = time.perf_counter() - t_norm
    max_epochs = int(job.get("epochs") or 10**9)
    max_steps = int(job.get("steps") or 10**12)
    update_every = int(job.get("update_every", 10))
    snapshots = set(int(e) for e in job.get("snapshot_epochs") or [])
    steps_log, epochs_log, saved = [], [], {}
    step_count = 0
    wall0, cpu0 = time.perf_counter(), time.process_time()
    unet.train()
    for epoch in range(1, max_epochs + 1):
        e_wall, e_cpu, losses = time.perf_counter(), time.process_time(), []
        for batch in loader:
            t_w, t_c = time.perf_counter(), time.process_time()
            out = unet(batch["model_input"].unsqueeze(1)).squeeze(1)
            loss = masked_loss(model_output=out, target=batch["model_target"], rot_mw_mask=batch["rot_mw_mask"],
                               mw_mask=batch["mw_mask"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            # the step's time includes loading + rotating its batch (the loader ran just before)
            steps_log.append({"n": int(out.shape[0]), "loss": losses[-1],
                              "wall_end": time.perf_counter() - wall0, "cpu_end": time.process_time() - cpu0,
                              "wall_compute": time.perf_counter() - t_w, "cpu_compute": time.process_time() - t_c})
            step_count += 1
            if step_count >= max_steps:
                break
        val_loss = None
        if val_loader is not None and job.get("validate", True):
            with torch.no_grad():
                vals = [float(masked_loss(model_output=unet(b["model_input"].unsqueeze(1)).squeeze(1),
                                          target=b["model_target"], rot_mw_mask=b["rot_mw_mask"], mw_mask=b["mw_mask"]))
                        * len(b["model_input"]) for b in val_loader]
            val_loss = sum(vals) / counts["val_subtomos"]
        if update_every and epoch % update_every == 0:
            _update_wedges(torch, unet, fit_set, mw_angle, depth, B)
            if val_loader is not None:
                _update_wedges(torch, unet, val_loader.dataset, mw_angle, depth, B)
            _set_normalization(unet, loader, norm_batches)
        epochs_log.append({"epoch": epoch, "fit_loss": float(np.mean(losses)) if losses else None,
                           "val_loss": val_loss, "wall": time.perf_counter() - e_wall,
                           "cpu": time.process_time() - e_cpu, "wall_end": time.perf_counter() - wall0,
                           "cpu_end": time.process_time() - cpu0})
        if epoch in snapshots:
            path = work / f"model_epoch{epoch:04d}.pt"
            torch.save(unet.state_dict(), path)
            saved[epoch] = str(path)
        if step_count >= max_steps:
            break
    final = work / "model_final.pt"
    torch.save(unet.state_dict(), final)
    return {"model": str(final), "snapshots": {str(k): v for k, v in saved.items()}, "steps": steps_log,
            "epochs": epochs_log, "n_fit": counts["fitting_subtomos"], "n_val": counts["val_subtomos"],
            "normalization_seconds": norm_seconds, "threads": torch.get_num_threads(),
            "unet": {"chans": int(job["channels"]), "num_downsample_layers": depth,
                     "residual": bool(job.get("residual", True))}}


def refine(job: dict) -> dict:
    torch = _setup(job)
    import mrcfile
    import numpy as np

    from ddw.refine_tomogram import _refine_single_tomogram
    from ddw.utils.unet import LitUnet3D

    work = Path(job["work_dir"])
    tomo = np.load(job["tomo"]).astype(np.float32)
    if job.get("standardize", True):
        tomo = (tomo - tomo.mean()) / tomo.std()
    path = work / "tomo.mrc"
    with mrcfile.new(path, overwrite=True) as f:
        f.set_data(tomo)
    state = torch.load(job["model"], weights_only=True)
    u = job["unet"]
    lit = LitUnet3D(unet_params=dict(in_chans=1, out_chans=1, chans=u["chans"],
                                     num_downsample_layers=u["num_downsample_layers"], drop_prob=0.0,
                                     residual=u["residual"]),
                    adam_params={"lr": 4e-4}, subtomo_dir=str(work))
    lit.unet.load_state_dict(state)
    lit.eval()
    wall, cpu = time.perf_counter(), time.process_time()
    out = _refine_single_tomogram(tomo_file=str(path), lightning_model=lit, subtomo_size=int(job["subtomo_size"]),
                                  subtomo_overlap=int(job["overlap"]), mw_angle=float(job["mw_angle"]),
                                  normalization_loc=float(lit.unet.normalization_loc),
                                  normalization_scale=float(lit.unet.normalization_scale),
                                  batch_size=int(job.get("batch_size", 1)), pbar_desc="original refine")
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    out_path = work / "refined.npy"
    np.save(out_path, out.numpy().astype(np.float32))
    return {"refined": str(out_path), "wall": wall, "cpu": cpu, "threads": torch.get_num_threads()}


if __name__ == "__main__":
    job = json.loads(Path(sys.argv[1]).read_text())
    result = {"fit": fit, "refine": refine}[job["task"]](job)
    Path(job["result"]).write_text(json.dumps(result))
