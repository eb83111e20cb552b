#!/usr/bin/env bash
# Make the virtual environment that bench/peer_ddw.py drives the original DeepDeWedge in.
#   bash bench/peers/setup_ddw.sh /path/to/DeepDeWedge [VENV_DIR]
# DIR is a checkout of the public MLI-lab/DeepDeWedge repository (not on the package index).
# VENV_DIR defaults to DIR/../ddw-venv. torch is installed FIRST (the CPU build when there is no
# NVIDIA GPU) so that none of the original's pins pulls a multi-GB CUDA build; then only what
# importing its U-Net, sub-tomogram dataset and masked loss needs (its package __init__ imports
# its CLI, hence typer and pytorch-lightning). Its own trainer is never used.
set -euo pipefail
DDW_DIR=$(cd "${1:?usage: setup_ddw.sh DEEPDEWEDGE_CHECKOUT [VENV_DIR]}" && pwd)
VENV=${2:-$(dirname "$DDW_DIR")/ddw-venv}
[ -f "$DDW_DIR/ddw/utils/unet.py" ] || { echo "error: $DDW_DIR is not a DeepDeWedge checkout (no ddw/utils/unet.py)"; exit 2; }
PY=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-$("$PY" -c "import torch; print(torch.__version__.split('+')[0])" 2>/dev/null || echo 2.13.0)}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
# the same torch as the project's environment (the CPU build where pip is set up to find it)
$PIP install "torch==$TORCH_VERSION"
# pkg_resources (which pytorch-lightning 1.8 imports) left setuptools in v81; torch 2.13 needs ≥ 77
$PIP install "torch==$TORCH_VERSION" "setuptools>=77,<81" numpy scipy "pytorch-lightning==1.8.0.post1" pyyaml tqdm typer typer-config mrcfile typing_extensions
"$VENV/bin/python" - "$DDW_DIR" <<'PY'
import sys
sys.path.insert(0, sys.argv[1])
from ddw.utils.unet import Unet3D  # noqa: F401
from ddw.utils.subtomo_dataset import SubtomoDataset  # noqa: F401
from ddw.utils.masked_loss import masked_loss  # noqa: F401
import torch
print(f"DeepDeWedge imports in {sys.executable} with torch {torch.__version__}")
PY
echo "venv ready: $VENV  (use: python bench/peer_ddw.py --ddw-path $DDW_DIR --ddw-python $VENV/bin/python)"
