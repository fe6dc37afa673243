"""A fuzzer for structure files: seeded mutations of valid files, each loaded by a worker
process so that a crash, a hang or a memory blow-up is seen and attributed to its case.

``python tests/_fuzz_files.py N [SEED]`` runs ``N`` cases and prints the summary (what the
README's reliability section quotes); ``tests/test_fuzz_files.py`` runs a few hundred in the
default suite and 10 000 under ``-m slow``.

Mutation families and what must happen (a crash, a hang, an exception other than
``StructureFileError``, or a load that raises peak memory by more than ``MEMORY_MB`` fails
every family):

* ``truncate``, ``flip``, ``insert``, ``table`` (a dtype, shape or offset in the safetensors
  table, checksum not recomputed): the load fails, or the file still means the same thing
  (e.g. JSON whitespace) and loads to exactly the original module — anything else is a
  silently accepted corruption.
* ``indices`` (a CSR invariant broken, checksum recomputed): the load fails.
* ``header`` (a header value replaced by a wrong type, a huge or negative number or deep
  nesting, checksum recomputed): no crash, hang, blow-up or foreign exception.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMORY_MB = 64  # the files are a few KB; a load may not raise peak RSS by more than this
CASE_TIMEOUT_S = 30.0


# ----------------------------------------------------------------------------- seeds
def seed_files() -> dict[str, bytes]:
    """Valid files of every class the format has: layers (fp32 with bias, bf16 without, a
    block layer), stacks (contiguous and learned groups), a converted model's layers and a
    classifier."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import torch_structlearn as tsl
    from torch_structlearn import (
        StructLearnedClassifier,
        StructLearnedLinear,
        StructLearnedStack,
        ZCAWhitening,
    )
    from torch_structlearn.pooling import GroupPool

    torch.manual_seed(0)
    out: dict[str, torch.nn.Module] = {}
    out["layer"] = StructLearnedLinear(13, 9, density=0.4)
    out["layer_bf16"] = StructLearnedLinear(12, 6, bias=False, density=0.3, dtype=torch.bfloat16)
    out["block"] = StructLearnedLinear(16, 8, density=0.5, block=(4, 4))
    out["stack"] = StructLearnedStack(12, 8, max_depth=3, density=0.5, group_size=2, depth=2)
    learned = StructLearnedStack(12, 8, max_depth=2, density=0.5, group_size=2, depth=1,
                                 groups="learned")
    learned.layers[0][2] = GroupPool(2, "l2", permutation=torch.randperm(8))
    out["stack_learned"] = learned
    model = torch.nn.Sequential(StructLearnedLinear(6, 5, density=0.5), torch.nn.ReLU(),
                                StructLearnedLinear(5, 3, density=0.6))
    out["model"] = model
    X = torch.rand(32, 12)
    whiten = ZCAWhitening(12).fit(DataLoader(TensorDataset(X), batch_size=16))
    body = StructLearnedStack(12, 8, max_depth=2, density=0.5, group_size=2, depth=1)
    out["classifier"] = StructLearnedClassifier(whiten, body, 3, (3, 2, 2))
    files = {}
    with tempfile.TemporaryDirectory() as d:
        for name, module in out.items():
            files[name] = tsl.save(module, Path(d) / name, metadata={"seed": name}).read_bytes()
    return files


# ----------------------------------------------------------------------------- mutations
def _split(data: bytes):
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(table: dict, body: bytes) -> bytes:
    text = json.dumps(table).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


def _resign(table: dict, header: dict, body: bytes) -> bytes:
    """The file with ``header`` and a checksum recomputed over it and the tensors."""
    from torch_structlearn.io import _digest

    meta = table["__metadata__"]
    meta["header"] = json.dumps(header, sort_keys=True)
    entries = {k: (v["dtype"], v["shape"], body[v["data_offsets"][0]:v["data_offsets"][1]])
               for k, v in table.items() if k != "__metadata__"}
    meta["sha256"] = _digest(meta["format_version"], meta["header"], entries)
    return _join(table, body)


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(obj, list) and obj:
        for i, v in enumerate(obj):
            yield from _leaves(v, (*path, i))
    yield path


