"""Time to a structure — the single-layer network's accuracy against the time spent learning
its structure, for several thresholds of the learner's stopping rule.

One learner run per seed with the library's defaults (at most ``--max-passes`` passes, the
rule watching but not stopping), its structure kept at every check (every ``--check-every``
samples). The structure ``settle=t`` stops at is the first check whose overlap reaches ``t``;
each threshold's structure (and the run's last) is trained with the single-layer recipe of
``exp_single.py``. ``--v01`` adds the learner as it was in v0.1 (steps of 250 samples, 50 FISTA
iterations, float32, five passes) trained the same way. The mask's stability at each check
(overlap with the check before and with the run's last mask) is kept in ``trajectory``.

    python recipes/exp_learner.py --dataset cifar10 --quick --v01
    python recipes/exp_learner.py --dataset cifar10 --flip --weight-decay 0.001   # paper size
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_args, checkpoint, done, finish, network, seed_range, setup, train_eval  # noqa: E402

from torch_structlearn.bench.learn import V01  # noqa: E402
from torch_structlearn.checks import arg_density as _density  # noqa: E402
from torch_structlearn.checks import arg_positive as _positive  # noqa: E402
from torch_structlearn.learn import learner_for, read_layer  # noqa: E402


def learn_with_checks(cfg: dict, args, seed: int, **settings) -> tuple[list[dict], dict]:
    """The learner's run: a snapshot at each check (samples, passes, seconds spent learning,
    overlap with the check before, layer) and the run's last structure."""
    n = len(cfg["splits"][0][1])
    learner = learner_for(cfg["K"], group_size=args.group_size, seed=seed, verbose=False,
                          settle_density=args.density, check_every=args.check_every,
                          **{**cfg["learn_kw"], **settings})
    snaps, paused = [], [0.0]
    t0 = time.perf_counter()

    def keep(lr) -> None:
        t = time.perf_counter()
        samples = lr.n_samples_seen_
        overlap = lr.stability_[-1][1] if lr.stability_ and lr.stability_[-1][0] == samples else None
        snaps.append({"samples": samples, "passes": samples / n, "overlap": overlap,
                      "seconds": t - t0 - paused[0], "layer": read_layer(lr.dictionary_, args.density)})
        paused[0] += time.perf_counter() - t

    learner.fit(cfg["loader"], on_check=keep)
    last = {"samples": learner.n_samples_seen_, "passes": learner.passes_, "overlap": None,
            "seconds": time.perf_counter() - t0 - paused[0],
            "layer": read_layer(learner.dictionary_, args.density)}
    return snaps, last


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(p, width_quick=400, width_full=1600, resumable=True)
    p.add_argument("--density", type=_density, default=0.05)
    p.add_argument("--thresholds", type=_density, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9],
                   help="stopping-rule thresholds (settle) whose structures are trained")
    p.add_argument("--max-passes", type=_positive(int), default=5)
    p.add_argument("--check-every", type=_positive(int), default=10_000,
                   help="samples between two checks of the stopping rule")
    p.add_argument("--train-checks", action="store_true",
                   help="train the structure of every check, not only the thresholds' (with "
                        "--check-every set to the training images, the structure of each pass)")
    p.add_argument("--v01", action="store_true",
                   help="also learn with the v0.1 learner's settings and train that structure")
    args = p.parse_args(argv)
    cfg = setup(args, "learner")
    rows = list(cfg["done"])
    trajectories = []
    for seed in seed_range(args):
        snaps, last = learn_with_checks(cfg, args, seed, epochs=args.max_passes, settle=None)
        final = last["layer"].connectivity
        trajectories.append({"seed": seed, "checks": [
            {k: s[k] for k in ("samples", "passes", "overlap", "seconds")}
            | {"overlap_last": s["layer"].connectivity.overlap(final)} for s in snaps]})
        if snaps and snaps[-1]["samples"] == last["samples"]:  # the run ended on a check
            last = snaps.pop()
        picks: dict[int, list[float]] = {}  # snapshot index (-1: the last) -> thresholds
        for t in args.thresholds:
            i = next((i for i, s in enumerate(snaps)
                      if s["overlap"] is not None and s["overlap"] >= t), -1)
            picks.setdefault(i, []).append(t)
        picks.setdefault(-1, [])
        if args.train_checks:
            for i in range(len(snaps)):
                picks.setdefault(i, [])
        variants = {}
        for i, ts in sorted(picks.items(), key=lambda kv: kv[0] if kv[0] >= 0 else len(snaps)):
            s = snaps[i] if i >= 0 else last
            variants[f"check {i + 1}" if i >= 0 else "last"] = (s, ts)
        if args.v01 and not done(rows, method="v0.1", seed=seed):
            t0 = time.perf_counter()
            v01 = learn_with_checks(cfg, args, seed, **V01)[1]
            v01["seconds"] = time.perf_counter() - t0
            variants["v0.1"] = (v01, [])
        for name, (s, ts) in variants.items():
            if done(rows, method=name, seed=seed):
                continue
            layer = s["layer"]
            torch.manual_seed(seed)
            model = network(conn=layer.connectivity, values=layer.values, d=cfg["d"], K=cfg["K"],
                            group_size=args.group_size, n_classes=cfg["n_classes"])
            r = train_eval(model, cfg["splits"], seed=seed, **cfg["fit"])
            rows.append({"method": name, "seed": seed, "thresholds": ts, "passes": s["passes"],
                         "learn_seconds": s["seconds"], "overlap": s["overlap"],
                         "density": layer.connectivity.density, **r})
            print(f"{name:>9} seed {seed}: {s['passes']:.2f} passes, {s['seconds']:.0f} s, "
                  f"thresholds {ts}: test {r['test_accuracy']:.4f}", flush=True)
            checkpoint("learner", args, cfg, rows)
    earlier = (cfg["earlier"] or {}).get("trajectories", [])  # --first-seed extends them too
    finish("learner", args, cfg, rows, density=args.density, thresholds=args.thresholds,
           max_passes=args.max_passes, check_every=args.check_every,
           trajectories=earlier + trajectories)
    return 0


if __name__ == "__main__":
    sys.exit(main())
