"""The track-format registry (pipelines.io.formats.TRACK_FORMAT_REGISTRY) is what the CLI, the package check, the
output sets and both runs consult: a format's files are found by its registry line alone."""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import pytest

from ppmtrack.engine.errors import MissingExtraError, UsageError
from ppmtrack.pipelines.io.files import TrackFileOptions
from ppmtrack.pipelines.io.formats import (
    MULTI_FORMATS,
    OUTPUT_FORMATS,
    TRACK_FORMAT_REGISTRY,
    TRACK_FORMATS,
    check_output_formats,
    write_tracks,
    write_tracks_multi,
)
from ppmtrack.pipelines.outputs import stem_files
from ppmtrack.tracker.track import Tracks

ALL_PACKAGES = all(importlib.util.find_spec(m) for f in TRACK_FORMAT_REGISTRY.values() for m in f.packages)
needs_packages = pytest.mark.skipif(not ALL_PACKAGES, reason="the format extras are not installed")


def make_tracks(n_frames: int = 5) -> Tracks:
    rng = np.random.default_rng(1)
    xy = rng.uniform(10, 100, (n_frames, 2, 2))
    frames = np.arange(n_frames)
    return Tracks(names=["nose", "tail"], frame=frames, time=frames / 30.0, raw_xy=xy + 1, xy=xy,
                  confidence=rng.uniform(0.2, 1, (n_frames, 2)), visible=np.ones((n_frames, 2), bool),
                  skeleton=[("nose", "tail")])


def test_the_cli_offers_the_registered_formats_and_refuses_others(capsys):
    from ppmtrack.pipelines.cli import main

    with pytest.raises(SystemExit):
        main(["track", "--help"])
    assert f"among {','.join(OUTPUT_FORMATS)} (csv is always written)" in " ".join(capsys.readouterr().out.split())
    assert set(OUTPUT_FORMATS) == {"csv", *TRACK_FORMAT_REGISTRY}
    with pytest.raises(UsageError, match="unknown output format 'xlsx'; choose among csv, dlc"):
        check_output_formats(["csv", "xlsx"])


def test_a_missing_package_names_the_extra_of_the_registry_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "h5py" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"'sleap' needs the Python package\(s\) h5py.*ppmtrack\[formats\]"):
        check_output_formats(["csv", "sleap"])
    monkeypatch.setitem(TRACK_FORMAT_REGISTRY, "sleap",
                        dataclasses.replace(TRACK_FORMAT_REGISTRY["sleap"], extra="sleap-io"))
    with pytest.raises(MissingExtraError, match=r"ppmtrack\[sleap-io\]"):
        check_output_formats(["sleap"])


@needs_packages
def test_every_file_a_format_writes_belongs_to_the_output_set_of_its_stem(tmp_path):
    written = write_tracks(make_tracks(), tmp_path, "clip", list(TRACK_FORMATS), engine_name="e", video_path=None,
                           fps=30.0, with_raw=True)
    assert len(written) == 8  # dlc .h5 + .csv, sleap, nwb; each also raw
    assert set(stem_files(tmp_path, "clip")) == set(written)
    assert stem_files(tmp_path, "cli") == []  # another stem's set holds none of them


@needs_packages
def test_several_animals_are_written_by_each_formats_multi_writer(tmp_path):
    tracks = {"animal1": make_tracks(), "animal2": make_tracks()}
    written = write_tracks_multi(tracks, tmp_path, "clip", list(MULTI_FORMATS), TrackFileOptions(engine_name="e"))
    names = sorted(p.name for p in written)
    assert names == ["clip.analysis.h5", "clip.animal1.nwb", "clip.animal2.nwb", "clipppmtrack_e.csv",
                     "clipppmtrack_e.h5"]
    assert all(p.is_file() for p in written)
