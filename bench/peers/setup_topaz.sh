#!/usr/bin/env bash
# Topaz-Denoise 3D (package topaz-em) in its own virtual environment, CPU torch first so that
# pip does not pull a CUDA build; topaz-em itself with no dependency resolution beyond what
# its denoiser imports (numpy, scipy, pillow, future, h5py). Used by bench/quality_peers.py through
# bench/peers/topaz_denoise3d.py (its CLI and model loader do not work as installed here).
set -euo pipefail
VENV=${1:-/work/peers/topaz-venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q --no-deps topaz-em
"$VENV/bin/pip" install -q numpy scipy pillow future h5py  # what topaz.denoise imports
"$VENV/bin/python" -c "import topaz, torch; print('topaz', getattr(topaz, '__version__', '?'), 'torch', torch.__version__)"
