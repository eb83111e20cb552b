#!/usr/bin/env bash
# One-command GPU benchmark: the original DeepDeWedge tutorial's job size (144 fitting cubes of
# 96³, 64 channels, batch 5; refinement of a 300×1000×1000 tomogram) on the first CUDA GPU, with
# AMP and channels-last. Prints samples/s, the epoch time extrapolated to 1000 epochs, the
# refinement time and peak GPU memory. Without a CUDA GPU it says so and exits 0.
#   bash bench/gpu.sh [--epochs N] [--device cuda:1]
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export PYTHONPATH="$HERE/../src${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=cuda
ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
exec "${PYTHON:-python}" "$HERE/fit.py" --device "$DEVICE" --tutorial "${ARGS[@]}"
