#!/usr/bin/env bash
# One entry point for a fresh machine: installs what is missing, then runs the job.
#   bash scripts/dev.sh demo   # the main job on built-in sample data
#   bash scripts/dev.sh test   # the test suite (under a virtual display)
#   bash scripts/dev.sh setup  # only install
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

debian_packages=(xvfb xauth libgl1 libegl1 libxkbcommon-x11-0 libxcb-cursor0 libxcb-icccm4
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-shape0
  libxcb-xinerama0 libxcb-xfixes0 libdbus-1-3 libfontconfig1)

install_debian() {
  command -v dpkg >/dev/null 2>&1 || return 0
  local missing=()
  for pkg in "${debian_packages[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages for Qt and a virtual display: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

install_python() {
  # Without a GPU, take the CPU build of torch first; a bare torch requirement would pull a
  # multi-GB CUDA build. With an NVIDIA GPU, pip resolves torch>=2.2 from pyproject.toml.
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
      echo "NVIDIA GPU found: installing torch with CUDA"
    else
      echo "no GPU: installing the CPU build of torch"
      "$PY" -m pip install -q "torch==2.13.0"
    fi
  fi
  "$PY" -m pip install -q -e ".[testing]"
}

run_tests() {
  export QT_QPA_PLATFORM=${QT_QPA_PLATFORM:-xcb}
  if [ -z "${DISPLAY:-}" ] && command -v xvfb-run >/dev/null 2>&1; then
    xvfb-run -a -s "-screen 0 1600x1000x24" "$PY" -m pytest -q "$@"
  else
    "$PY" -m pytest -q "$@"
  fi
}

case "${1:-}" in
  setup) install_debian; install_python ;;
  test) shift; install_debian; install_python; run_tests "$@" ;;
  demo)
    shift; install_debian; install_python
    if [ -n "${DISPLAY:-}${WAYLAND_DISPLAY:-}" ]; then
      deepdewedge napari "$@"          # a display: napari with the sample and the dock
    else
      # headless: the whole pipeline; demo_out/ is this script's own output, so a rerun replaces it
      deepdewedge demo --out "${DEMO_OUT:-demo_out}" --overwrite "$@"
    fi ;;
  *) echo "usage: bash scripts/dev.sh {demo|test|setup} [extra args]" >&2; exit 2 ;;
esac