def mutate(seed_name: str, data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutated file of ``data``: ``(family, bytes)``."""
    family = rng.choice(["truncate", "flip", "flip", "insert", "table", "indices", "header",
                         "header"])
    if family == "truncate":
        return family, data[: rng.randrange(len(data))]
    if family == "flip":
        buf = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            buf[rng.randrange(len(buf))] ^= rng.randint(1, 255)
        return family, bytes(buf)
    if family == "insert":
        pos = rng.randrange(len(data) + 1)
        return family, data[:pos] + os.urandom(rng.randint(1, 16)) + data[pos:]
    table, body = _split(data)
    keys = [k for k in table if k != "__metadata__"]
    if family == "table":
        key = rng.choice(keys)
        info = table[key]
        what = rng.choice(["dtype", "shape", "offsets"])
        if what == "dtype":
            same_size = {"F16": "BF16", "BF16": "F16", "F32": "I32", "I32": "F32", "F64": "I64",
                         "I64": "F64"}
            info["dtype"] = same_size[info["dtype"]]
        elif what == "shape":
            info["shape"] = [s + rng.choice([-1, 1]) for s in info["shape"]] or [1]
        else:
            info["data_offsets"][rng.randrange(2)] += rng.choice([-8, -4, -2, 2, 4, 8])
        return family, _join(table, body)
    header = json.loads(table["__metadata__"]["header"])
    if family == "indices":
        return family, _resign(table, header, _break_indices(table, header, body, rng))
    # header: replace one value (not under "user", whose content is free) by garbage
    leaves = [p for p in _leaves(header) if p and p[0] != "user"]
    path = rng.choice(leaves)
    value = rng.choice(["x", None, [], {}, -1, 0, 2**31, 2**63, 2**64 + 5, -(2**63), 1e308, 1.5,
                        True, [1, 2], {"a": 1}, "\x1b[31mred", "A" * 10000, "deep"])
    if value == "deep":
        depth = rng.randint(100, 900)
        value = json.loads("[" * depth + "]" * depth)
    target = header
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    try:
        return family, _resign(table, header, body)
    except RecursionError:
        return family, _resign(table, {"class": value}, body)


def _break_indices(table: dict, header: dict, body: bytes, rng: random.Random) -> bytes:
    """``body`` with one CSR invariant of one layer broken (always an invalid structure)."""
    layers = [i for i, L in enumerate(header["layers"]) if L["nnz"] > 0]
    i = rng.choice(layers)
    crow_info, col_info = table[f"layers.{i}.crow_indices"], table[f"layers.{i}.col_indices"]
    fmt = {"I32": "<i", "I64": "<q"}[crow_info["dtype"]]

    def read(info):
        a, b = info["data_offsets"]
        return [v for (v,) in struct.iter_unpack(fmt, body[a:b])]

    crow, col = read(crow_info), read(col_info)
    n_cols = header["layers"][i]["in_features"]
    how = rng.choice(["col_high", "col_negative", "crow_start", "crow_end", "crow_decrease",
                      "duplicate"])
    if how == "col_high":
        col[rng.randrange(len(col))] = n_cols + rng.choice([0, 1, 2**20])
    elif how == "col_negative":
        col[rng.randrange(len(col))] = -rng.randint(1, 2**20)
    elif how == "crow_start":
        crow[0] = rng.choice([1, -1])
    elif how == "crow_end":
        crow[-1] += rng.choice([1, -1])
    elif how == "crow_decrease":
        rows = [r for r in range(1, len(crow) - 1) if crow[r] > 0]
        r = rng.choice(rows) if rows else len(crow) - 1
        crow[r] = crow[r - 1] - 1 if crow[r - 1] > 0 else -1
    else:
        rows = [r for r in range(len(crow) - 1) if crow[r + 1] - crow[r] >= 2]
        if not rows:
            col[0] = n_cols  # no row with two entries: out of range instead
        else:
            r = rng.choice(rows)
            col[crow[r] + 1] = col[crow[r]]
    out = bytearray(body)
    for info, values in ((crow_info, crow), (col_info, col)):
        a, _ = info["data_offsets"]
        out[a : a + struct.calcsize(fmt) * len(values)] = b"".join(struct.pack(fmt, v) for v in values)
    return bytes(out)


def make_cases(n: int, seed: int, folder: Path) -> list[dict]:
    """``n`` mutated files in ``folder`` (and the seeds as ``seed-*.safetensors``)."""
    rng = random.Random(seed)
    seeds = seed_files()
    for name, data in seeds.items():
        (folder / f"seed-{name}.safetensors").write_bytes(data)
    cases = []
    names = sorted(seeds)
    for i in range(n):
        name = names[i % len(names)]
        family, data = mutate(name, seeds[name], rng)
        path = folder / f"case-{i:06d}.safetensors"
        path.write_bytes(data)
        cases.append({"i": i, "seed": name, "family": family, "path": str(path)})
    return cases


# ----------------------------------------------------------------------------- worker
def fingerprint(obj) -> str:
    """A digest of what a loaded object is: class, every tensor of its state (keys, dtypes,
    shapes, bytes) and the layers' settings."""
    import torch

    h = hashlib.sha256()
    items = obj.items() if isinstance(obj, dict) else [("", obj)]
    for name, module in items:
        h.update(f"{name}|{type(module).__name__}|{module!r}".encode())
        for key, t in sorted(module.state_dict().items()):
            t = t.detach().contiguous()
            h.update(f"{key}|{t.dtype}|{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def worker(cases_file: str, start: int, results_file: str) -> None:
    """Load the cases from ``start`` on, appending one JSON line per case to ``results_file``
    (a ``start`` line before each load, so that the parent knows which case crashed or hung)."""
    import resource

    import torch_structlearn as tsl

    cases = json.loads(Path(cases_file).read_text())
    folder = Path(cases[0]["path"]).parent if cases else Path(".")
    originals = {p.name[5:-12]: fingerprint(tsl.load(p)) for p in sorted(folder.glob("seed-*"))}

    def peak_mb() -> float:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    with open(results_file, "a", buffering=1) as out:
        for case in cases[start:]:
            out.write(json.dumps({"i": case["i"], "start": True}) + "\n")
            before = peak_mb()
            t0 = time.perf_counter()
            result = {"i": case["i"]}
            try:
                loaded = tsl.load(case["path"])
                result.update(outcome="loaded", same=fingerprint(loaded) == originals[case["seed"]])
            except tsl.StructureFileError as e:
                result.update(outcome="error", message=str(e)[:300])
            except BaseException as e:  # noqa: BLE001 — what the fuzzer is looking for
                result.update(outcome="foreign", type=type(e).__name__, message=str(e)[:300])
            result.update(seconds=time.perf_counter() - t0, grew_mb=peak_mb() - before)
            out.write(json.dumps(result) + "\n")


# ----------------------------------------------------------------------------- parent
def run(n: int, seed: int = 0, folder: Path | None = None) -> dict:
    """Make ``n`` cases and load each in worker processes (restarted after a crash or a hang).
    Returns the summary: counts per outcome and family, and the failing cases."""
    own = folder is None
    tmp = tempfile.TemporaryDirectory() if own else None
    folder = Path(tmp.name) if own else folder
    try:
        cases = make_cases(n, seed, folder)
        cases_file, results_file = folder / "cases.json", folder / "results.jsonl"
        cases_file.write_text(json.dumps(cases))
        results: dict[int, dict] = {}
        start = 0
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent),
                                                            os.environ.get("PYTHONPATH", "")])}
        while start < n:
            proc = subprocess.Popen([sys.executable, __file__, "worker", str(cases_file), str(start),
                                     str(results_file)], env=env, stderr=subprocess.PIPE)
            last, seen_at, started = None, time.monotonic(), None
            while proc.poll() is None:
                time.sleep(0.05)
                lines = results_file.read_text().splitlines() if results_file.exists() else []
                if lines and lines[-1] != last:
                    last, seen_at = lines[-1], time.monotonic()
                if time.monotonic() - seen_at > CASE_TIMEOUT_S + (60 if last is None else 0):
                    proc.kill()
            proc.wait()
            for line in results_file.read_text().splitlines() if results_file.exists() else []:
                r = json.loads(line)
                if r.get("start"):
                    started = r["i"]
                elif r["i"] not in results:
                    results[r["i"]] = r
            if proc.returncode != 0:
                if started is None or started in results:
                    raise RuntimeError(f"fuzz worker failed before a case: "
                                       f"{proc.stderr.read().decode()[-2000:]}")
                results[started] = {"i": started, "outcome": "hang" if proc.returncode == -9
                                    else "crash", "returncode": proc.returncode}
                start = started + 1
            else:
                start = n
            results_file.unlink(missing_ok=True)
        return summarize(cases, results)
    finally:
        if tmp is not None:
            tmp.cleanup()


