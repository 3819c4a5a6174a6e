"""Progress reporting that reads well in a terminal and in a log file.

On a terminal, a tqdm bar. When stderr is redirected (a SLURM log, ``2> train.log``, a pipe), a
bar's carriage-return redraws turn into one unreadable line; there, :class:`LineProgress`
prints one plain line when work starts, then at most one every ``interval`` seconds, then a
last one when it ends::

    training: 120/1210 step (9.9%) elapsed 0:52, 2.31 step/s, eta 7:52 | loss=1.2345 lr=1.00e-03

The interval is ``METEOR_PROGRESS_SECONDS`` (default 30). Every command's bars come from
:func:`progress_bar` (through ``Run.progress``), so they all behave the same way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

ENV_INTERVAL = "METEOR_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def _interval() -> float:
    raw = os.environ.get(ENV_INTERVAL)
    if raw is None:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        from meteor_cli.errors import UsageError

        raise UsageError(f"{ENV_INTERVAL}={raw!r} is not a number of seconds", f"e.g. {ENV_INTERVAL}=60, or unset it")
    return value


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LineProgress:
    """The subset of tqdm's interface meteor uses, printing plain lines (see the module docstring)."""

    def __init__(self, iterable: Iterable[Any] | None = None, *, total: float | None = None, desc: str | None = None,
                 unit: str = "it", initial: float = 0, file: TextIO | None = None, interval: float | None = None,
                 disable: bool = False, **_: Any) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc or "", unit
        self.n = self.initial = initial
        self.file = file if file is not None else sys.stderr
        self.interval = _interval() if interval is None else interval
        self.disable = disable
        self.postfix = ""
        self._start = time.monotonic()
        self._last: float | None = None
        self._closed = False

    def format(self) -> str:
        """The current line."""
        elapsed = time.monotonic() - self._start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 else 0.0
        count = f"{self.n:g}/{self.total:g} {self.unit}" if self.total else f"{self.n:g} {self.unit}"
        pct = f" ({100 * self.n / self.total:.1f}%)" if self.total else ""
        eta = f", eta {_clock((self.total - self.n) / rate)}" if self.total and rate > 0 and self.n < self.total else ""
        line = f"{self.desc}: " if self.desc else ""
        line += f"{count}{pct} elapsed {_clock(elapsed)}, {rate:.2f} {self.unit}/s{eta}"
        return line + (f" | {self.postfix}" if self.postfix else "")

    def _emit(self) -> None:
        self._last = time.monotonic()
        try:
            self.file.write(self.format() + "\n")
            self.file.flush()
        except (OSError, ValueError):  # the log went away: progress is not worth failing for
            self.disable = True

    def update(self, n: float = 1) -> None:
        self.n += n
        if self.disable:
            return
        if self._last is None or time.monotonic() - self._last >= self.interval:
            self._emit()

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = s

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, s: str) -> None:
        if not self.disable:
            self.file.write(s + "\n")

    def refresh(self) -> None:
        pass

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if not self.disable and (self._last is not None or self.n > self.initial):
            self._emit()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress reporter wraps no iterable")
        for item in self.iterable:
            yield item
            self.update(1)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(iterable: Iterable[Any] | None = None, *, file: TextIO | None = None, **kwargs: Any) -> Any:
    """A tqdm bar when ``file`` (default stderr) is a terminal, a :class:`LineProgress` otherwise."""
    file = file if file is not None else sys.stderr
    try:
        tty = file.isatty()
    except (AttributeError, ValueError):
        tty = False
    if tty:
        from tqdm.auto import tqdm

        kwargs.setdefault("dynamic_ncols", True)
        return tqdm(iterable, file=file, **kwargs)
    return LineProgress(iterable, file=file, **kwargs)
