"""Generate recipes/RESULTS.md (and PNG plots) from the experiments' JSON files — the committed
ones in recipes/results/ and any newer run in runs/repro/, which is copied there — never edited
by hand:

    python recipes/make_results.py            # needs matplotlib for the plots (pip install '.[repro]')
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "recipes"))
from common import RUNS, SHIPPED, TUNED, recipe_suffix, recorded, result_files  # noqa: E402

from torch_structlearn.files import write_atomic as _write_atomic  # noqa: E402

OUT = ROOT / "recipes" / "RESULTS.md"
FIG = ROOT / "recipes" / "figures"
BASELINES = ["random", "random-local", "rbm", "snip", "synflow"]

# Short analyses, by result file (prose only: every number stays in the generated tables).
ANALYSIS = {
    "density-mnist": (
        "The full setting (55 000 images, K = 1600, 40 epochs) on the CPU, three seeds, one "
        "call per seed (48–58 min each here). Learned connectivity is the best structure at "
        "every density up to 10 % (mean of 3 seeds, as the target asks), by 0.61, 0.45, 0.17 "
        "and 0.03 test points over the runner-up (SNIP, which reads the labels, at 1 %; "
        "random-local above). The margin shrinks as the fan-in grows: at 10 % it is inside the "
        "seeds' spread and validation has the two level (98.38 % against 98.39 %), and at 25 % "
        "random-local is ahead (98.52 % against 98.40 %). The dense layer of the same width "
        "(98.12 %) is level with the learned 1 % layer (fan-in 8 of 784) and behind it at every "
        "higher density."),
    "density-cifar10-flip-wd0.001": (
        "The full setting (45 000 images, K = 1600, 40 epochs) with the training recipe chosen "
        "on the validation split (random flips, weight decay 0.001; section *Validation choice "
        "of the training recipe*), three seeds on the 2-core CPU (110 min for seed 0, 136 min for "
        "seed 1 in two parts, interrupted and resumed with --resume, 131 min for seed 2). Learned "
        "connectivity is the best structure at every density up to 10 % on every seed, by "
        "2.8 points over the runner-up (random-local) at 1 %, 2.1 at 2 %, 1.2 at 5 % and 0.6 at "
        "10 % (per seed +1.24 / +0.37 / +0.31: the margin at 10 % is about one standard "
        "deviation). At 25 % the two are level (61.64 against 61.60 %; learned ahead on seeds 0 "
        "and 1, 0.87 points behind on seed 2, and 0.26 behind on validation) — as on MNIST, "
        "random-local catches up as the fan-in grows. SNIP, which reads the labels, is 4.7 points "
        "behind at 1 % and 3.5 at 10 %. Every learned layer, the 1 % one (fan-in 31 of 3072) "
        "included, is ahead of the dense layer of the same width (55.9 %), which is below every "
        "sparse structure but the 1 % random, RBM, SNIP and SynFlow ones. From 10 % to 25 % every "
        "structure but SynFlow (flat) loses test accuracy (0.7-1.9 points; learned the most). "
        "Seed 2 recorded training accuracy (unflipped training images), and this is overfitting: "
        "from 10 % to 25 % the learned layer's training accuracy rises from 76.1 to 81.4 % while "
        "its test accuracy falls from 63.2 to 61.3 %; random-local, which fits least (77.4 % at "
        "25 %), generalises best there. The dense layer fits the training set less well than any "
        "25 % structure (75.8 %) and still generalises worst: under this recipe (whose weight "
        "decay the fully connected layer's own validation grid also picks; section *Validation "
        "choice of the training recipe, fully connected layer*) it loses on fitting as well as "
        "on generalisation."),
    "density-mnist-quick": (
        "With the validation-chosen settings (ZCA ε 8, active fraction 0.3; section *Validation "
        "choices*) learned connectivity beats every baseline at every density up to 10 %: "
        "random connectivity of the same per-unit fan-in, the sparsifying RBM, SNIP (which "
        "uses the labels), SynFlow, and random-local wiring, which won at every density when "
        "this sweep ran with the earlier settings (ε 0.1, active fraction 0.05; git history). "
        "At 25 % random-local and the dense layer are ahead. Two changes did it: the weaker "
        "whitening helps every method, and the larger active fraction makes the learned masks "
        "compact — with active fraction 0.05 the codes end up far sparser than intended (well "
        "under 1 % active) and the atoms stay close to the training images they started from. "
        "A --quick run (10 000 images, K = 256, 8 epochs); the full setting may differ."),
    "density-cifar10-quick": (
        "With the validation-chosen whitening and learner settings (section *Validation "
        "choices*: ZCA ε 8 instead of 0.1, active fraction 0.3) learned connectivity is the "
        "best structure at every density up to 10 % — ahead of random-local wiring too, which "
        "beat it at every density when the sweep ran with ε 0.1 (git history of this file) — "
        "and ahead of the dense layer from 2 % up under this short recipe. At 25 % random-local "
        "is level with it. The weaker whitening lifted every method, the dense layer included, by "
        "about ten points (the ε 0.1 table is in this file's git history): at ε 0.1 whole-image "
        "ZCA amplifies high-frequency (and JPEG) noise that a 256-unit network cannot use. "
        "A --quick run (10 000 images, "
        "K = 256 pooled to 64 features, 8 epochs); the full setting (the section with the "
        "training recipe above) has learned connectivity first on test at every density up to "
        "10 % on all three seeds, and level with random-local at 25 % too."),
    "single-cifar10-quick": (
        "The learned single layer beats the fully connected layer of the same width and recipe "
        "on every seed, by about the margin the paper reports, but at --quick scale: absolute "
        "accuracies are far below the paper's because of the smaller K, data and training. "
        "With the earlier settings (ZCA ε 0.1) the full setting did not keep this advantage "
        "(the full-setting section with ZCA ε 0.1); with the validation choices it does, on "
        "every seed (the section after it)."),
    "single-cifar10": (
        "The paper's setting (K = 1600, 45 000 training images, 40 epochs, 5 dictionary "
        "passes) with the validation choices (ZCA ε 8, active fraction 0.3), three seeds run "
        "one per command on the 2-core CPU (32–38 min each; seed 0 shared the CPU with the test "
        "suite). The learned layer is ahead of the fully connected one on every seed, by 3.8 to "
        "4.1 points, so the margin part of the target (≥ 2.5 points) is met. Against the same "
        "setting with the earlier ε 0.1 and active fraction 0.05 (the CIFAR-10 section marked "
        "*not the validation choices*) the learned "
        "layer gained about ten points and the fully connected one about five: the earlier "
        "whitening and learner settings, not the network, were most of the gap to the paper. "
        "The 63 % part is still **missed**, by about 5.6 points, and the fully connected layer "
        "is about 7 points below the paper's 60.4 %: the rest of the gap is in what both share "
        "(the network of docs/algorithm.md §6 — whole image → 1 600 units → L2 pooling to 400 "
        "features → linear head — trained with Adam, cosine schedule and no augmentation; the "
        "paper's full text and recipe are not available to us). The training recipe was that "
        "rest: with flips and weight decay chosen on the validation split (the sections "
        "*Validation choice of the training recipe* and the CIFAR-10 single layer marked "
        "*training: …*) the learned layer passes 63 %. The learned layer trained about 3× faster "
        "(train_seconds in the JSON)."),
    "single-cifar10-flip-wd0.001": (
        "The same setting trained with the recipe chosen on the validation split (section "
        "*Validation choice of the training recipe*: random flips, weight decay 0.001), seeds "
        "run one per command on the 2-core CPU (30–38 min each). The learned layer passes "
        "the paper's 63.0 % on every seed (63.40–63.81 %, 6.8–7.9 points ahead), and its lead over the fully connected layer grew: the recipe "
        "lifted the learned layer by about six points over the plain recipe and the fully "
        "connected layer by under three. Both networks had the same recipe, as the target asks, and it is "
        "also the fully connected layer's own validation choice (section *Validation choice of "
        "the training recipe, fully connected layer*: weight decay 0.001 of 0 / 0.001 / 0.003 / "
        "0.01, all with flips; training it without flips was not tried), so the weight decay "
        "at least is not tuned for the learned layer alone."),
    "single-fashion-mnist": (
        "The full setting on Fashion-MNIST (K = 1600, 55 000 images, 40 epochs, the validation "
        "choices: ZCA ε 2, active fraction 0.05), 20 min per seed on the 2-core CPU (the third "
        "seed took 31 min, sharing the machine with other work), 3 seeds. The two layers are "
        "level within seed noise (learned 89.44 / 89.64 / 89.52 %, fully connected 89.42 / "
        "89.93 / 89.62 %; the fully connected layer ahead by 0.13 points on the mean, and ahead "
        "on the validation split on every seed). At --quick scale (10 000 images, K = 400) the fully connected "
        "layer led by 1.7 points: as on MNIST, more data narrows its lead, but on "
        "Fashion-MNIST that does not turn into a win for the learned layer, which keeps 5 % of "
        "the first layer's weights. The plain training recipe was used (no flips, no weight "
        "decay); no training-recipe grid was run for Fashion-MNIST."),
    "single-cifar10-eps0.1": (
        "The paper's setting (K = 1600, 45 000 training images, 40 epochs, 5 dictionary "
        "passes) with the settings used before the validation choices (ZCA ε 0.1, active "
        "fraction 0.05), run on the 2-core CPU (about 30 min per seed, two thirds of it dictionary "
        "learning). Both targets are **missed**. (1) The learned layer is about 15 points below "
        "63 %, and the fully connected layer about 12 points below the paper's 60.4 %: most of "
        "the gap is the network and training recipe, which both share, not the structure. This network (whole "
        "image → 1 600 units → L2 pooling to 400 features → linear head, Adam, no augmentation) "
        "is the one docs/algorithm.md §6 describes; the paper's full text, and with it its exact "
        "pipeline, is not available to us, and we did not tune the recipe toward the test set. "
        "(2) At this scale the two are tied within seed noise (the fully connected layer ahead "
        "on seeds 0 and 1 by 0.3–0.4 points, the learned one on seed 2 by 0.3; means 0.13 "
        "points apart), where at --quick scale (10 000 images, K = 400) the learned layer led "
        "by 2.4 points on every seed: with 4.5× the data the dense layer no longer over-fits "
        "more than the sparse one. The learned layer keeps 5 % of the first layer's weights and trained "
        "2.5× faster per run (train_seconds in the JSON: about 150 s against 370 s for 40 "
        "epochs)."),
    "tune-training-cifar10": (
        "The structure was learned once (seed 0, the full setting: K = 1600, 45 000 images, the "
        "validation choices for whitening and learner) and the learned single-layer network "
        "trained with each recipe. Weight decay 0.001 is the best of the grid with or without "
        "flips, with a drop on both sides of it; flips add to it. Without either the validation "
        "accuracy equals that of seed 0 of the full run without them (the CIFAR-10 full "
        "single-layer section without a *training* mark), as it should for the same seed. The fully connected layer's own grid "
        "(next section) chose the same recipe; the full run trains both networks with it."),
    "tune-training-fc-cifar10": (
        "The same grid with flips on (the learned layer's grid showed flips helping at every "
        "weight decay up to 0.003, and each fully connected cell costs 8–16 min on this CPU), "
        "trained on the fully connected single layer. Weight decay 0.001 is its best too, but "
        "the fully connected layer hardly responds to weight decay up to 0.003 (56.0–56.2 %, "
        "where the learned layer ranges over 59.5–64.2 %), and 0.01 costs it three points. Its "
        "validation accuracy at 0.001 equals that of seed 0 of the full run (56.20 %), as it "
        "should for the same seed and recipe. The cells' train_seconds range over 499–949 s, "
        "against 457–465 s for the same network in the full runs; most likely the shared VM's "
        "load (not measured)."),
    "single-mnist-quick": (
        "On MNIST the fully connected layer wins at --quick scale: at 5 % density the learned "
        "layer keeps a twentieth of the weights and loses under a point (about a point with the "
        "earlier settings, ZCA ε 0.1). The paper's single-layer claim is about CIFAR-10, where "
        "the learned layer wins at --quick scale; at full scale (the next section) the learned "
        "layer wins on MNIST too."),
    "single-mnist": (
        "The full setting on MNIST (K = 1600, 55 000 training images, 40 epochs) with the "
        "validation choices (ZCA ε 8, active fraction 0.3), seeds run one per command "
        "(18–20 min each on the 2-core CPU). The learned layer is ahead of the fully "
        "connected one on every seed, as it was with the earlier settings (the MNIST section "
        "marked *not the validation choices*), and both gained about a point over those "
        "settings. The reverse of the --quick result: "
        "with 1 600 units the dense first layer has 1.25 M weights and its validation accuracy "
        "is lower too, which points to over-fitting (training accuracy was not recorded). The "
        "learned layer trained about 2× faster (train_seconds in the JSON)."),
    "single-mnist-eps0.1": (
        "The full setting on MNIST (K = 1600, 55 000 training images, 40 epochs; about 16 min per "
        "seed on the 2-core CPU) with the settings from before the validation choices (ZCA ε 0.1, "
        "active fraction 0.05): the learned layer is *ahead* of the fully connected one on every "
        "seed, the reverse of the --quick result (K = 400, 10 000 images), where the dense "
        "layer wins. With 1 600 units the dense first layer has 1.25 M weights; its validation "
        "accuracy is lower too, which points to over-fitting (training accuracy was not "
        "recorded). The learned layer keeps 5 % of those weights and trained about 1.7× faster."),
    "mask-mnist-quick": (
        "The mask carries most of the benefit: with the same random initialisation the learned "
        "mask is clearly better than a random mask of the same fan-in (by more than two points), "
        "and the dictionary initialisation adds a few tenths of a point "
        "on top — within about one standard deviation, so the initialisation's part is small. "
        "A dense layer started from the dictionary is better still — at 5 % density the sparse "
        "layer gives up under two points for a twentieth of the weights. At full scale (below) "
        "that order reverses: the learned mask is ahead of the dense layer on every seed."),
    "mask-mnist": (
        "The paper's scale on MNIST (K = 1600, 55 000 images, 5 dictionary passes, 40 epochs, the "
        "validation choices), three seeds on the 2-core AMD EPYC: 14.5, 12.2 and 12.1 min (26 s of "
        "training per sparse network, 118 s for the dense one). The mask carries the benefit: with "
        "the same random initialisation the learned mask is 0.67 points ahead of a random mask of "
        "the same fan-in (98.59 against 97.92 %, ahead on every seed and on validation), and the "
        "dictionary initialisation adds 0.03 point on test, inside the seed spread (0.15 on "
        "validation). The learned mask with the dictionary initialisation matches the "
        "single-layer run's seeds 0-2 to within 0.02 point (98.56, 98.62, 98.67 % against 98.56, 98.62, "
        "98.69 %). "
        "The dense layer started from the dictionary is 0.36 points behind the learned mask on "
        "every seed (98.26 %) — the reverse of the --quick run (K = 256, 10 000 images), where it "
        "led by 1.7 points — and 0.25 ahead of the fully connected layer from a random start "
        "(98.01 %, single-layer run). Every network fits the training set exactly (100 % training "
        "accuracy), so the order is one of generalisation: at this scale the 5 % learned mask is "
        "both the smaller and the better network, as on CIFAR-10."),
    "mask-fashion-mnist": (
        "The paper's scale on Fashion-MNIST (K = 1600, 55 000 images, 5 dictionary passes, 40 "
        "epochs, the validation choices), three seeds on the 2-core AMD EPYC, 12-13 min each (24 s "
        "of training per sparse network, 125 s for the dense one). The mask carries the benefit "
        "here too: with the same random initialisation the learned mask is 0.81 points ahead of a "
        "random mask of the same fan-in (89.36 against 88.55 %, ahead on every seed and on "
        "validation), and the dictionary initialisation adds 0.06 point on test, inside the seed "
        "spread (0.17 on validation). Unlike on MNIST and CIFAR-10, the dense layer started from the "
        "dictionary is level with the learned mask: 0.12 points ahead on test (ahead on seeds 0 "
        "and 1, behind on seed 2) and 0.19 ahead on validation, on every seed — as in the "
        "single-layer comparison on this data set, where the fully connected layer is level too. "
        "Every network fits the training set exactly. The same seed's learned 5 % layer (the "
        "same data, dictionary settings and recipe) scored 89.21 / 89.55 / 89.49 % here, 89.44 / "
        "89.64 / 89.52 % in the single-layer run and 89.41 / 89.55 / 89.49 % in the density sweep. "
        "That is hardware and kernels, not chance: on the same machine with the same kernels a "
        "seed reproduces bit for bit at full scale. Seeds 1 and 2 of the density sweep (AMD EPYC, "
        "a day earlier, other commits) match this run in every field (validation, test, training "
        "loss, score), and rerunning seed 0 here (`python recipes/exp_mask.py --dataset "
        "fashion-mnist --seeds 1` at commit ad4be2d, 12.7 min) gave all four rows identical in "
        "every field but the time. Seed 0 of the density sweep ran on an Intel Xeon, and the "
        "single-layer run trained with torch's CSR kernels before the fused CPU kernels existed "
        "(74-102 s per learned network against 22-27 s); summing in another order moves a result "
        "by up to 0.2 point here, so differences below that between results made on different "
        "machines or kernels are not resolved. Every row now records its machine and commit."),
    "mask-cifar10-flip-wd0.001": (
        "The paper's scale (K = 1600, 45 000 images, 5 dictionary passes, 40 epochs) with the "
        "validation-chosen training recipe (flips, weight decay 0.001), three seeds on the 2-core "
        "CPU: seed 0 in 41 min (data and dictionary about 20 min; 136-138 s of training per sparse "
        "network, 856 s for the dense one), seeds 1 and 2 in 54 and 47 min while other jobs shared "
        "the cores. As in the --quick run, the mask carries the benefit: with the same random "
        "initialisation the learned mask is 4.8 points ahead of a random mask of the same fan-in "
        "(63.65 against 58.84 %, ahead on every seed), and the dictionary initialisation adds 0.07 "
        "point, inside the seed spread. The dense layer started from the dictionary is the worst of "
        "the four on every seed, 7.2 points behind the learned mask and 2.3 behind the random mask, "
        "so at this scale the 5 % learned mask is both the smaller and the better network. Seeds 1 "
        "and 2 also recorded training accuracy (unflipped training images): 71.7 / 72.0 % for the "
        "two learned-mask networks, 73.4-73.6 % for the random mask and 75.9-76.1 % for the dense "
        "layer, so the order on the training set is the reverse of the order on test: the dense "
        "layer fits the training set best and generalises worst (a gap of 19.0-19.7 points, against "
        "8.0-8.2 for the learned mask). Differences below about half a point are not resolved by "
        "three seeds. The attempt before "
        "these trained without flushing denormals (README, *Denormals on the CPU*): 63.73 / 63.64 % "
        "for the learned mask, and 47 min for 13 of the dense layer's 40 epochs."),
    "mask-cifar10-quick": (
        "On CIFAR-10 the mask carries all of the benefit: with the same random initialisation the "
        "learned mask is 2.65 points ahead of a random mask of the same fan-in (46.05 against "
        "43.40 %), and the dictionary initialisation adds 0.1 point, well inside one standard "
        "deviation. Unlike on MNIST, the dense layer started from the same dictionary is behind "
        "the learned mask (44.41 %, 1.75 points behind), so here the 5 % mask is no compromise: a "
        "twentieth of the weights and the better network. A --quick run (10 000 images, K = 256, "
        "8 epochs, 1.5 min)."),
    "depth-mnist-quick": (
        "Each seed grows one stack to depth 4 and every forced depth is a prefix of it, so the "
        "rows differ only by the added layers. Depth 2 is the best forced depth on validation "
        "and test (about 0.3 points above depth 1, a little over one seed's spread), depths 3 "
        "and 4 fall back to depth 1's level, and the coding-efficiency score falls with every "
        "layer. The stopping rule picks depth 1 on every seed — it stops one layer before the "
        "most accurate network here, at a cost of about 0.3 points. With the earlier settings "
        "(ε 0.1) accuracy fell with every added layer."),
    "density-fashion-mnist-quick": (
        "With the validation-chosen settings (ZCA ε 2; the learner's active fraction stays "
        "0.05, which validation preferred here by a hair) learned connectivity beats random, "
        "the RBM, SNIP and SynFlow at every density. Against random-local it is ahead at 1 %, "
        "level at 2 % and 10 % (within a few hundredths of a point) and behind at 5 %. (The "
        "issue's target names CIFAR-10 and MNIST only.)"),
    "density-fashion-mnist": (
        "The full setting on Fashion-MNIST (K = 1600, 55 000 images, 40 epochs, the validation "
        "choices ZCA ε 2 and active fraction 0.05), 3 seeds — 75 min for seed 0 on the 2-core "
        "Intel Xeon CPU, 34 and 32 min for seeds 1 and 2 on the 2-core AMD EPYC. Learned "
        "connectivity beats random, the RBM, SNIP and SynFlow at every density on test, by 0.4 "
        "to 2.1 points. Random-local wiring is its match here: on test it is ahead of learned "
        "at 1 % (by 0.46 points) and 2 % (0.25), on every seed, and behind at 5, 10 and 25 % "
        "by 0.13, 0.06 and 0.12 points (at 10 % on one seed of three); on validation it is "
        "level at 1 %, ahead at 2 % (0.49), within 0.05 at 5 and 10 % and ahead at 25 % "
        "(0.30). The --quick sweep showed the same (level with or behind random-local from "
        "2 %): on Fashion-MNIST the learned masks are worth their locality, and not clearly "
        "more. The dense layer (89.70 ± 0.33 %) is 0.22 points ahead of learned at 5 % and "
        "0.35 and 0.36 behind it at 10 and 25 %. Every network at 5 % or more fits the training set "
        "exactly. (The issue's target names CIFAR-10 and MNIST only.)"),
    "single-fashion-mnist-quick": (
        "As on MNIST, the fully connected layer wins on Fashion-MNIST, by one to two points: "
        "the learned layer keeps a twentieth of the weights. The single-layer advantage the "
        "paper reports is a CIFAR-10 result, and at --quick scale it holds only there."),
    "depth-fashion-mnist-quick": (
        "Forced depths 1–3 are level on test (within a few tenths of a point), depth 1 is best "
        "on validation, depth 4 is lower on both, and the score falls with every layer. The "
        "stopping rule picks depth 1 on every seed, the validation-best depth."),
    "depth-fashion-mnist": (
        "The paper's scale on Fashion-MNIST (K = 1600, 55 000 training images, 5 dictionary "
        "passes, 40 epochs, the validation choices ZCA ε 2 and active fraction 0.05), three "
        "seeds — 37.6, 38.7 and 37.5 min on the 2-core AMD EPYC CPU, of which growing the four "
        "layers took 34 each. Forced depth 1 (89.54, 89.80, 89.21 %) is within 0.3 points of "
        "the single-layer run's seeds 0–2 (89.44, 89.64, 89.52 %). This is the one data set "
        "and scale where the stopping rule keeps a second layer: on every seed the second "
        "layer's unsupervised score rises (0.620 → 0.661, 0.617 → 0.643, 0.601 → 0.625; "
        "relative gains +0.066, +0.043, +0.040, above min_gain 0.01) and the third's falls "
        "(0.285, 0.203, 0.213), so the rule keeps depth 2. Depth 2 is also the most accurate "
        "depth on test: 90.11 ± 0.25 % against 89.52 ± 0.30 % for depth 1 (+0.59 points; "
        "+0.73, +0.02 and +1.02 on seeds 0–2), and depths 3 and 4 fall back to 89.70 and "
        "89.69 %. On validation depths 2–4 are level (90.19, 90.23, 90.19 %) and all ahead of "
        "depth 1 (90.00 %); choosing the depth on validation (3, 2 and 3 on seeds 0–2) gives "
        "89.73 % mean test accuracy against the rule's 90.11 %. Every depth fits the training "
        "set exactly, so the gain is in generalisation. So here the paper's claim that the "
        "depth chosen by coding efficiency is a good trade-off is reproduced: the rule picks "
        "the test-best depth, within 0.04 validation points of the validation-best one. At "
        "--quick scale (the section before) the second layer's score fell, the rule kept one "
        "layer and depths 1–3 were level. The trained networks' score E (the table's column, "
        "measured after supervised training) falls with every layer, as everywhere else, while "
        "accuracy peaks at depth 2."),
    "depth-cifar10-quick": (
        "Depths 1 and 2 are level (depth 2 ahead on test by 0.15 points, behind on validation "
        "by 0.2, both within the seed spread); depths 3 and 4 lose about one and two points. "
        "The score falls with every layer and the stopping rule picks depth 1 on every seed, "
        "the validation-best depth. So the rule's choice is right, but the paper's claim that "
        "learned depth beyond one layer helps is not reproduced at --quick scale (K = 256, "
        "10 000 images); the full-scale run (the section before) does not reproduce it either."),
    "depth-cifar10-flip-wd0.001": (
        "The paper's scale (K = 1600, 45 000 training images, 5 dictionary passes, 40 epochs) "
        "with the validation-chosen training recipe (flips, weight decay 0.001), three seeds "
        "run one per command on the 2-core AMD EPYC CPU: 96, 53 and 36 min (seed 0 paused "
        "about 10 min for benchmarks and shared the CPU with the test suite, as did part of "
        "seed 1; seed 2 ran alone); growing the four layers took 77, 49 and 31 min, the first "
        "layer's dictionary 32, 29 and 13 of them. The seeds agree. Forced depth 1 (63.86, "
        "63.99, 64.04 %) is 0.2–0.6 points above the single-layer run's seeds of the same "
        "setting (63.61, 63.40, 63.81 %). Depth 2 is ahead of it on validation on every seed "
        "(+0.32, +0.18, +0.78 points) and behind on test on every seed (−0.20, −0.92, −0.58); "
        "depth 3 loses about a point on test and depth 4 about two. The score falls with every "
        "layer on every seed (relative gains −0.36, −1.39, −1.23; −0.40, −1.39, −0.79; −0.39, "
        "−1.49, −2.36), so the stopping rule keeps depth 1, the test-best depth; picking the "
        "depth on validation would take depth 2 on every seed and give 63.40 % against the "
        "rule's 63.96 %. The paper's claim that learned depth beyond one layer helps is **not "
        "reproduced** on CIFAR-10 at full scale: a second layer of the same width on the "
        "pooled features raises validation accuracy a little and lowers test accuracy."),
    "depth-mnist": (
        "The paper's scale on MNIST (K = 1600, 55 000 training images, 5 dictionary passes, "
        "40 epochs), three seeds — 71, 64 and 62 min on the 2-core CPU, of which the four "
        "layers' dictionaries took 57, 53 and 50. Forced depth 1 (98.57, 98.63, 98.68 %) "
        "reproduces the single-layer run's seeds 0–2 (98.56, 98.62, 98.69 %). Unlike on "
        "CIFAR-10, depth helps here, a little: depths 2, 3 and 4 are 0.07, 0.09 and 0.18 "
        "points ahead of depth 1 on test (mean of 3 seeds) and 0.01, 0.17 and 0.22 on "
        "validation. Only depth 4 is ahead on every seed and both splits (test +0.19, +0.14, "
        "+0.22); depth 3's +0.22 on seed 0 shrinks to 0.00 and +0.05 on seeds 1 and 2. "
        "Choosing the depth on validation (3, 4 and 2 on seeds 0, 1, 2) gives 98.77 % mean "
        "test accuracy against the rule's 98.63 %. Every depth fits the training set exactly, "
        "so the gain is in generalisation. The stopping rule keeps depth 1 on every seed: the "
        "second layer's unsupervised score falls (0.540 → 0.141, 0.530 → 0.152, 0.538 → "
        "0.055) and the rule stops there, although the third layer's rises again (0.406, "
        "0.386, 0.364) before the fourth's falls (0.078, −0.014, −0.068). The layer scores "
        "repeat across seeds, so this is the score's behaviour, not noise, and the most "
        "accurate depth is the one whose last layer the rule would reject. The trained "
        "network's score E falls with every layer on every seed, as everywhere else. So the "
        "paper's claim that learned layers beyond the first help is reproduced on MNIST at "
        "full scale (3 seeds, +0.1 to +0.2 points on test), but its claim that the score "
        "picks the depth is not."),
    "cnn-cifar10-quick": (
        "For context only: a small CNN trained with the same recipe (whose learning rate was "
        "tuned for the sparse layers, not for it — one seed ends several points below the "
        "other two) is 14 points above the learned single layer at the same --quick scale "
        "(47.27 %), as expected from convolution's built-in locality and weight sharing. It is "
        "not a reference for the full-scale runs (64 hidden units, 10 000 training images, 8 "
        "epochs): that is the CNN section marked *training: …*."),
    "cnn-mnist": (
        "For context: the same CNN at MNIST's full setting — 400 hidden units, 55 000 training "
        "images, 40 epochs, the recipe of the learned MNIST runs — three seeds run one per "
        "command on the 2-core AMD EPYC CPU (10–14 min of training each; the first shared the "
        "machine with other work). It reaches 99.28 %, 0.66 points above the learned single "
        "layer of the same setting (98.62 %, the single-layer MNIST section) and 0.47 above "
        "the best learned stack (98.81 %, forced depth 4), i.e. about half their test error "
        "(0.72 % against 1.38 % and 1.19 %). It has 1.31 M weights against 0.07 M for the "
        "learned single layer and its head. As on CIFAR-10, the learned structures are behind "
        "this small hand-designed CNN on every seed, so 'comparable to expert-designed "
        "structures' is **not reproduced**; the gap in points is smaller only because MNIST "
        "leaves less room."),
    "cnn-fashion-mnist": (
        "For context: the same CNN at Fashion-MNIST's full setting — 400 hidden units, 55 000 "
        "training images, 40 epochs, the recipe and validation choices of the learned "
        "Fashion-MNIST runs — three seeds run one per command on the 2-core AMD EPYC CPU "
        "(10 min of training each). It reaches 92.11 %, 2.58 points above the learned single "
        "layer of the same setting (89.53 %) and 2.00 above the best learned stack (90.11 %, "
        "depth 2, the stopping rule's pick), ahead on every seed (91.90–92.25 % against at "
        "most 90.27 %). It has 1.31 M weights against 0.10 M for the learned two-layer stack "
        "and its head. So 'comparable to expert-designed structures' is **not reproduced** on "
        "Fashion-MNIST either: the gap lies between MNIST's (0.5 points) and CIFAR-10's (8)."),
    "cnn-cifar10-flip-wd0.001": (
        "For context: the same CNN at the full setting — 400 hidden units (the pooled width of "
        "the K = 1600 runs), 45 000 training images, 40 epochs — with the full runs' training "
        "recipe (flips, weight decay 0.001), three seeds run one per command on the 2-core AMD "
        "EPYC CPU (11 min of training each). It reaches 71.97 %, 8.4 points above the learned "
        "single layer of the same setting and recipe (63.61 %, the single-layer section marked "
        "*training: …*) and 8.0 above the best learned stack (63.96 %, depth 1). It has "
        "1.70 M weights against the learned network's 0.25 M (the 5 % first layer plus the "
        "head), so it is not a like-for-like comparison in size. With this small hand-designed "
        "CNN as the reference, the paper's claim that learned structures are comparable to "
        "expert-designed ones is **not reproduced** here — convolution's "
        "locality and weight sharing are worth about eight points on CIFAR-10 over the "
        "learned sparse layer. The learning rate was chosen for the sparse layers, not for "
        "the CNN, and it trains unevenly across seeds (training loss 0.37–0.68 after 40 "
        "epochs, test 70.02–74.34 %)."),
}


def _stats(vals):
    m = statistics.mean(vals)
    s = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return m, s


def _seeds(res: dict) -> str:
    n = res["seeds"]
    return "seed 0 (one seed: no spread)" if n == 1 else f"seeds 0–{n - 1}"


def _cell(vals, fmt: str = ".2%") -> str:
    """``mean ± std``, or the value alone for a single seed."""
    mu, sd = _stats(vals)
    return f"{mu:{fmt}}" if len(vals) == 1 else f"{mu:{fmt}} ± {sd:{fmt}}"


def density_section(res: dict) -> list[str]:
    rows = res["rows"]
    methods = [m for m in ["learned", *BASELINES] if any(r["method"] == m for r in rows)]
    dens = sorted({r["density"] for r in rows if r["method"] != "dense"})
    lines = _header(res, "Density sweep", "(validation accuracy in the JSON)") + [
        "| method | " + " | ".join(f"{d:.0%}" for d in dens) + " |", "|---|" + "---|" * len(dens)]
    for m in methods:
        cells = [_cell([r["test_accuracy"] for r in rows if r["method"] == m and r["density"] == d])
                 for d in dens]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    dv = [r["test_accuracy"] for r in rows if r["method"] == "dense"]
    if dv:
        lines.append(f"| dense (100 %) | {_cell(dv)} |" + " |" * (len(dens) - 1))
    lines.append("")
    verdict = density_verdict(res)
    if verdict is not None:
        lines += [f"Target *{TARGETS['density']}*: {verdict[1]}.", ""]
    return lines


def density_verdict(res: dict) -> tuple[bool, str] | None:
    """Whether learned connectivity beats every baseline at every density ≤ 10 % (mean over
    seeds; a tie counts against it), and the verdict in words ("met — 1%: learned best; …");
    None for a result other than a density sweep with a learned row."""
    if res.get("experiment") != "density":
        return None
    rows = res["rows"]
    methods = [m for m in ["learned", *BASELINES] if any(r["method"] == m for r in rows)]
    if "learned" not in methods:
        return None
    dens = sorted({r["density"] for r in rows if r["method"] != "dense" and r["density"] <= 0.10 + 1e-9})
    mean = {(m, d): statistics.mean(r["test_accuracy"] for r in rows
                                    if r["method"] == m and r["density"] == d)
            for m in methods for d in dens}
    verdict = []
    for d in dens:
        losers = [b for b in methods[1:] if mean[(b, d)] >= mean[("learned", d)]]
        verdict.append(f"{d:.0%}: " + ("learned best" if not losers else
                                        "learned **not** best (beaten or tied by " + ", ".join(losers) + ")"))
    n_seeds = len({r["seed"] for r in rows})
    partial = (f" (on {n_seeds} seed{'s' if n_seeds > 1 else ''}; the target is the mean of 3, "
               f"so this verdict is provisional)" if n_seeds < 3 else "")
    ok = all("not" not in v for v in verdict)
    return ok, f"{'met' if ok else '**missed**'}{partial} — " + "; ".join(verdict)


def _recipe(s: dict) -> str:
    """The training recipe's additions in words ("" for PLAIN)."""
    parts = (["random flips"] if s["flip"] else []) + (
        [f"weight decay {s['weight_decay']:g}"] if s["weight_decay"] else [])
    return ", ".join(parts)


