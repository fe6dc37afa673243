"""``bench coding``: our dictionary learning against scikit-learn's and SPAMS's on MNIST.

scikit-learn is a dev extra, imported when this runs. SPAMS (the ``spams-bin`` wheel, Mairal et
al.'s own library) is never a dependency: its row is measured where it is installed and skipped
with a message elsewhere."""

from __future__ import annotations

import importlib.util
import time

import torch
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler, TensorDataset

from ..coding import DictionaryLearner, fista, objective
from ..datasets import load_dataset
from .timing import command, header, machine


def run_coding(args) -> dict:
    """Our dictionary learning against scikit-learn's MiniBatchDictionaryLearning on the same
    MNIST images, atoms, λ, batch size and passes; both dictionaries are scored with the same
    encoder (FISTA run to convergence) on the same objective ½‖x − Da‖² + λ‖a‖₁ (mean/sample)."""
    import numpy as np
    from sklearn.decomposition import MiniBatchDictionaryLearning  # optional: a dev extra

    X, _ = load_dataset("mnist", "train", args.data_root, args.n)
    X = X.reshape(len(X), -1)
    X = X - X.mean(0)  # centred pixels, as scikit-learn's examples do
    device = torch.device(args.device)

    def final_objective(D: torch.Tensor) -> float:
        Dd = D.to(device, torch.float32)
        Xd = X.to(device)
        total = 0.0
        for i in range(0, len(Xd), 2000):
            A = fista(Xd[i : i + 2000], Dd, lam1=args.lam, max_iter=1000, tol=1e-7)
            total += float(objective(Xd[i : i + 2000], Dd, A, args.lam).sum())
        return total / len(Xd)

    rows = []
    t0 = time.perf_counter()
    ours = DictionaryLearner(args.atoms, lam1=args.lam, epochs=args.passes, seed=0,
                             device=device, verbose=False)
    # batches indexed in one go (a BatchSampler), not 256 single-item lookups per batch
    batched = DataLoader(TensorDataset(X), batch_size=None,
                         sampler=BatchSampler(SequentialSampler(range(len(X))), args.batch_size, False))
    ours.fit(batched)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t_ours = time.perf_counter() - t0
    rows.append({"method": "torch_structlearn DictionaryLearner", "seconds": t_ours,
                 "objective": final_objective(ours.dictionary_),
                 "active_fraction": float(ours.usage_.mean())})
    print(f"ours: {t_ours:.1f} s, objective {rows[-1]['objective']:.4f}", flush=True)
    if not args.skip_sklearn:
        t0 = time.perf_counter()
        sk = MiniBatchDictionaryLearning(n_components=args.atoms, alpha=args.lam,
                                         batch_size=args.batch_size, max_iter=args.passes,
                                         shuffle=False, random_state=0, fit_algorithm="cd",
                                         transform_algorithm="lasso_cd")
        sk.fit(X.numpy().astype(np.float64))
        t_sk = time.perf_counter() - t0
        D_sk = torch.from_numpy(sk.components_).float().T
        rows.append({"method": "sklearn MiniBatchDictionaryLearning (fit_algorithm='cd')",
                     "seconds": t_sk, "objective": final_objective(D_sk / D_sk.norm(dim=0).clamp_min(1e-12))})
        print(f"sklearn: {t_sk:.1f} s, objective {rows[-1]['objective']:.4f}", flush=True)
        rows[0]["speedup"] = t_sk / t_ours
    if importlib.util.find_spec("spams") is None:
        print("spams: not installed (pip install spams-bin), its row is skipped", flush=True)
    elif not args.skip_spams and device.type == "cpu":
        D_sp, t_sp = spams_dictionary(X, args.atoms, args.lam, args.passes, args.batch_size)
        rows.append({"method": "SPAMS trainDL (mode=2, spams-bin)", "seconds": t_sp,
                     "objective": final_objective(D_sp)})
        print(f"spams: {t_sp:.1f} s, objective {rows[-1]['objective']:.4f}", flush=True)
    return {"benchmark": "coding", "machine": machine(), "device": device.type,
            "command": command(args),
            "n": len(X), "atoms": args.atoms, "lam": args.lam, "passes": args.passes,
            "batch_size": args.batch_size, "rows": rows}


def spams_dictionary(X: torch.Tensor, atoms: int, lam: float, passes: float,
                     batch_size: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """SPAMS's online dictionary (``spams.trainDL``, mode 2: ``½‖x − Da‖² + λ‖a‖₁``) of the
    rows of ``X (N, d)`` with ``atoms`` atoms: ``passes`` passes of ``batch_size`` samples, on
    ``torch.get_num_threads()`` threads, starting from ``atoms`` samples drawn with ``seed`` (as
    our learner starts). Returns ``(D (d, atoms) unit-norm, seconds)``."""
    import numpy as np
    import spams  # optional peer: only where installed

    Xf = np.asfortranarray(X.double().numpy().T)  # (d, N), as SPAMS takes it
    pick = torch.randperm(X.shape[0], generator=torch.Generator().manual_seed(seed))[:atoms]
    D0 = X[pick].double().T
    D0 = np.asfortranarray((D0 / D0.norm(dim=0).clamp_min(1e-12)).numpy())
    steps = max(1, round(passes * X.shape[0] / batch_size))
    t0 = time.perf_counter()
    D = spams.trainDL(Xf, D=D0, lambda1=lam, mode=2, batchsize=batch_size, iter=steps,
                      numThreads=torch.get_num_threads(), verbose=False)
    seconds = time.perf_counter() - t0
    D = torch.from_numpy(np.asarray(D)).float()
    return D / D.norm(dim=0).clamp_min(1e-12), seconds


def coding_markdown(result: dict) -> str:
    lines = [*header(result, result["device"] == "cuda", f"device {result['device']}"),
             f"{result['n']} MNIST training images (centred pixels), {result['atoms']} atoms, "
             f"λ = {result['lam']}, batch {result['batch_size']}, {result['passes']} passes. "
             "Objective = mean over the images of ½‖x − Da‖² + λ‖a‖₁ with codes from the same "
             "FISTA encoder run to convergence for both dictionaries.", "",
             "| method | wall time (s) | final objective | speedup |", "|---|---|---|---|"]
    for r in result["rows"]:
        sp = f"{r['speedup']:.1f}x" if "speedup" in r else "1.0x"
        lines.append(f"| {r['method']} | {r['seconds']:.1f} | {r['objective']:.4f} | {sp} |")
    return "\n".join(lines)
