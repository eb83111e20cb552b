"""CAREamics Noise2Noise 3D (a cryoCARE-kind denoiser: no wedge filling), run inside the CAREamics
venv (bench/peers/setup_careamics.sh) by bench/quality_peers.py.

Fits CAREamics' own N2N configuration on the two half tomograms (half0 → half1 as input →
target), predicts both halves with tiling and writes their mean — the same use as cryoCARE.
Patch size, batch, epochs, U-Net depth and first-layer channels come from the benchmark, so
the learners share one fitting budget.

    python careamics_n2n.py --half0 a.npy --half1 b.npy --output out.npy --patch 32 --epochs 40 \\
        --batch 4 --depth 3 --channels 16 --work DIR [--threads N]
"""
import argparse

import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser()
    for name in ("half0", "half1", "output", "work"):
        ap.add_argument(f"--{name}", required=True)
    for name, default in (("patch", 32), ("epochs", 10), ("batch", 4), ("depth", 2), ("channels", 32),
                          ("threads", 1)):
        ap.add_argument(f"--{name}", type=int, default=default)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from careamics import CAREamist
    from careamics.config import create_advanced_n2n_config

    half0 = np.load(args.half0).astype(np.float32)
    half1 = np.load(args.half1).astype(np.float32)
    config = create_advanced_n2n_config(
        experiment_name="ddw_bench_n2n", data_type="array", axes="ZYX", patch_size=[args.patch] * 3,
        batch_size=args.batch, num_epochs=args.epochs, num_workers=0, seed=1, logger="none",
        model_params={"depth": args.depth, "num_channels_init": args.channels},
        augmentations=["x_flip", "y_flip"])  # no in-plane 90° turns: they would move the missing wedge
    careamist = CAREamist(config, work_dir=args.work, enable_progress_bar=False)
    careamist.train(train_data=half0, train_data_target=half1)
    tile = [min(n, 2 * args.patch) for n in half0.shape]
    tile = [t - t % 2 ** args.depth for t in tile]
    overlap = [max(2 ** args.depth, (t // 4) // 2 ** args.depth * 2 ** args.depth) for t in tile]
    outs = []
    for half in (half0, half1):
        preds, _ = careamist.predict(pred_data=half, data_type="array", axes="ZYX", tile_size=tuple(tile),
                                     tile_overlap=tuple(overlap))
        pred = preds[0]
        outs.append(np.asarray(pred, dtype=np.float32).reshape(half.shape))
    np.save(args.output, 0.5 * (outs[0] + outs[1]))


if __name__ == "__main__":
    main()