def _label(res: dict) -> str:
    """" (--quick)", " (not the validation choices)" for results made with other whitening or
    learner settings, and the training recipe's additions (flips, weight decay) when any."""
    label = " (--quick)" if res["quick"] else ""
    if res["experiment"].startswith("tune"):
        return label
    s = recorded(res)
    used = ("whiten_eps",) if res["experiment"] == "cnn" else tuple(TUNED[res["dataset"]])
    if any(s[k] != TUNED[res["dataset"]][k] for k in used):
        label += " (not the validation choices)"
    return label + (f" (training: {_recipe(s)})" if _recipe(s) else "")


def _header(res: dict, title: str, note: str = "",
            measure: str = "Test accuracy, mean ± std over seeds") -> list[str]:
    s = recorded(res)
    learner = ("" if res["experiment"] in ("cnn", "tune", "tune-training-fc") else
               f"; dictionary: {res['dict_epochs']} passes, active fraction {s['active_fraction']}, "
               f"memory {s['dict_memory']}")
    whiten = "" if res["experiment"] == "tune" else f", ZCA ε {s['whiten_eps']}"
    return [f"### {title} — {res['dataset']}{_label(res)}", "",
            f"Command: `{res['command']}`  ",
            f"Hardware: {res['machine']}; wall time {res['wall_seconds'] / 60:.1f} min; "
            f"{res['n_train']} training images{whiten}, K = {res['width']}, group size "
            f"{res['group_size']}, {res['epochs']} epochs, {_seeds(res)}{learner}. "
            f"{measure}{' ' + note if note else ''}.", ""]


