"""``auto``'s calibration: time the backends on this machine, keep the fastest, remember it.

The first time ``backend='auto'`` meets a kind of call — device, dtype, block shape, the
``(batch, in, out)`` shape and the density (both bucketed on a log scale), training
(forward + backward) or inference (forward only) — every backend usable for it (``dense``,
``cpu``, ``csr``, ``torch_sparse`` when installed, ``triton`` for CUDA block layers) runs the
call's own structure on random inputs of its shape: one warm-up, then ``REPEATS`` rounds in
turn, the median kept. The fastest wins. As with ``torch.backends.cudnn.benchmark`` or FFTW's
wisdom, the decision is kept in memory and in a JSON file under
:func:`~torch_structlearn.filesystem.cache_dir` (``auto/<machine>.json``) whose name is a digest of
the machine — CPU model and instruction set, thread count, torch version, the ``cpu`` kernels'
build, the GPU — so a decision is never reused on another machine or configuration.

The file is written atomically under a lock: processes starting together (torchrun ranks)
calibrate a key once — the first takes the lock and measures while the others wait (and so do
not disturb its timing), then read its decision. A file that cannot be read is a warning and
is recalibrated. The cache never fails a call: a folder that cannot be created, locked or
written, a file that cannot be read or parsed (any JSON), or a stored decision naming a backend
that cannot serve the call is one warning, and the decision is measured and kept in memory;
every stored decision is checked against the call's usable backends before use.
``STRUCTLEARN_CALIBRATE=0`` turns calibration off (``auto`` then uses the
shipped table, :mod:`~torch_structlearn.ops.auto`), as does tracing under ``torch.compile``:
a trace uses decisions already made eagerly in this process and the shipped table otherwise,
so run one eager step before compiling.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import math
import os
import statistics
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import filelock
import torch

from ..filesystem import cache_dir, file_lock, write_json
from . import cpu

# what a stored decision may name (``sparse_linear.BACKENDS`` less ``auto``; kept here, below it)
_BACKENDS = frozenset({"cpu", "csr", "dense", "torch_sparse", "triton"})

__all__ = ["MARGIN", "REPEATS", "bucket", "cache_file", "clear", "decide", "enabled", "entry",
           "fingerprint", "forget", "measure_ms", "recall"]

FORMAT = "torch_structlearn-auto-calibration"
REPEATS = 3  # timed rounds per backend after one warm-up (the median is kept)

DIRECTORY: Path | None = None  # where decision files go; None: cache_dir() / "auto"

_lock = threading.Lock()
_decisions: dict[str, dict] = {}  # this process's decisions, by key
_calls: dict[tuple, str] = {}  # the backend of every exact call seen (the fast path)
_loaded: Path | None = None  # the file _decisions was read from
generation = 0  # bumped whenever decisions are dropped: layers' call plans made before are stale


def enabled() -> bool:
    """Whether ``auto`` calibrates (``$STRUCTLEARN_CALIBRATE`` is not ``0``)."""
    return os.environ.get("STRUCTLEARN_CALIBRATE", "1").strip().lower() not in ("0", "false",
                                                                                "off", "no")


def fingerprint(device: torch.device) -> dict:
    """What a decision depends on besides the call: the machine and the software."""
    info = {"cpu": cpu.cpu_model(), "isa": cpu.isa_flags(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "kernels": cpu.info(),
            "torch_sparse": importlib.util.find_spec("torch_sparse") is not None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def cache_file(device: torch.device) -> Path:
    """The decisions file for this machine and configuration."""
    return _cache_file(device, torch.get_num_threads(), DIRECTORY or cache_dir() / "auto")


@functools.lru_cache(maxsize=64)
def _cache_file(device: torch.device, threads: int, folder: Path) -> Path:
    # what varies within a process (threads, folder) is in the arguments; the rest of the
    # fingerprint (CPU, kernels' build, versions) is fixed once the kernels are loaded
    digest = hashlib.sha256(json.dumps(fingerprint(device), sort_keys=True).encode()).hexdigest()
    return folder / f"{device.type}-{digest[:16]}.json"


def _log_bucket(v: float, steps: int) -> int:
    return round(steps * math.log2(max(v, 1e-12)))


def bucket(device: torch.device, dtype: torch.dtype, block: tuple[int, int] | None,
           shape: tuple[int, int, int], density: float, training: bool) -> str:
    """The key of a call: batch in powers of 2, in / out features and density in powers of
    √2, so nearby calls share a decision."""
    b, i, o = shape
    blk = f"b{block[0]}x{block[1]}" if block else "-"
    return (f"{device.type}|{str(dtype).removeprefix('torch.')}|{blk}|n{_log_bucket(b, 1)}"
            f"|i{_log_bucket(i, 2)}|o{_log_bucket(o, 2)}|d{_log_bucket(density, 2)}"
            f"|{'train' if training else 'infer'}")


_warned: set[str] = set()  # the cache problems already reported (one warning each)


def _warn_once(what: str, path: Path, e: BaseException, then: str = "") -> None:
    """One warning per cache file and kind of problem: ``{what} {path} ({e}){then}``."""
    tag = f"{what}|{path}"
    if tag not in _warned:
        _warned.add(tag)
        warnings.warn(f"backend='auto': {what} {path} ({type(e).__name__}: {e}){then}",
                      stacklevel=5)


_IN_MEMORY = ("; this process measures its decisions and keeps them in memory (set "
              "$STRUCTLEARN_CACHE to a writable folder to keep them)")
_CACHE_ERRORS = (OSError, UnicodeDecodeError, ValueError, TypeError, RecursionError,
                 MemoryError, filelock.Timeout)


def _valid(decision) -> bool:
    """A stored decision: ``{"backend": one of the backends, ...}``."""
    return isinstance(decision, dict) and decision.get("backend") in _BACKENDS


def _read(path: Path) -> dict[str, dict]:
    """The decisions in ``path`` ({} when there is none or it cannot be read: one warning).
    Entries that do not name a known backend are dropped here; whether a backend is usable
    for a call is checked where the decision is used."""
    try:
        if not path.exists():
            return {}
        data = json.loads(path.read_text(encoding="utf-8"))
        if not (isinstance(data, dict) and data.get("format") == FORMAT
                and isinstance(data.get("decisions"), dict)):
            raise ValueError("not a calibration file of this version")
        return {k: v for k, v in data["decisions"].items() if isinstance(k, str) and _valid(v)}
    except _CACHE_ERRORS as e:
        _warn_once("ignoring the unreadable calibration cache", path, e,
                   "; decisions are measured again and the file rewritten")
        return {}


def _ensure_loaded(device: torch.device) -> Path:
    """Hold the decisions of this configuration's file (another thread count or folder is
    another file: its decisions replace the ones held)."""
    global _loaded
    global generation
    path = cache_file(device)
    if _loaded != path:
        generation += 1
        _decisions.clear()
        _calls.clear()
        _decisions.update(_read(path))
        _loaded = path
    return path


def clear(memory_only: bool = True) -> None:
    """Forget this process's decisions (and, with ``memory_only=False``, delete the files)."""
    global _loaded, generation
    with _lock:
        generation += 1
        _decisions.clear()
        _calls.clear()
        _warned.clear()
        _loaded = None
        if not memory_only:
            for f in (DIRECTORY or cache_dir() / "auto").glob("*.json"):
                f.unlink(missing_ok=True)


