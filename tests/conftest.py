"""Shared fixtures.

napari's pytest plugin swaps in a TestPluginManager that refuses discovery, so tests that go
through napari's plugin system register this package's *installed* manifest explicitly.
"""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture
def ddw_plugin(npe2pm):
    """The real napari-deepdewedge manifest (from the installed distribution), registered."""
    with npe2pm.tmp_plugin(package="napari-deepdewedge") as plugin:
        yield plugin
