"""Shared fixtures.

napari's pytest plugin swaps in a TestPluginManager that refuses discovery, so tests that go
through napari's plugin system register this package's *installed* manifest explicitly.
"""
import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

PLUGIN = "napari-deepdewedge"


def dock(viewer, name):
    """Dock a manifest widget through napari's plugin system (as a user opens it from the
    Plugins menu); returns the widget. Test modules import it: ``from conftest import dock``."""
    return viewer.window.add_plugin_dock_widget(PLUGIN, name)[1]


@pytest.fixture
def ddw_plugin(npe2pm):
    """The real napari-deepdewedge manifest (from the installed distribution), registered."""
    with npe2pm.tmp_plugin(package="napari-deepdewedge") as plugin:
        yield plugin


@pytest.fixture(scope="module")
def one_torch_thread():
    """The networks of a module run on one thread (tiny networks are faster so, and immune to
    a busy shared machine); use with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