def measure_ms(run: Callable[[], None], device: torch.device, repeats: int,
               calls: int = 1) -> list[float]:
    """``repeats`` wall times of ``run`` in milliseconds per call, each the mean of ``calls``
    calls back to back (synchronising CUDA). Tests replace it to inject times."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - t0) * 1e3 / calls)
    return times


ROUND_MS = 1.0  # a timed round of a fast call repeats it back to back for about this long


def recall(device: torch.device, dtype: torch.dtype, block: tuple[int, int] | None,
           shape: tuple[int, int, int], density: float, training: bool,
           candidates: Callable[[], list[str]] | None = None) -> str | None:
    """The decision this process already holds for such a call, or None (no file I/O, no
    measurement: a dictionary lookup); None too when it names a backend not in
    ``candidates()`` (when given)."""
    hit = _decisions.get(bucket(device, dtype, block, shape, density, training))
    if hit is None or (candidates is not None and hit["backend"] not in candidates()):
        return None
    return hit["backend"]


def entry(device: torch.device, dtype: torch.dtype, block: tuple[int, int] | None,
          shape: tuple[int, int, int], density: float, training: bool) -> dict | None:
    """The whole decision held for such a call (``backend``, ``ms`` per backend, the shape and
    density measured, when), or None."""
    return _decisions.get(bucket(device, dtype, block, shape, density, training))


def forget(device: torch.device, dtype: torch.dtype, block: tuple[int, int] | None,
           shape: tuple[int, int, int], density: float, training: bool) -> None:
    """Drop the decision for such a call, here and in the cache file (the next call measures)."""
    global generation
    key = bucket(device, dtype, block, shape, density, training)
    with _lock:
        generation += 1
        path = _ensure_loaded(device)
        _decisions.pop(key, None)
        _calls.clear()
        try:
            with file_lock(path.with_suffix(".lock")):
                on_disk = _read(path)
                if on_disk.pop(key, None) is not None:
                    _write(path, device, on_disk)
        except _CACHE_ERRORS as e:
            _warn_once("cannot update the calibration cache", path, e, _IN_MEMORY)


def _write(path: Path, device: torch.device, decisions: dict) -> None:
    write_json(path, {"format": FORMAT, "version": 1, "machine": fingerprint(device),
                      "decisions": dict(sorted(decisions.items()))})


def decide(device: torch.device, dtype: torch.dtype, block: tuple[int, int] | None,
           shape: tuple[int, int, int], density: float, training: bool,
           candidates: Callable[[], list[str]],
           make_runs: Callable[[list[str]], dict[str, Callable[[], None]]],
           expected: Callable[[], str] | None = None) -> str:
    """The fastest of the backends ``candidates()`` lists for this kind of call: from memory,
    the cache file, or a measurement (then stored) of the runs ``make_runs(names)`` returns —
    one call of each backend, by name, on the call's structure; ``expected()`` (the shipped
    prior's pick) is kept unless another is measured clearly faster (:func:`_measure`). A
    decision made in this process is returned at once (a dict lookup: this runs on every call
    of ``auto``)."""
    call = (device, dtype, block, shape, density, training, torch.get_num_threads(), DIRECTORY,
            os.environ.get("STRUCTLEARN_CACHE"), os.environ.get("XDG_CACHE_HOME"))
    made = _calls.get(call)  # this exact call before: a tuple lookup, nothing else
    if made is not None:
        return made
    if len(_calls) > 100_000:  # many distinct shapes (say, variable lengths): start afresh
        _calls.clear()
    key = bucket(device, dtype, block, shape, density, training)
    with _lock:
        path = _ensure_loaded(device)
        names = candidates()

        def known() -> str | None:  # held or read from a file: kept if usable for this call
            hit = _decisions.get(key)
            if hit is not None and hit["backend"] not in names:
                _warn_once(f"ignoring a decision for backend {hit['backend']!r}, which cannot "
                           f"serve this call (usable: {', '.join(names)}), in the calibration "
                           "cache", path, ValueError(key), "; measured again")
                return None
            return None if hit is None else hit["backend"]

        made = known()
        if made is None:
            about = {"shape": list(shape), "density": round(density, 6)}
            made = _measure_and_store(key, about, path, device, names, make_runs, expected, known)
            if made is None:  # another process measured it while this one waited
                made = known()
    _calls[call] = made
    return made


def _measure_and_store(key: str, about: dict, path: Path, device: torch.device,
                       names: list[str], make_runs, expected, known) -> str | None:
    """Measure under the file's lock and store the decision (in memory, and in the file when
    it can be written: otherwise one warning); None when the file already held a usable
    decision for ``key``."""
    try:
        with file_lock(path.with_suffix(".lock")):
            _decisions.update(_read(path))  # another process may have measured it meanwhile
            if known():
                return None
            entry = _measurement(key, about, make_runs, names, device, expected)
            try:
                on_disk = _read(path)
                on_disk[key] = entry
                _write(path, device, on_disk)
            except _CACHE_ERRORS as e:
                _warn_once("cannot write the calibration cache", path, e, _IN_MEMORY)
            return entry["backend"]
    except _CACHE_ERRORS as e:  # the lock (its folder) is unusable: measure without it
        _warn_once("cannot lock the calibration cache", path, e, _IN_MEMORY)
    if known():
        return None
    return _measurement(key, about, make_runs, names, device, expected)["backend"]


def _measurement(key: str, about: dict, make_runs, names: list[str], device: torch.device,
                 expected) -> dict:
    """Measure the candidates and hold the decision (with ``about`` it: shape, density) in
    memory."""
    entry = _measure(make_runs(names), device, expected() if expected else None)
    entry.update(about)
    _decisions[key] = entry
    return entry


MARGIN = 0.05  # a backend other than the expected one must be this much faster to be kept


def _measure(runs: dict[str, Callable[[], None]], device: torch.device,
             expected: str | None = None) -> dict:
    """``{"backend": the fastest, "ms": {backend: median ms}, "measured": UTC time}``.

    One untimed warm-up call each (first calls pay one-time costs: lazy imports, allocations,
    thread pools), then ``REPEATS`` timed rounds in turn, so a slow moment hits every backend
    alike. A backend 3x slower than the best in the first round cannot win and is not timed
    further (its first round's time is kept). Where the fastest is not ``expected`` (the shipped
    prior's pick), the two run ``REPEATS`` more rounds in turn, and the newcomer is kept only
    if its median over all rounds beats the expected one's by ``MARGIN``: a burst of noise
    on a shared machine (measured here: a 30 % loss at 1 % density, ``csr`` kept over ``cpu``)
    must not overturn the measured prior."""
    for name, run in list(runs.items()):
        try:
            run()
        except Exception as e:  # a backend that fails here cannot be picked: the call goes on
            if len(runs) == 1:
                raise
            warnings.warn(f"backend='auto': {name!r} failed while calibrating ({type(e).__name__}: "
                          f"{e}); it is left out of this decision", stacklevel=6)
            del runs[name]
    # a call of a few microseconds timed alone reads mostly the cold caches and sleeping
    # threads a lone call meets, not the back-to-back calls of serving or training: such calls
    # are timed as rounds of ~ROUND_MS (the same count for every backend)
    once = {name: measure_ms(run, device, 1)[0] for name, run in runs.items()}
    calls = max(1, min(64, int(ROUND_MS / max(min(once.values()), 1e-4))))
    first = {name: measure_ms(run, device, 1, calls)[0] for name, run in runs.items()}
    best = min(first.values())
    timed = {n: r for n, r in runs.items() if first[n] <= 3 * best or n in ("dense", expected)}
    times = {n: [first[n]] for n in runs}
    for _ in range(REPEATS - 1):
        for name, run in timed.items():
            times[name].extend(measure_ms(run, device, 1, calls))
    winner = min(timed, key=lambda n: statistics.median(times[n]))
    if expected in timed and winner != expected:
        for _ in range(REPEATS):
            for name in (winner, expected):
                times[name].extend(measure_ms(timed[name], device, 1, calls))
        if statistics.median(times[winner]) > (1 - MARGIN) * statistics.median(times[expected]):
            winner = expected
    ms = {n: statistics.median(t) for n, t in times.items()}
    return {"backend": winner, "ms": {n: round(t, 4) for n, t in sorted(ms.items())},
            "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