def tune_section(res: dict) -> list[str]:
    """The validation grid of exp_tune.py and the choice it made (no test accuracy)."""
    rows = res["rows"]
    settings = list(dict.fromkeys((r["active_fraction"], r["dict_memory"]) for r in rows
                                  if r["method"] == "learned"))
    c = res["choice"]
    lines = _header(res, "Validation choices", measure=(
        f"Validation accuracy at {res['density']:.0%} density, one seed; the test set is not "
        "evaluated"))
    lines += ["| ZCA ε | random-local | " + " | ".join(
        f"learned, active fraction {a}, memory {m}" for a, m in settings) + " |",
        "|---|---|" + "---|" * len(settings)]
    for eps in dict.fromkeys(r["whiten_eps"] for r in rows):
        at = [r for r in rows if r["whiten_eps"] == eps]
        cells = [next(f"{r['val_accuracy']:.2%}" for r in at if r["method"] == "random-local")]
        for a, m in settings:
            r = next(r for r in at if r["method"] == "learned"
                     and (r["active_fraction"], r["dict_memory"]) == (a, m))
            v = r["val_accuracy"]
            chosen = (eps, a, m) == (c["whiten_eps"], c["active_fraction"], c["dict_memory"])
            cell = f"**{v:.2%}**" if chosen else f"{v:.2%}"
            cells.append(cell + (f" ({r['active_codes']:.1%})" if "active_codes" in r else ""))
        lines.append(f"| {eps} | " + " | ".join(cells) + " |")
    lines += ["", "In brackets: the fraction of codes active in the dictionary's last pass "
              "(`report.active`).", "", f"Choice (bold; the recipes' defaults for {res['dataset']}, "
              f"`recipes/common.py` TUNED): ZCA ε {c['whiten_eps']}, active fraction "
              f"{c['active_fraction']}, dictionary memory {c['dict_memory']}.", ""]
    return lines


