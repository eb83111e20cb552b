#!/usr/bin/env bash
# CAREamics (Noise2Noise 3D, the cryoCARE kind: no wedge filling) in its own virtual
# environment, CPU torch first. Used by bench/quality_peers.py through bench/peers/careamics_n2n.py.
set -euo pipefail
VENV=${1:-/work/peers/careamics-venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q "torch==2.13.0"
"$VENV/bin/pip" install -q careamics "torch==2.13.0"  # keep the CPU wheel (else pip pulls a CUDA torch)
"$VENV/bin/python" -c "import careamics, torch; print('careamics', careamics.__version__, 'torch', torch.__version__)"
