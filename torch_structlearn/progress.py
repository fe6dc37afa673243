"""Progress bars that suit where they are shown: tqdm's bar on a terminal, plain lines in a
log (a file, a pipe, CI), never the bar's carriage returns and cursor moves there.

Everything that reports progress imports :func:`tqdm` from here instead of from tqdm."""

from __future__ import annotations

import re
import sys

from tqdm.auto import tqdm as _tqdm

__all__ = ["tqdm"]

_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\r")


class _Lines:
    """A text stream for tqdm that turns each refresh into one plain line."""

    def __init__(self, stream) -> None:
        self.stream, self.last = stream, None

    def write(self, s: str) -> None:
        s = _CONTROL.sub("", s).strip()
        if s and s != self.last:  # (closing a bar repeats its last state)
            self.stream.write(s + "\n")
            self.last = s

    def flush(self) -> None:
        self.stream.flush()


def tqdm(*args, **kwargs):
    """``tqdm.auto.tqdm(*args, **kwargs)`` on a terminal; elsewhere the same counter printed
    as plain lines, at most one every 30 s (and the last one)."""
    stream = kwargs.get("file") or sys.stderr
    if not getattr(stream, "isatty", lambda: False)():
        kwargs["file"] = _Lines(stream)
        kwargs.setdefault("mininterval", 30.0)
        kwargs["ascii"] = True
        kwargs.pop("position", None)
    return _tqdm(*args, **kwargs)
