"""The missing-cv2.ximgproc error gives the command that repairs it."""

import importlib.metadata

import pytest

from ppmtrack.engine import fara
from ppmtrack.engine.errors import PpmtrackError


def test_missing_ximgproc_names_the_forced_reinstall_of_the_installed_version(monkeypatch):
    import numpy as np

    installed = importlib.metadata.version(fara.CONTRIB_PACKAGE)
    monkeypatch.delattr(fara.cv2, "ximgproc")
    with pytest.raises(PpmtrackError) as caught:
        fara.seeds_superpixels(np.zeros((16, 16, 3), np.uint8))
    message = str(caught.value)
    assert (f"pip install --force-reinstall --no-deps opencv-contrib-python-headless=={installed}" in message)


def test_without_the_contrib_package_the_error_says_to_install_it(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(fara.importlib.metadata, "version", not_installed)
    assert fara.opencv_contrib_repair_message().endswith("pip install opencv-contrib-python-headless")
