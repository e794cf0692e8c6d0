"""The command line prints exactly the errors meant for users (PpmtrackError) as one line with exit status 2;
programming errors keep their traceback."""

from __future__ import annotations

import pytest

from ppmtrack.engine.errors import MissingExtraError, PpmtrackError, UsageError
from ppmtrack.pipelines import cli


def _run_raising(monkeypatch, exc: BaseException) -> int:
    def boom(args):
        raise exc

    monkeypatch.setattr(cli, "run_eval", boom)
    return cli.main(["eval", "tracks.csv", "truth.json"])


@pytest.mark.parametrize("exc", [UsageError("bad option"), MissingExtraError("pip install 'ppmtrack[x]'"),
                                 PpmtrackError("user error")])
def test_user_errors_are_one_line_and_exit_2(monkeypatch, capsys, exc):
    assert _run_raising(monkeypatch, exc) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err.strip() == f"ppmtrack: error: {exc}"


@pytest.mark.parametrize("exc", [ValueError("a bug"), OSError("a bug"), ImportError("a bug"), KeyError("a bug")])
def test_programming_errors_are_not_swallowed(monkeypatch, exc):
    with pytest.raises(type(exc)):
        _run_raising(monkeypatch, exc)


def test_user_facing_raise_sites_are_ppmtrack_errors(tmp_path, capsys):
    bad = tmp_path / "tracks.csv"
    bad.write_text("not,a,tracks,file\n")
    assert cli.main(["plot", str(bad), "-o", str(tmp_path / "plots")]) == cli.EXIT_ERROR
    assert "not a tracks CSV" in capsys.readouterr().err
    video = tmp_path / "a.mp4"
    video.write_bytes(b"")
    assert cli.main(["track", str(video), "rtsp://127.0.0.1:1/x", "--engine", "e.engine", "-o", str(tmp_path)]) == 2
    assert "live streams and video files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["track", "a.mp4", "--engine", "e.engine", "-o", str(tmp_path), "--min-confidence", "2"])
    assert stop.value.code == 2 and "between 0 and 1" in capsys.readouterr().err