def training_tune_section(res: dict) -> list[str]:
    """The training-recipe grid of ``exp_tune.py --training`` and its choice (no test accuracy)."""
    rows, c = res["rows"], res["choice"]
    wds = list(dict.fromkeys(r["weight_decay"] for r in rows))
    fc = res["experiment"] == "tune-training-fc"  # exp_tune --network fully-connected
    lines = _header(res, "Validation choice of the training recipe" + (
        ", fully connected layer" if fc else ""), measure="Validation accuracy of the " + (
        "fully connected single layer" if fc else f"learned layer at {res['density']:.0%} density "
        "(one structure, learned once)") + ", one seed; the test set is not evaluated")
    lines += ["| flips | " + " | ".join(f"weight decay {w:g}" for w in wds) + " |",
              "|---|" + "---|" * len(wds)]
    for flip in dict.fromkeys(r["flip"] for r in rows):
        cells = []
        for w in wds:
            r = next(r for r in rows if (r["flip"], r["weight_decay"]) == (flip, w))
            v = f"{r['val_accuracy']:.2%}"
            cells.append(f"**{v}**" if (flip, w) == (c["flip"], c["weight_decay"]) else v)
        lines.append(f"| {'yes' if flip else 'no'} | " + " | ".join(cells) + " |")
    return lines + ["", f"Choice (bold): {_recipe(c) or 'neither flips nor weight decay'}"
                    + ("." if fc else "; the full runs with it are the sections marked "
                       "*training: …*."), ""]


