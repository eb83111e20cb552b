"""A tiny fit, run either in one process or under torchrun (tests/test_fitting.py, DDP test).

Usage under torchrun:  python -m torch.distributed.run --standalone --nproc-per-node 2 ddp_worker.py OUT
Rank 0 writes OUT/result.pt with the per-epoch losses and the final weights.
"""
import sys
from pathlib import Path

import numpy as np
import torch


def tiny_halves(seed: int = 7, shape=(24, 40, 40)):
    """Two noisy copies of one smooth random volume (enough structure for a few steps)."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal(shape)
    spec = np.fft.rfftn(base)
    kz, ky, kx = np.meshgrid(np.fft.fftfreq(shape[0]), np.fft.fftfreq(shape[1]), np.fft.rfftfreq(shape[2]),
                             indexing="ij")
    smooth = np.fft.irfftn(spec * np.exp(-(kz**2 + ky**2 + kx**2) / (2 * 0.08**2)), s=shape, axes=(0, 1, 2))
    smooth /= smooth.std()
    t0 = smooth + 0.7 * rng.standard_normal(shape)
    t1 = smooth + 0.7 * rng.standard_normal(shape)
    return t0.astype(np.float32), t1.astype(np.float32)


def tiny_config(out_dir=None, **kw):
    from napari_deepdewedge.core.fit.config import FitConfig

    # 24×40×40 with E = 24 and strides 8 → 1·3·3 = 9 cubes: 7 fitting + 2 validation; batch 3 →
    # steps of 3, 3, 1 (split 2/1, 2/1 and 1/0 over two ranks: rank 1 joins the last one empty)
    base = dict(subtomo_size=16, channels=4, depth=2, epochs=2, batch_size=3, strides=(8, 8, 8),
                val_fraction=0.2, update_every=1, validate_every=1, checkpoint_every=0, device="cpu", seed=3,
                out_dir=None if out_dir is None else str(out_dir))
    base.update(kw)
    return FitConfig(**base)


class fp32_on_cpu:
    """Pin CPU autocast off (fp32) while fitting: bf16 autocast is chosen by a timed probe in
    each process (core.perf.probe_bf16_cpu), so on a CPU with bf16 kernels the ranks and the
    reference could otherwise run in different precisions; this test is about the split of
    the work, not the precision."""

    def __enter__(self):
        from napari_deepdewedge.core import perf

        self._probe = perf.probe_bf16_cpu
        perf.probe_bf16_cpu = lambda *a, **k: perf.Bf16Probe(supported=False)
        return self

    def __exit__(self, *exc):
        from napari_deepdewedge.core import perf

        perf.probe_bf16_cpu = self._probe
        return False


def run(out_dir=None, emulate_ranks=1, **kw):
    from napari_deepdewedge.core.fit.loop import EpochDone, StepDone, fit_iter

    t0, t1 = tiny_halves()
    epochs, steps = [], []
    with fp32_on_cpu():
        for ev in fit_iter(t0, t1, tiny_config(out_dir, **kw), emulate_ranks=emulate_ranks):
            if isinstance(ev, EpochDone):
                epochs.append((ev.fit_loss, ev.val_loss))
            elif isinstance(ev, StepDone):
                steps.append(ev.loss)
    return epochs, steps


def main(out):
    from napari_deepdewedge.core.model.checkpoint import load_checkpoint
    from napari_deepdewedge.core.fit.loop import distributed_info, init_distributed_from_env

    import napari_deepdewedge.core.model.unet as unet

    torch.set_num_threads(1)
    rank, world = init_distributed_from_env()
    assert world == 2, world
    assert distributed_info() == (rank, world)
    nets = []

    class Recorded(unet.UNet3D):  # keep a handle on this rank's network
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            nets.append(self)

    unet.UNet3D = Recorded
    out = Path(out)
    epochs, steps = run(out_dir=out / "run")
    own = {k: v.detach().clone() for k, v in nets[-1].state_dict().items()}
    torch.save(own, out / f"rank{rank}.pt")
    if rank == 0:
        state = load_checkpoint(out / "run" / "latest.pt")["state_dict"]
        torch.save({"epochs": epochs, "steps": steps, "state_dict": state, "world": world}, out / "result.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
