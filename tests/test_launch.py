"""`deepdewedge napari` (the README's main job when a display is there) opens the sample and
the dock through napari's real plugin discovery."""
import os
import subprocess
import sys

import numpy as np
import pytest


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs a display: run under xvfb-run")
def test_napari_command_shows_sample_and_dock(tmp_path):
    png = tmp_path / "window.png"
    result = subprocess.run(
        [sys.executable, "-m", "napari_deepdewedge.cli", "napari", "--screenshot", str(png)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from PIL import Image

    image = np.asarray(Image.open(png).convert("L"), dtype=np.float32)
    assert image.shape[0] > 500 and image.shape[1] > 1000
    right = image[:, int(image.shape[1] * 0.77):]  # the dock column
    left = image[:, int(image.shape[1] * 0.3): int(image.shape[1] * 0.7)]  # the canvas
    assert right.std() > 10, "the dock looks blank"
    assert left.std() > 10, "the canvas shows no sample data"
