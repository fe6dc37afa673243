"""File helpers every part of the package shares (a leaf module: it imports nothing of ours).

* :func:`write_atomic` — write bytes to a temporary file beside the target, fsync, rename: a
  reader (or a crash) never sees a half-written file.
* :func:`file_lock` — an exclusive lock between processes (``filelock``, on every platform),
  so that several processes starting at once (torchrun ranks) compile a kernel or calibrate
  ``auto`` once instead of racing.
* :func:`cache_dir` — where compiled kernels, ``auto``'s calibration and decoded data sets are
  kept: ``$STRUCTLEARN_CACHE``, else ``$XDG_CACHE_HOME/torch_structlearn``, else
  ``~/.cache/torch_structlearn``.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

__all__ = ["cache_dir", "file_lock", "process_alive", "write_atomic", "write_json"]


def cache_dir() -> Path:
    """``$STRUCTLEARN_CACHE``, else ``$XDG_CACHE_HOME/torch_structlearn``, else
    ``~/.cache/torch_structlearn``."""
    env = os.environ.get("STRUCTLEARN_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch_structlearn"


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


_TMP_TAG = ".structlearn.tmp"


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files an earlier write of ``path`` left behind when its process
    was killed (named ``.{name}.{pid}.{random}.structlearn.tmp``; only those whose process is
    gone)."""
    for tmp in path.parent.glob(f".{glob_escape(path.name)}.*{_TMP_TAG}"):
        pid = tmp.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            tmp.unlink(missing_ok=True)  # (a live process may still be writing it)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one we may not signal counts as existing)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename, so
    that the destination is either the old file or the whole new one.

    A symlink is followed: its target is replaced (the link stays). A destination that exists
    and is not a regular file (a folder, a FIFO, a device such as ``/dev/null``) is refused with
    ``IsADirectoryError`` / ``ValueError`` — it is never replaced. The temporary file is named
    ``.{name}.{pid}.{random}.structlearn.tmp``; one left behind by a killed process is deleted
    by the next write of the same path."""
    path = Path(path)
    if path.is_symlink():
        path = path.resolve()
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file path such as "
                                f"{path / 'structure.safetensors'}")
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists and is not a regular file (a FIFO, socket or device); "
                         "refusing to replace it")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_TAG,
                                   dir=path.parent)
    except OSError as e:  # name the destination asked for, not a temporary file
        raise type(e)(e.errno, e.strerror, str(path)) from e
    try:
        # mkstemp makes the file owner-only (0600); give it the mode open() would have given
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:
            raise type(e)(e.errno, e.strerror, str(path)) from e
        raise


def write_json(path: str | os.PathLike, obj: Any, *, indent: int = 1, **dumps_kw) -> None:
    """Write ``obj`` as JSON text with a final newline, atomically (``dumps_kw``: json.dumps')."""
    write_atomic(Path(path), (json.dumps(obj, indent=indent, **dumps_kw) + "\n").encode())


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, with its folder) for the ``with``
    block; other processes asking for it wait (``filelock.FileLock``: ``fcntl`` on POSIX,
    ``msvcrt`` on Windows). ``OSError`` when the folder cannot be created or written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with filelock.FileLock(str(path)):
        yield
