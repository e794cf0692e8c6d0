"""The distribution: one `ppmtrack` namespace in site-packages (no top-level `engine`, `pipelines`, `tracker`),
a public API at `ppmtrack`, working from an editable install and from a wheel in a fresh environment."""

from __future__ import annotations

import importlib.util
import os
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_public_api_and_editable_layout():
    import ppmtrack
    from ppmtrack import Engine, PpmtrackError, read_labels, read_tracks, track_video
    from ppmtrack.engine.api import Engine as EngineClass
    from ppmtrack.engine.errors import PpmtrackError as RootError
    from ppmtrack.pipelines.io.csv import read_tracks_csv
    from ppmtrack.pipelines.io.formats import read_labels as read_any_labels
    from ppmtrack.pipelines.track import track_video as run

    # the public names are the implementations themselves, not wrappers or stand-ins
    assert (Engine, PpmtrackError, read_labels, read_tracks, track_video) == (
        EngineClass, RootError, read_any_labels, read_tracks_csv, run)
    assert all(getattr(ppmtrack, name) is not None for name in ppmtrack.__all__)
    # the repository's top-level folders are the subpackages
    for name in ("engine", "pipelines", "tracker"):
        module = importlib.import_module(f"ppmtrack.{name}")
        assert Path(module.__file__).resolve().parent == ROOT / name
    assert Path(ppmtrack.__file__).resolve() == ROOT / "__init__.py"


def test_user_errors_derive_from_the_root_class():
    from ppmtrack import PpmtrackError
    from ppmtrack.engine import EngineFileError, ModelLoadError
    from ppmtrack.pipelines.labels import LabelsError
    from ppmtrack.pipelines.sources import SourceError
    from ppmtrack.pipelines.track import OutputError

    for error in (EngineFileError, ModelLoadError, LabelsError, SourceError, OutputError):
        assert issubclass(error, PpmtrackError), error


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_environment_under_one_namespace(tmp_path):
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed in this environment (needed to build the wheel offline)")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    (wheel,) = wheels.glob("ppmtrack-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "ppmtrack" in tops and not tops & {"engine", "pipelines", "tracker", "tests", "bench", "samples"}, tops
    assert {"ppmtrack/__init__.py", "ppmtrack/engine/api.py", "ppmtrack/pipelines/cli.py",
            "ppmtrack/tracker/kalman.py", "ppmtrack/pipelines/io/csv.py"} <= set(names)

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   cwd=tmp_path, env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    # the dependencies (torch, diffusers, ...) come from this environment's site-packages, appended after the
    # fresh environment's own, so that ppmtrack itself can only come from the wheel
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "zz_parent_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    check = (
        "import importlib.util, ppmtrack\n"
        "from ppmtrack import Engine, track_video, read_labels, read_tracks, PpmtrackError\n"
        "import ppmtrack.engine, ppmtrack.pipelines.cli, ppmtrack.tracker\n"
        "print(ppmtrack.__file__)\n"
        "print([n for n in ('engine', 'pipelines', 'tracker') if importlib.util.find_spec(n)])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([str(python), "-c", check], check=True, capture_output=True, text=True, cwd=tmp_path,
                         env=env).stdout.splitlines()
    assert Path(out[0]).resolve().is_relative_to(env_dir.resolve()), out
    assert out[1] == "[]", out  # nothing generic at the top level
    help_text = subprocess.run([str(env_dir / "bin" / "ppmtrack"), "--help"], check=True, capture_output=True,
                               text=True, cwd=tmp_path, env=env).stdout
    assert "usage: ppmtrack" in help_text