def grouped_section(res: dict, title: str, key: str = "method") -> list[str]:
    """A table of test accuracy (and score) per method, for the single/mask/depth experiments."""
    rows = res["rows"]
    methods = list(dict.fromkeys(r[key] for r in rows))
    lines = _header(res, title) + ["| method | test accuracy | validation accuracy | score E | depth |",
                                   "|---|---|---|---|---|"]
    for m in methods:
        sel = [r for r in rows if r[key] == m]
        te, va, sc = ([r[k] for r in sel] for k in ("test_accuracy", "val_accuracy", "score"))
        depth = sorted({r["depth"] for r in sel}) if "depth" in sel[0] else ["1"]
        same = sorted({r["same_as"] for r in sel if "same_as" in r})  # a repeated network
        name = f"{m} (the {' / '.join(same)} network{'s' if len(same) > 1 else ''})" if same else m
        lines.append(f"| {name} | {_cell(te)} | {_cell(va)} | {_cell(sc, '.3f')} | "
                     f"{', '.join(map(str, depth))} |")
    lines.append("")
    verdict = single_verdict(res)
    if verdict is not None:
        lines += [f"Target *{TARGETS['single']}*: {verdict[1]}.", ""]
    return lines


def single_verdict(res: dict) -> tuple[bool, str] | None:
    """For a full-setting CIFAR-10 single-layer result: whether the learned layer reaches 63.0 %
    and 2.5 points over the fully connected one (means over seeds), and the verdict in words;
    None for any other result."""
    if not (res.get("experiment") == "single" and res["dataset"] == "cifar10" and not res["quick"]):
        return None
    acc = {m: statistics.mean(r["test_accuracy"] for r in res["rows"] if r["method"] == m)
           for m in ("learned", "fully connected")}
    gap = acc["learned"] - acc["fully connected"]
    ok = acc["learned"] >= 0.63 and gap >= 0.025
    return ok, (f"{'met' if ok else '**missed**'} — learned {acc['learned']:.2%}, fully "
                f"connected {acc['fully connected']:.2%} ({gap * 100:+.2f} points)")


