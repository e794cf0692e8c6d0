"""Progress of long work on stderr: a tqdm bar in a terminal, a few status lines in a log file.

A tqdm bar written to a file (a batch job's log, ``nohup``, a notebook's captured stderr) becomes one line per
refresh, hundreds per run. When the stream is not a terminal, :func:`progress_bar` prints a plain status line
instead, at most every ``STATUS_EVERY_PERCENT`` percent of the work or every ``STATUS_EVERY_S`` seconds,
whichever comes first, and one at the end.
"""

from __future__ import annotations

import sys
import time

STATUS_EVERY_S = 30.0
STATUS_EVERY_PERCENT = 10


class StatusLines:
    """The subset of tqdm's interface that ppmtrack uses, printing one line per step of progress.

    Parameters
    ----------
    total : int or None
        Units of work expected (None: unknown, then lines are printed by time only).
    desc : str
        What is being done, at the start of each line.
    unit : str
        The unit counted ("frame", "step").
    stream : file
        Where the lines go.
    every_s, every_percent : float
        A line at least every ``every_s`` seconds of work and whenever another ``every_percent`` percent is done.
    """

    def __init__(self, total: int | None, desc: str, unit: str, stream, every_s: float = STATUS_EVERY_S,
                 every_percent: float = STATUS_EVERY_PERCENT):
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.every_s, self.every_percent = float(every_s), float(every_percent)
        self.n = 0
        self.postfix = ""
        self.start = time.monotonic()
        self.last_line, self.last_line_n = self.start, 0
        self.next_percent = self.every_percent
        self.closed = False

    def set_description(self, desc: str, refresh: bool = True) -> None:
        """Change what the next lines say is being done."""
        self.desc = desc

    def set_postfix(self, refresh: bool = True, **values) -> None:
        """Values appended to the next lines, e.g. ``loss=0.12``."""
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units of work; print a line if enough time or work has passed since the last."""
        self.n += n
        now = time.monotonic()
        percent = 100.0 * self.n / self.total if self.total else None
        if percent is not None and percent >= self.next_percent:
            self.next_percent = (percent // self.every_percent + 1) * self.every_percent
            self._line(now)
        elif now - self.last_line >= self.every_s:
            self._line(now)

    def close(self) -> None:
        """Print the final line (unless the last one already said the same)."""
        if self.closed:
            return
        self.closed = True
        if self.n and self.last_line_n != self.n:
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        elapsed = now - self.start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        percent = f" ({100.0 * self.n / self.total:.0f}%)" if self.total else ""
        rate = f", {self.n / elapsed:.3g} {self.unit}/s" if elapsed > 0 else ""
        extra = f", {self.postfix}" if self.postfix else ""
        self.stream.write(f"ppmtrack: {self.desc}: {done} {self.unit}s{percent}, {elapsed:.0f} s{rate}{extra}\n")
        self.stream.flush()
        self.last_line, self.last_line_n = now, self.n


def progress_bar(total: int | None, desc: str, unit: str, stream=None):
    """A progress display for ``total`` units of work on ``stream`` (default: stderr).

    Returns a tqdm bar when the stream is a terminal, else a :class:`StatusLines` (same ``update``,
    ``set_description``, ``set_postfix``, ``close``), so logs of batch jobs stay short.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if callable(isatty) and isatty():
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, file=stream, desc=desc, dynamic_ncols=True)
    return StatusLines(total, desc, unit, stream)


def expected_frames(n_frames: int | None, start: int, stop: int | None, stride: int) -> int | None:
    """How many of a video's ``n_frames`` the selection ``start:stop:stride`` reads (None: length unknown)."""
    if n_frames is None:
        return None
    end = n_frames if stop is None else min(stop, n_frames)
    return len(range(start, end, stride))
