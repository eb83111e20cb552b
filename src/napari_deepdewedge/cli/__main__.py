"""``python -m napari_deepdewedge.cli`` (what torchrun launches)."""
import sys

from . import main

sys.exit(main())
