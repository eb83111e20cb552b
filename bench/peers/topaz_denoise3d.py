"""Topaz-Denoise 3D with its packaged pretrained weights, run inside the Topaz venv
(bench/peers/setup_topaz.sh) by bench/quality_peers.py.

Why a wrapper: topaz-em's ``topaz denoise3d`` command fails on a torchvision mismatch at import,
and ``topaz.denoising.models.load_model`` resolves the weights through a package-resource path
that does not exist in the installed package. This script builds Topaz's own 3D U-Net class
(``UDenoiseNet3D(base_width=7)``, what ``load_model`` builds for these weights), loads the
``.sav`` state dict shipped in ``topaz/pretrained/denoise/`` with ``weights_only=True`` and runs
Topaz's own patch-wise ``Denoise3D.denoise`` (the model wrapped in ``nn.Sequential``: its
constructor accepts only that exact type or ``nn.Module`` itself), which standardizes the volume
and undoes it afterwards. Patches 64 with 16 voxels of padding here: its defaults (96 and 48)
make 192³ inputs, far slower on CPU than our small volumes need (the padding only hides seams).

    python topaz_denoise3d.py --input vol.npy --output out.npy [--model unet-3d-10a] [--threads N]
"""
import argparse
import sys
from pathlib import Path

import numpy as np
import torch

WEIGHTS = {"unet-3d-10a": "unet-3d-10a-v0.2.4.sav", "unet-3d-20a": "unet-3d-20a-v0.2.4.sav"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--model", choices=tuple(WEIGHTS), default="unet-3d-10a")
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--padding", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import topaz
    from topaz.denoise import Denoise3D
    from topaz.denoising.models import UDenoiseNet3D

    weights = Path(topaz.__file__).parent / "pretrained" / "denoise" / WEIGHTS[args.model]
    if not weights.exists():
        sys.exit(f"error: the packaged weights {weights} are missing; reinstall topaz-em")
    model = UDenoiseNet3D(base_width=7)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.eval()
    vol = np.load(args.input).astype(np.float32)
    # Denoise accepts a module only if its type is exactly nn.Module or nn.Sequential: wrap it
    out = Denoise3D(torch.nn.Sequential(model), use_cuda=False, dims=3).denoise(vol, patch_size=args.patch, padding=args.padding, verbose=False)
    np.save(args.output, np.asarray(out, dtype=np.float32))


if __name__ == "__main__":
    main()