def summarize(cases: list[dict], results: dict[int, dict]) -> dict:
    failures = []
    counts: dict[str, dict[str, int]] = {}
    for case in cases:
        r = results[case["i"]]
        outcome = r["outcome"]
        if outcome == "loaded":
            outcome = "loaded (same)" if r["same"] else "loaded (different)"
        fam = counts.setdefault(case["family"], {})
        fam[outcome] = fam.get(outcome, 0) + 1
        bad = outcome in ("crash", "hang", "foreign") or r.get("grew_mb", 0) > MEMORY_MB
        if outcome == "loaded (different)" and case["family"] != "header":
            bad = True  # a corruption loaded as something else
        if outcome.startswith("loaded") and case["family"] == "indices":
            bad = True
        if outcome == "error" and case["path"] not in r.get("message", ""):
            bad = True  # the message must name the file
        if bad:
            failures.append({**case, **r})
    return {"cases": len(cases), "by_family": counts, "failures": failures,
            "max_seconds": max((r.get("seconds", 0) for r in results.values()), default=0),
            "max_grew_mb": max((r.get("grew_mb", 0) for r in results.values()), default=0)}


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        worker(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        summary = run(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 0)
        print(json.dumps({k: v for k, v in summary.items() if k != "failures"}, indent=1))
        print(f"failures: {len(summary['failures'])}")
        for f in summary["failures"][:20]:
            print(json.dumps(f)[:400])
        sys.exit(1 if summary["failures"] else 0)
