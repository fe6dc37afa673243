"""Generate recipes/RESULTS.md (and PNG plots) from the JSON files the experiments wrote in
runs/repro/ — never edited by hand:

    python recipes/make_results.py            # needs matplotlib for the plots (pip install '.[repro]')
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "repro"
OUT = ROOT / "recipes" / "RESULTS.md"
FIG = ROOT / "recipes" / "figures"
BASELINES = ["random", "random-local", "rbm", "snip", "synflow"]

# Short analyses, by result file (prose only: every number stays in the generated tables).
ANALYSIS = {
    "density-mnist-quick": (
        "Learned connectivity beats random connectivity of the same per-unit fan-in, the "
        "sparsifying RBM and SynFlow at every density, and SNIP from 5 % up — the comparisons "
        "the paper makes hold here. It does **not** beat *random-local* (each unit wired to the "
        "pixels nearest a random centre), which wins at every density: on centred MNIST digits "
        "a compact receptive field is already a strong prior, and our learned masks, though "
        "stroke-shaped (README figure), are less compact than a disc of nearest pixels. SNIP "
        "uses the labels, which structure learning does not. A --quick run (10 000 images, "
        "K = 256, 8 epochs); the full setting may differ."),
}


def _stats(vals):
    m = statistics.mean(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return m, s


def density_section(res: dict) -> list[str]:
    rows = res["rows"]
    methods = [m for m in ["learned", *BASELINES] if any(r["method"] == m for r in rows)]
    dens = sorted({r["density"] for r in rows if r["method"] != "dense"})
    label = " (--quick)" if res["quick"] else ""
    lines = [f"### Density sweep — {res['dataset']}{label}", "",
             f"Command: `{res['command']}`  ",
             f"Hardware: {res['machine']}; wall time {res['wall_seconds'] / 60:.1f} min; "
             f"{res['n_train']} training images, K = {res['width']}, group size {res['group_size']}, "
             f"{res['epochs']} epochs, seeds 0–{res['seeds'] - 1}. Test accuracy, mean ± std over "
             "seeds (validation accuracy in the JSON).", "",
             "| method | " + " | ".join(f"{d:.0%}" for d in dens) + " |",
             "|---|" + "---|" * len(dens)]
    mean = {}
    for m in methods:
        cells = []
        for d in dens:
            vals = [r["test_accuracy"] for r in rows if r["method"] == m and r["density"] == d]
            mu, sd = _stats(vals)
            mean[(m, d)] = mu
            cells.append(f"{mu:.2%} ± {sd:.2%}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    dv = [r["test_accuracy"] for r in rows if r["method"] == "dense"]
    if dv:
        mu, sd = _stats(dv)
        lines.append(f"| dense (100 %) | {mu:.2%} ± {sd:.2%} |" + " |" * (len(dens) - 1))
    lines.append("")
    if "learned" in methods:
        verdict = []
        for d in [d for d in dens if d <= 0.10 + 1e-9]:
            losers = [b for b in methods[1:] if mean[(b, d)] >= mean[("learned", d)]]
            verdict.append(f"{d:.0%}: " + ("learned best" if not losers else
                                            "learned **not** best (beaten or tied by " + ", ".join(losers) + ")"))
        ok = all("not" not in v for v in verdict)
        lines.append(f"Target *learned beats every baseline at every density ≤ 10 %*: "
                     f"{'met' if ok else '**missed**'} — " + "; ".join(verdict) + ".")
        lines.append("")
    return lines


def density_plot(res: dict) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = res["rows"]
    dens = sorted({r["density"] for r in rows if r["method"] != "dense"})
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in ["learned", *BASELINES]:
        pts = [[r["test_accuracy"] for r in rows if r["method"] == m and r["density"] == d] for d in dens]
        if not all(pts):
            continue
        ax.errorbar([d * 100 for d in dens], [statistics.mean(p) for p in pts],
                    yerr=[statistics.stdev(p) if len(p) > 1 else 0 for p in pts], label=m, marker="o",
                    capsize=3)
    dv = [r["test_accuracy"] for r in rows if r["method"] == "dense"]
    if dv:
        ax.axhline(statistics.mean(dv), color="k", ls="--", label="dense")
    ax.set_xscale("log")
    ax.set_xlabel("density (%)")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{res['dataset']}{' (quick)' if res['quick'] else ''}")
    ax.legend(fontsize=8)
    FIG.mkdir(parents=True, exist_ok=True)
    name = f"density-{res['dataset']}{'-quick' if res['quick'] else ''}.png"
    fig.tight_layout()
    fig.savefig(FIG / name, dpi=120)
    plt.close(fig)
    return f"figures/{name}"


def main() -> int:
    files = sorted(RUNS.glob("*.json"))
    if not files:
        print(f"no results in {RUNS}; run the experiments first", file=sys.stderr)
        return 2
    lines = ["# Results", "",
             "Generated by `python recipes/make_results.py` from the JSON files in `runs/repro/` "
             "(copies in `recipes/results/`); every number has its command and hardware next to it. "
             "CIFAR-10 here is the lossy JPEG copy (quality 75, mean error ≈ 5.8/255, see its "
             "SOURCE.md), so absolute CIFAR-10 accuracies may differ from the original data set's. "
             "Numbers from `--quick` runs are labelled as such. All choices were made on a "
             "validation split held out of the training images; the test set was only evaluated.", ""]
    for f in files:
        res = json.loads(f.read_text())
        if res.get("experiment") == "density":
            lines += density_section(res)
            png = density_plot(res)
            if png:
                lines += [f"![accuracy vs density]({png})", ""]
        if f.stem in ANALYSIS:
            lines += ["*Analysis.* " + ANALYSIS[f.stem], ""]
        copy = ROOT / "recipes" / "results" / f.name
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text(f.read_text())
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