TARGETS = {"single": "learned ≥ 63.0 % and ≥ 2.5 points above the fully connected layer",
           "density": "learned beats every baseline at every density ≤ 10 %",
           "entropy": "positive entropy–accuracy rank correlation"}


def targets_section(results: list[dict]) -> list[str]:
    """The issue's three targets, one row per result file that is judged against one: each
    verdict is the one printed under that result's own table."""
    lines = ["## Targets at a glance", "",
             "The targets of the [repro] issue, judged on every result they apply to (the "
             "density target names CIFAR-10 and MNIST; Fashion-MNIST is shown for context). "
             "The section of each result below has the table and the analysis.", "",
             "| target | result | verdict |", "|---|---|---|"]
    titles = {"single": "Single layer", "density": "Density sweep"}
    for kind, judge in (("single", single_verdict), ("density", density_verdict)):
        for res in results:
            verdict = judge(res)
            if verdict is not None:
                lines.append(f"| {TARGETS[kind]} | {titles[kind]} — {res['dataset']}{_label(res)} "
                             f"| {verdict[1]} |")
    xs, ys = _all_scored(results)
    if xs:
        rho = spearman(xs, ys)
        lines.append(f"| {TARGETS['entropy']} | all {len(xs)} trained networks with a score | "
                     f"{'met' if rho > 0 else '**missed**'} — Spearman ρ {rho:+.3f} |")
    return lines + [""]


def _ranks(v: list[float]) -> list[float]:
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.mean(rx), statistics.mean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


def _scored(res: dict) -> list[tuple[float, float]]:
    """(score, test accuracy) of each distinct trained network in a result (a row that repeats
    another network — ``same_as``, the depth experiment's stopping-rule pick — counts once)."""
    return [(r["score"], r["test_accuracy"]) for r in res["rows"]
            if "score" in r and "same_as" not in r]


def _entropy_results(results: list[dict]) -> list[dict]:
    """The results the entropy–accuracy correlation is measured over (three scored networks
    or more)."""
    return [res for res in results if len(_scored(res)) >= 3]


def _all_scored(results: list[dict]) -> tuple[list[float], list[float]]:
    """(scores, test accuracies) pooled over :func:`_entropy_results`."""
    pts = [p for res in _entropy_results(results) for p in _scored(res)]
    return [x for x, _ in pts], [y for _, y in pts]


def entropy_section(results: list[dict]) -> list[str]:
    lines = ["### Entropy vs accuracy", "",
             "Every trained network above with a recorded score: the coding-efficiency estimate "
             "E = (Σ H − TC)/K of its top hidden layer on the validation images against its test "
             "accuracy; Spearman's ρ per result file and over all of them (the paper: larger "
             "output entropy goes with higher accuracy).", "",
             "| results | networks | Spearman ρ |", "|---|---|---|"]
    for res in _entropy_results(results):
        x, y = zip(*_scored(res), strict=True)
        lines.append(f"| {res['experiment']} {res['dataset']}{_label(res)} "
                     f"| {len(x)} | {spearman(list(x), list(y)):+.3f} |")
    xs, ys = _all_scored(results)
    if xs:
        lines.append(f"| all | {len(xs)} | {spearman(xs, ys):+.3f} |")
        lines += ["", "*Analysis.* The sign of the rank correlation changes from one experiment to "
                  "the next, and pooled over all networks it is negative. The score tracks accuracy "
                  "across forced depths on CIFAR-10 and on Fashion-MNIST at --quick scale (each "
                  "added layer lowers both), but not on MNIST, where at full scale the added "
                  "layers lower the score and raise accuracy, nor on Fashion-MNIST at full "
                  "scale, where the score falls with every layer and accuracy peaks at depth 2, "
                  "nor across structures of the same size: in the density "
                  "sweeps random masks and the RBM score higher "
                  "than learned masks at low densities while classifying worse, and in the "
                  "full-scale CIFAR-10 single-layer run with the validation choices the learned "
                  "layer scores lower than the fully connected one on every seed while being about "
                  "four points more accurate. The reason, measured in the next subsection: the "
                  "estimator normalises each unit to unit variance, so its marginal-entropy term "
                  "is largest for Gaussian units, and sparse, heavy-tailed units — what sparse "
                  "coding aims for — score lower; and across densities the redundancy term TC "
                  "grows with density, as accuracy does. At this scale the paper's \"larger output "
                  "entropy ↔ higher accuracy\" is not supported by this estimator. Target "
                  "*positive entropy–accuracy rank correlation*: **missed** overall."]
    return lines + [""] + score_parts_section(results)


# the terms of E = H − TC recorded with each network (recipes/common.py score_parts), with the
# sign that makes "larger is better" under the paper's claim
PARTS = (("score", "E"), ("score_entropy", "H"), ("score_tc", "−TC"), ("excess_kurtosis", "−kurtosis"))
_SIGN = {"score_tc": -1, "excess_kurtosis": -1}


def _with_parts(res: dict) -> list[dict]:
    return [r for r in res["rows"] if "same_as" not in r and all(k in r for k, _ in PARTS)]


