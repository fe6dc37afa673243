"""Progress bars that suit where they are shown: tqdm's bar on a terminal, plain lines in a
log (a file, a pipe, CI), never the bar's carriage returns and cursor moves there.

Everything that reports progress imports :func:`tqdm` from here instead of from tqdm."""

from __future__ import annotations

import re
import sys
import time

from tqdm.auto import tqdm as _tqdm

__all__ = ["tqdm"]

_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\r")


INTERVAL = 30.0  # seconds between two lines of one bar in a log (its first and last always)


class _Lines:
    """A text stream for tqdm that turns its refreshes into plain lines: the first, then at
    most one per ``INTERVAL`` (``set_postfix`` refreshes on every call), and the finished one."""

    def __init__(self, stream) -> None:
        self.stream, self.last, self.when = stream, None, None

    def write(self, s: str) -> None:
        s = _CONTROL.sub("", s).strip()
        if not s or s == self.last:  # (closing a bar repeats its last state)
            return
        now = time.monotonic()
        if self.when is None or now - self.when >= INTERVAL or "100%|" in s:
            self.stream.write(s + "\n")
            self.last, self.when = s, now

    def flush(self) -> None:
        self.stream.flush()


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm(*args, **kwargs)`` on a terminal; elsewhere the same counter printed
    as plain lines: the first, at most one every 30 s, and the finished one."""
    stream = kwargs.get("file") or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        kwargs["file"] = _Lines(stream)
        kwargs.setdefault("mininterval", INTERVAL)
        kwargs["ascii"] = True
        kwargs.pop("position", None)
    return _tqdm(*args, **kwargs)
