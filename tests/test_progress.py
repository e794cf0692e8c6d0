"""Progress display (pipelines.progress) and the --threads option."""

from __future__ import annotations

import io

import pytest

from ppmtrack.pipelines.progress import StatusLines, progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_log_file_gets_a_bounded_number_of_status_lines():
    log = io.StringIO()  # not a terminal, like a batch job's log
    bar = progress_bar(348, "keypoint prompts", "step", stream=log)
    assert isinstance(bar, StatusLines)
    for step in range(348):
        bar.set_postfix(loss=f"{1 / (step + 1):.4g}")
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert 10 <= len(lines) <= 11  # one per 10 %, the last at 100 %, nothing repeated at close
    assert "\r" not in log.getvalue()
    assert lines[-1].startswith("ppmtrack: keypoint prompts: 348/348 steps (100%)")
    assert "loss=" in lines[-1]


def test_status_lines_without_a_total_are_printed_by_time(monkeypatch):
    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr("ppmtrack.pipelines.progress.time.monotonic", lambda: float(next(clock)))
    log = io.StringIO()
    bar = StatusLines(None, "sample", "frame", log, every_s=30)
    for _ in range(300):  # one second per update
        bar.update(1)
    bar.close()
    assert 9 <= len(log.getvalue().splitlines()) <= 11


def test_terminal_gets_a_tqdm_bar():
    from tqdm import tqdm

    terminal = _Terminal()
    bar = progress_bar(10, "x", "frame", stream=terminal)
    assert isinstance(bar, tqdm)
    bar.update(10)
    bar.close()
    shown = terminal.getvalue()
    assert "\r" in shown and "10/10" in shown and "x" in shown  # a bar redrawn in place, at its total


def test_threads_option_reaches_torch(monkeypatch, tmp_path):
    import torch

    from ppmtrack.pipelines.cli import main

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    # The run itself fails (no such engine), after the thread count was set.
    status = main(["track", str(tmp_path / "none.mp4"), "--engine", str(tmp_path / "none.engine"),
                   "-o", str(tmp_path / "out"), "--threads", "3"])
    assert status == 2 and calls == [3]
    assert main(["adapt", str(tmp_path / "none.json"), "-o", str(tmp_path / "a.engine"), "--threads", "1"]) == 2
    assert calls == [3, 1]


def test_threads_option_must_be_positive(tmp_path, capsys):
    from ppmtrack.pipelines.cli import main

    assert main(["adapt", str(tmp_path / "s.json"), "-o", str(tmp_path / "a.engine"), "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["adapt", "track", "pretrain-foreground"])
def test_threads_option_is_documented_in_help(command, capsys):
    from ppmtrack.pipelines.cli import main

    with pytest.raises(SystemExit):
        main([command, "--help"])
    assert "--threads" in capsys.readouterr().out


@pytest.mark.slow  # a tiny adaptation: ~15 s of CPU
def test_adapt_in_a_log_file_writes_a_dozen_progress_lines_not_one_per_step(tmp_path, capsys, monkeypatch):
    from pathlib import Path

    import torch

    from ppmtrack.pipelines.cli import main

    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # keep the session's thread count
    support = Path(__file__).resolve().parents[1] / "samples" / "support.json"
    import time

    from ppmtrack.pipelines.progress import STATUS_EVERY_S

    t0 = time.monotonic()
    status = main(["adapt", str(support), "-o", str(tmp_path / "a.engine"), "--model", "tiny", "--steps", "40",
                   "--fg-steps", "10", "--views-per-frame", "1", "--resolution", "64", "--threads", "1",
                   "--validate", "off"])  # the 50 steps of one adaptation; validation adds its own
    assert status == 0
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err  # pytest's capture is not a terminal, like a batch job's log
    progress = [line for line in err.splitlines() if " steps (" in line]
    # a line per 10 % of the 50 steps, plus one per 30 s of work on a slow machine: not one per step
    assert 5 <= len(progress) <= 12 + elapsed / STATUS_EVERY_S, (elapsed, progress)
    assert "\r" not in err
    assert progress[-1].split(": ", 2)[2].startswith("50/50 steps (100%)")