def _rho(rows: list[dict], key: str, against: str = "test_accuracy") -> float:
    """Spearman's ρ of the signed term ``key`` against ``against`` over ``rows``."""
    return spearman([_SIGN.get(key, 1) * r[key] for r in rows], [r[against] for r in rows])


def score_parts_section(results: list[dict]) -> list[str]:
    """Which term of E goes with accuracy: pooled, among structures of one size, and learned
    against random masks term by term; the analysis quotes the numbers of the tables."""
    per_file = [(res, rows) for res in results if len(rows := _with_parts(res)) >= 3]
    if not per_file:
        return []
    head = " | ".join(f"ρ(acc, {name})" for _, name in PARTS)
    lines = ["#### What the score measures", "",
             "E = H − TC per unit: H is the mean histogram entropy of the standardised units, TC the "
             "Gaussian total correlation per unit. Every network retrained since these terms are "
             "recorded (`score_parts` in `recipes/common.py`; the --quick runs) also has the mean "
             "excess kurtosis of its units (0 for a Gaussian). Spearman's ρ of test accuracy against "
             "each term (signed so that the paper's reading predicts ρ > 0), and of H against the "
             "negated kurtosis.", "",
             f"| results | networks | {head} | ρ(H, −kurtosis) |",
             "|---|---|" + "---|" * (len(PARTS) + 1)]

    def row(label, rows):
        cells = " | ".join(f"{_rho(rows, k):+.3f}" for k, _ in PARTS)
        return (f"| {label} | {len(rows)} | {cells} | "
                f"{_rho(rows, 'score_entropy', 'excess_kurtosis') * -1:+.3f} |")

    pooled = [r for _, rows in per_file for r in rows]
    lines += [row(f"{res['experiment']} {res['dataset']}{_label(res)}", rows) for res, rows in per_file]
    lines.append(row("all with the terms", pooled))
    within, within_lines = _within_density(results)
    cells, pair_lines = _learned_vs_random(results)
    lines += ["", *within_lines, "", *pair_lines]
    if not (within and cells):
        return lines + [""]

    def count(key, sign):
        return sum(sign * c[key] > 0 for c in cells)

    n, tc_pos = len(cells), sum(w["score_tc"] > 0 for w in within.values())
    z = max(r.get("zero_fraction", 0.0) for res in results if res.get("experiment") == "density"
            for r in _with_parts(res))
    zeros = ("none of the density sweeps' pooled outputs is exactly zero" if z == 0 else
             f"at most {z:.1%} of the density sweeps' pooled outputs are exactly zero")
    e_pos = [d for d, w in within.items() if w["score"] > 0]
    lines += ["", f"*Analysis.* Pooled over the {len(pooled)} networks, ρ(acc, E) is "
              f"{_rho(pooled, 'score'):+.2f}; its terms give ρ(acc, H) {_rho(pooled, 'score_entropy'):+.2f} "
              f"and ρ(acc, −TC) {_rho(pooled, 'score_tc'):+.2f}. The TC part is mostly density: over "
              "each sweep's sparse structures, density goes with both accuracy and TC (the second "
              "table's last columns), while among the structures of one density lower TC goes with "
              f"higher accuracy in {tc_pos} of {len(within)} sweeps. Among structures of one size "
              f"E ranks accuracy positively in {', '.join(e_pos) or 'none of the sweeps'}. The "
              f"marginal term is the other effect. In {count('test_accuracy', 1)} of the {n} "
              f"density cells above the learned mask is the more accurate; in "
              f"{count('score_entropy', -1)} its units have the lower H, and in "
              f"{count('excess_kurtosis', 1)} the heavier tails. Its TC is lower in "
              f"{count('score_tc', -1)} cells (the paper's direction), and E is lower in "
              f"{count('score', -1)}. The histogram entropy of a standardised unit is largest for a "
              "Gaussian, and sparse coding makes units heavy-tailed, so the marginal term scores "
              "against the property the learner is built for. It is the tails, not a point mass at "
              f"zero: {zeros} (`zero_fraction` in the JSON). This measures the reason the analysis "
              "above gives."]
    return lines + [""]


def _density_groups(res: dict) -> list[list[dict]]:
    """A density sweep's sparse networks grouped by (density, seed): structures of one size."""
    groups: dict = {}
    for r in _with_parts(res):
        if r["method"] != "dense":
            groups.setdefault((r["density"], r["seed"]), []).append(r)
    return [g for g in groups.values() if len(g) >= 3]


def _within_density(results: list[dict]) -> tuple[dict, list[str]]:
    """Per density sweep: Spearman's ρ among the structures of one density and seed, averaged
    over the groups (the comparison at equal size that a pooled ρ mixes with density), and ρ of
    density against accuracy and TC over all its sparse structures."""
    head = " | ".join(f"ρ(acc, {name})" for _, name in PARTS)
    lines = ["Among the sparse structures of one density and seed (learned, random, random-local, "
             "RBM, SNIP, SynFlow), mean over the densities × seeds; and over all of a sweep's "
             "sparse structures, ρ of density against accuracy and against TC:", "",
             f"| results | groups | {head} | ρ(density, acc) | ρ(density, TC) |",
             "|---|---|" + "---|" * (len(PARTS) + 2)]
    found = {}
    for res in results:
        groups = _density_groups(res) if res.get("experiment") == "density" else []
        if not groups:
            continue
        mean = {k: statistics.mean(_rho(g, k) for g in groups) for k, _ in PARTS}
        found[res["dataset"] + _label(res)] = mean
        sparse = [r for g in groups for r in g]
        lines.append(f"| density {res['dataset']}{_label(res)} | {len(groups)} | "
                     + " | ".join(f"{mean[k]:+.3f}" for k, _ in PARTS)
                     + f" | {spearman([r['density'] for r in sparse], [r['test_accuracy'] for r in sparse]):+.3f}"
                     + f" | {spearman([r['density'] for r in sparse], [r['score_tc'] for r in sparse]):+.3f} |")
    return found, (lines if found else [])


def _learned_vs_random(results: list[dict]) -> tuple[list[dict], list[str]]:
    """docs/algorithm.md §7: at equal density the learned mask should give higher output entropy and
    higher accuracy than a random mask of the same fan-in. Paired by data set, density and seed;
    returns the mean differences per (data set, density) cell and the table."""
    keys = ("test_accuracy", "score", "score_entropy", "score_tc", "excess_kurtosis")
    lines = ["Learned minus random masks of the same per-unit fan-in (density sweeps, same seed and "
             "density, mean over seeds; docs/algorithm.md §7 expects both the score and the accuracy to "
             "be higher for the learned mask):", "",
             "| data set | density | Δ test accuracy | ΔE | ΔH | ΔTC | Δ kurtosis |",
             "|---|---|---|---|---|---|---|"]
    cells = []
    for res in results:
        if res.get("experiment") != "density":
            continue
        by = {(r["method"], r["density"], r["seed"]): r for r in _with_parts(res)}
        for density in sorted({d for m, d, _ in by if m == "learned"}):
            pairs = [(by[("learned", density, s)], by[("random", density, s)])
                     for m, d, s in by if m == "learned" and d == density and ("random", d, s) in by]
            if not pairs:
                continue
            dlt = {k: statistics.mean(a[k] - b[k] for a, b in pairs) for k in keys}
            cells.append(dlt)
            lines.append(f"| {res['dataset']}{_label(res)} | {density:.0%} | "
                         f"{100 * dlt['test_accuracy']:+.2f} points | {dlt['score']:+.3f} | "
                         f"{dlt['score_entropy']:+.3f} | {dlt['score_tc']:+.3f} | "
                         f"{dlt['excess_kurtosis']:+.2f} |")
    return cells, (lines if cells else [])


