"""File and layer names: the one stem function every front end uses."""
from __future__ import annotations

import os
import re
from pathlib import PurePath

#: extensions of the MRC family (core.io.MRC_SUFFIXES) and OME-Zarr, dropped from names in any case
_EXTENSION = re.compile(r"\.(mrc|st|ali|rec|mrcs|map|zarr)$", re.IGNORECASE)
#: a trailing parity tag of a frame half: _EVN _ODD _even _odd, also after '.' or '-'
_PARITY = re.compile(r"[._-](evn|odd|even)$", re.IGNORECASE)


def stem_of(path_or_name) -> str:
    """``/data/TS_01_EVN.mrc`` → ``TS_01``; ``TS_01.st`` → ``TS_01``; ``"TS_01 odd"`` stays.

    Drops the folder, one MRC-family extension (``.mrc .st .ali .rec .mrcs .map``) or ``.zarr`` (any case)
    and one trailing parity tag (``_EVN _ODD _even _odd``, also with ``.`` or ``-``, any case).
    A name that would become empty is returned without the extension only.
    """
    name = PurePath(os.fspath(path_or_name)).name
    name = _EXTENSION.sub("", name)
    stripped = _PARITY.sub("", name)
    return stripped or name


def common_stem(a, b) -> str:
    """The stem shared by a frame-half pair: ``TS_01_EVN.mrc`` + ``TS_01_ODD.mrc`` → ``TS_01``.

    When the two stems differ, their longest common prefix (without trailing ``._-``); when
    there is none, the first stem.
    """
    sa, sb = stem_of(a), stem_of(b)
    if sa == sb:
        return sa
    prefix = os.path.commonprefix([sa, sb]).rstrip("._- ")
    return prefix or sa
