#!/usr/bin/env bash
# CAREamics (Noise2Noise 3D, the cryoCARE kind: no wedge filling) in its own virtual
# environment. Used by bench/quality_peers.py through bench/peers/careamics_n2n.py.
# careamics 0.3.5 caps torchvision at 0.26, which needs torch 2.11 exactly: the local CPU wheel
# (2.13) cannot serve, so pip brings torch 2.11 from the registry — the CUDA build with its
# nvidia-* libraries (~6 GB venv); it runs on the CPU. Pinning torch==2.13 makes pip backtrack
# without end.
set -euo pipefail
VENV=${1:-/work/peers/careamics-venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q careamics
"$VENV/bin/python" -c "import careamics, torch; print('careamics', careamics.__version__, 'torch', torch.__version__)"