def _pyplot():
    """matplotlib's pyplot (Agg), or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(fig, name: str) -> str:
    FIG.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(FIG / name, dpi=120)
    _pyplot().close(fig)
    return f"figures/{name}"


def density_plot(res: dict) -> str | None:
    plt = _pyplot()
    if plt is None:
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
    recipe = recipe_suffix(recorded(res)).lstrip("-").replace("-", ", ")
    ax.set_title(f"{res['dataset']}{' (quick)' if res['quick'] else ''}"
                 f"{f' ({recipe})' if recipe else ''}")
    ax.legend(fontsize=8)
    quick = "-quick" if res["quick"] else ""
    return _save(fig, f"density-{res['dataset']}{quick}{recipe_suffix(recorded(res))}.png")


def depth_plot(results: list[dict]) -> str | None:
    """Test accuracy and score E against forced depth, one line per data set."""
    plt = _pyplot()
    runs = [r for r in results if r.get("experiment") == "depth"]
    if plt is None or not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for res in runs:
        forced = [r for r in res["rows"] if r["method"].startswith("forced depth")]
        depths = sorted({r["depth"] for r in forced})
        label = f"{res['dataset']}{' (quick)' if res['quick'] else ''}"
        label += ", 1 seed" if res.get("seeds") == 1 else ""
        for ax, key in zip(axes, ("test_accuracy", "score"), strict=True):
            vals = [[r[key] for r in forced if r["depth"] == d] for d in depths]
            ax.errorbar(depths, [statistics.mean(v) for v in vals], marker="o", capsize=3,
                        yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in vals], label=label)
    axes[0].set_ylabel("test accuracy")
    axes[1].set_ylabel("coding-efficiency score E")
    for ax in axes:
        ax.set_xlabel("forced depth")
        ax.set_xticks(depths)
    axes[1].legend(fontsize=8)
    return _save(fig, "depth.png")


def entropy_plot(results: list[dict]) -> str | None:
    """Score E against test accuracy for every network with a score, one colour per file."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    marker = {"mnist": "o", "fashion-mnist": "s", "cifar10": "^"}
    for i, res in enumerate(results):
        pts = _scored(res)
        if len(pts) >= 3:
            x, y = zip(*pts, strict=True)
            ax.scatter(x, y, s=12, color=plt.cm.tab20(i % 20), marker=marker.get(res["dataset"], "o"),
                       label=f"{res['experiment']} {res['dataset']}")
    ax.set_xlabel("coding-efficiency score E (top hidden layer)")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=6, ncol=2)
    return _save(fig, "entropy-accuracy.png")


def masks_figure(entry: str) -> tuple[str, float, float, float, float]:
    """The first 32 units' masks of a hub entry's learned layer (top two rows) next to random
    masks of the same per-unit fan-in (bottom two rows), channels averaged; the mean
    receptive-field spread (pixels) of every learned unit and of as many random ones; and the
    mean distance between the field centres of two units of one pooling group and of two units
    of different groups."""
    import torch
    from torchvision.utils import save_image

    from torch_structlearn import Connectivity, GroupPool, hub
    from torch_structlearn.viz import group_centre_distance, receptive_field_spread

    conn = hub.load_structure(entry)[0]
    card = hub.card(entry)
    C, H, W = card["input_shape"]
    pool = next(m for m in hub.load(entry).modules() if isinstance(m, GroupPool))  # the first layer's
    groups = group_centre_distance(conn, (C, H, W), card["group_size"], pool.permutation)
    n = 32
    rand = Connectivity.random(conn.shape, fan_in=int(conn.fan_in[0]), seed=0)
    spreads = [float(receptive_field_spread(c, (C, H, W)).mean()) for c in (conn, rand)]
    imgs = torch.cat([conn.to_mask()[:n], rand.to_mask()[:n]]).float().view(2 * n, C, H, W).mean(1, keepdim=True)
    imgs = (imgs / imgs.amax((1, 2, 3), keepdim=True).clamp_min(1e-12))
    FIG.mkdir(parents=True, exist_ok=True)
    name = f"masks-{entry}.png"
    save_image(imgs.repeat_interleave(3, 2).repeat_interleave(3, 3), str(FIG / name), nrow=16,
               padding=2, pad_value=0.3)
    return f"figures/{name}", *spreads, *groups


def main() -> int:
    files = result_files()
    if not files:
        print(f"no results in {SHIPPED} or {RUNS}; run the experiments first", file=sys.stderr)
        return 2
    lines = ["# Results", "",
             "Generated by `python recipes/make_results.py` from the JSON files in "
             "`recipes/results/` (a run writes `runs/repro/`, copied there when this is made); "
             "every number has its command and hardware next to it. "
             "CIFAR-10 here is the lossy JPEG copy (quality 75, mean error ≈ 5.8/255, see its "
             "SOURCE.md), so absolute CIFAR-10 accuracies may differ from the original data set's. "
             "Numbers from `--quick` runs are labelled as such. All choices were made on a "
             "validation split held out of the training images; the test set was only evaluated.", ""]
    header = len(lines)
    results = []
    titles = {"single": "Single layer: learned vs fully connected",
              "mask": "Role of the mask", "depth": "Depth", "cnn": "CNN reference"}
    for f in files:
        res = json.loads(f.read_text())
        results.append(res)
        if res.get("experiment") in titles:
            lines += grouped_section(res, titles[res["experiment"]])
        if res.get("experiment") == "tune":
            lines += tune_section(res)
        if res.get("experiment", "").startswith("tune-training"):
            lines += training_tune_section(res)
        if res.get("experiment") == "density":
            lines += density_section(res)
            png = density_plot(res)
            if png:
                lines += [f"![accuracy vs density]({png})", ""]
        if f.stem in ANALYSIS:
            lines += ["*Analysis.* " + ANALYSIS[f.stem], ""]
        if f.parent == RUNS:
            SHIPPED.mkdir(parents=True, exist_ok=True)
            _write_atomic(SHIPPED / f.name, f.read_bytes())
    lines[header:header] = targets_section(results)
    png = depth_plot(results)
    if png:
        lines += ["### Accuracy and score against depth", "", f"![accuracy and score vs depth]({png})", ""]
    figs = {e: masks_figure(e) for e in ("mnist-single-d5", "fashion-mnist-stack-d5", "cifar10-single-d5")}
    lines += ["### Learned receptive fields next to random ones", "",
              "The first 32 units of each hub entry's learned layer (top two rows: white = "
              "connected, channels averaged) and random masks of the same per-unit fan-in "
              "(bottom two rows). Spread = mean distance of a unit's connected pixels to their "
              "centroid, over all units (`torch_structlearn.viz.receptive_field_spread`; random "
              "masks give about 0.38 × the image side). Group distance = mean distance between "
              "the field centres of two learned units pooled together, against two units of "
              "different groups (`torch_structlearn.viz.group_centre_distance`; docs/algorithm.md §7 "
              "expects group members' fields close together).", "",
              "| hub entry | spread, learned | spread, random | group distance, same group | "
              "group distance, different groups |", "|---|---|---|---|---|"]
    lines += [f"| {e} | {sl:.2f} px | {sr:.2f} px | {gw:.2f} px | {gb:.2f} px |"
              for e, (_, sl, sr, gw, gb) in figs.items()]
    ratios = {e: gb / gw for e, (_, _, _, gw, gb) in figs.items()}
    near = [e for e, r in ratios.items() if r >= 1.5]
    far = [e for e in ratios if e not in near]
    text = ("Two units of one group have their fields' centres "
            + ", ".join(f"{r:.2f}× closer on {e}" for e, r in ratios.items())
            + " than two units of different groups")
    if near:
        text += ": a pooling group gathers nearby fields, as docs/algorithm.md §7 expects, in " + ", ".join(near)
    if far:
        text += ("; " if near else ": ") + f"not clearly in {', '.join(far)} (under 1.5×)"
    lines += ["", text + "."]
    lines += [""] + [f"![{e} masks]({f[0]})" for e, f in figs.items()] + [""]
    lines += entropy_section(results)
    png = entropy_plot(results)
    if png:
        lines += [f"![score vs accuracy]({png})", ""]
    _write_atomic(OUT, ("\n".join(lines) + "\n").encode())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
