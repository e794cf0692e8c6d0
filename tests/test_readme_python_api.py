"""The README's Python API example runs as written (tiny model, few frames), and CLI and Python name the
DeepLabCut scorer by the same rule."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
TINY_CONFIG = "AdaptConfig(steps=5, fg_steps=2, views_per_frame=2, batch_size=2, resolution=128)"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def readme_example() -> str:
    """The first Python block of the README's "Python API" section."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_public_api_is_what_the_readme_imports():
    import ppmtrack

    assert "from ppmtrack import Engine, track_video, read_labels, read_tracks" in readme_example()
    for name in ("Engine", "track_video", "read_labels", "read_tracks"):
        assert name in ppmtrack.__all__


@pytest.mark.slow  # adapts a tiny engine and tracks twice: ~20 s of CPU
def test_readme_python_example_runs_from_labels_to_a_movement_dataset(tmp_path, monkeypatch):
    pytest.importorskip("movement")
    pytest.importorskip("tables")
    code = readme_example()
    # Point the example at the bundled sample, the tiny model and a few frames; each piece must be in it.
    replacements = {
        '"labeled-data/session1/CollectedData_Alice.csv"': repr(str(SAMPLES / "support.json")),
        'model="stable-diffusion-v1-5/stable-diffusion-v1-5"': f'model="tiny", config={TINY_CONFIG}',
        '"videos/session1.mp4"': repr(str(SAMPLES / "sample.mp4")),
        'output_formats=["csv", "dlc"]': 'output_formats=["csv", "dlc"], stop=12, progress=False',
    }
    for old, new in replacements.items():
        assert old in code, f"the README example no longer contains {old}"
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile("from ppmtrack.engine import AdaptConfig\n" + code, "README.md", "exec"), namespace)
    ds, tracks, summary = namespace["ds"], namespace["tracks"], namespace["summary"]
    assert summary.status == "complete" and tracks.frame.tolist() == list(range(12))
    assert sorted(ds.keypoints.values) == sorted(tracks.names) and ds.sizes["time"] == 12
    # the scorer is the saved engine file's stem, as on the command line
    assert Path(summary.outputs["formats"][0]).name == "sampleppmtrack_animal.h5"
    assert (tmp_path / "animal.engine").is_file()

    # the same engine file through the CLI gives the same scorer and file name
    from ppmtrack.pipelines.cli import main

    assert main(["track", str(SAMPLES / "sample.mp4"), "--engine", str(tmp_path / "animal.engine"), "-o",
                 str(tmp_path / "cli"), "--stop", "4", "--output-format", "dlc", "--no-video", "-q"]) == 0
    assert (tmp_path / "cli" / "sampleppmtrack_animal.h5").is_file()

    # a loaded engine remembers its file; a copy under another name is scored by that name
    from ppmtrack import Engine, track_video

    shutil.copy(tmp_path / "animal.engine", tmp_path / "mouse3.engine")
    engine = Engine.load(tmp_path / "mouse3.engine")
    summary = track_video(SAMPLES / "sample.mp4", engine, tmp_path / "py", stop=3, output_formats=["dlc"],
                          write_video=False, progress=False)
    assert summary.engine["name"] == "mouse3"
    assert (tmp_path / "py" / "sampleppmtrack_mouse3.h5").is_file()
