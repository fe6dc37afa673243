"""``bench mlp``: one training epoch of a sparse MLP, or of a hub entry's model, against the same
network with ``nn.Linear`` layers (wall time, step peak and training peak memory); with
``--dynamic rigl|set`` also each unstructured sparse MLP trained with its masks updated
(:class:`~torch_structlearn.DynamicSparsity`), the updates' own time reported apart."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from .. import hub
from ..convert import replace_module
from ..dynamic import DynamicSparsity
from ..layers import StructLearnedLinear
from .timing import command, header, machine, peak_of_step, state_bytes, sync


def _mlp(sizes: list[int], density: float | None, block: int, backend: str, device, dtype) -> nn.Module:
    """``sizes[0] -> ... -> sizes[-1]`` with ReLU; hidden layers sparse unless ``density`` is
    None; the classifier head is ``nn.Linear`` in every variant."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=False)):
        if density is None or i == len(sizes) - 2:
            layers.append(nn.Linear(a, b, device=device, dtype=dtype))
        else:
            layers.append(StructLearnedLinear(a, b, density=density, block=(block, block) if block else None,
                                              backend=backend, device=device, dtype=dtype))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _hub_variants(name: str, backend: str, device, dtype):
    """The hub entry's model (its learned structure) and the same model with ``nn.Linear``
    layers in place of the sparse ones; plus the input shape and number of classes."""
    model = hub.load(name)
    card = hub.card(name)
    if "timm_model" in card:
        size = card.get("timm_kwargs", {}).get("img_size", 224)
        shape = (card.get("timm_kwargs", {}).get("in_chans", 3), size, size)
    else:
        shape = tuple(model.input_shape)
    dense = copy.deepcopy(model)
    for n, m in list(dense.named_modules()):
        if isinstance(m, StructLearnedLinear):
            replace_module(dense, n, nn.Linear(m.in_features, m.out_features, bias=m.bias is not None))
    sparse = [m for m in model.modules() if isinstance(m, StructLearnedLinear)]
    for m in sparse:
        m.backend = backend
    density = sum(m.nnz for m in sparse) / sum(m.in_features * m.out_features for m in sparse)
    variants = [("nn.Linear", None, 0, lambda: dense.to(device, dtype), None),
                (f"{name} ({density:.0%})", density, 0, lambda: model.to(device, dtype), None)]
    return variants, shape, model.num_classes


def run_mlp(args) -> dict:
    """One training epoch (SGD, cross-entropy on synthetic data), sparse vs dense: of an MLP,
    or (``--hub NAME``) of a hub entry's model against the same model with ``nn.Linear``."""
    device, dtype = torch.device(args.device), torch.float32
    if args.hub:
        variants, shape, classes = _hub_variants(args.hub, args.backend, device, dtype)
    else:
        shape, classes = (args.sizes[0],), args.sizes[-1]
        variants = [(None, 0)] + [(d, b) for b in args.blocks for d in args.densities]
        variants = [("nn.Linear" if d is None else f"{d:.0%}" + (f" block {b}" if b else ""), d, b,
                     lambda d=d, b=b: _mlp(args.sizes, d, b, args.backend, device, dtype), None)
                    for d, b in variants]
        if args.dynamic:  # the unstructured MLPs again, their masks updated as they train
            variants += [(f"{name} {args.dynamic}", d, 0, build, args.dynamic)
                         for name, d, b, build, _ in variants if d is not None and b == 0]
    g = torch.Generator().manual_seed(0)
    X = torch.rand(args.n, *shape, generator=g).to(device, dtype)
    y = torch.randint(0, classes, (args.n,), generator=g).to(device)
    rows = []
    print(f"{'variant':>22} {'epoch s':>9} {'speedup':>8} {'step MiB':>9} {'total MiB':>9} "
          f"{'total/dense':>10}")
    for name, density, block, build, method in variants:
        torch.manual_seed(0)
        model = build()
        model.train()
        opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=0.01,
                              momentum=0.9)
        upd = {"dst": None, "seconds": 0.0}  # the mask updates, once armed, and their time

        def step(i0, model=model, opt=opt, upd=upd):
            xb, yb = X[i0:i0 + args.batch_size], y[i0:i0 + args.batch_size]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(xb), yb).backward()
            opt.step()
            if upd["dst"] is not None:
                sync(device)
                t = time.perf_counter()
                upd["dst"].step()
                sync(device)
                upd["seconds"] += time.perf_counter() - t

        step(0)  # warm-up (allocations, caches, optimizer state)
        peak = peak_of_step(lambda: step(0), lambda o=opt: o.zero_grad(set_to_none=True), device)
        held = state_bytes(model) + sum(  # parameters, buffers and optimizer state
            t.numel() * t.element_size() for st in opt.state.values() for t in st.values()
            if isinstance(t, torch.Tensor))
        if method is not None:  # updates all through the epoch (the schedule ends far after it)
            steps = -(-args.n // args.batch_size)
            upd["dst"] = DynamicSparsity(model, opt, method=method,
                                         update_every=args.update_every, total_steps=4 * steps)
        sync(device)
        t0 = time.perf_counter()
        for i0 in range(0, args.n, args.batch_size):
            step(i0)
        sync(device)
        seconds = time.perf_counter() - t0
        rows.append({"variant": name, "density": density, "block": block, "epoch_seconds": seconds,
                     "peak_step_bytes": peak, "held_bytes": held, "dynamic": method,
                     "mask_updates": len(upd["dst"].updates) if method else 0,
                     "update_seconds": upd["seconds"]})
        base = rows[0]
        total, base_total = held + peak, base["held_bytes"] + base["peak_step_bytes"]
        print(f"{name:>22} {seconds:>9.2f} {base['epoch_seconds'] / seconds:>7.2f}x "
              f"{peak / 2**20:>9.1f} {total / 2**20:>9.1f} {total / base_total:>10.2f}"
              + (f"  ({_updates(rows[-1])})" if method else ""), flush=True)
        del model, opt
    return {"benchmark": "mlp", "machine": machine(), "device": device.type,
            "command": command(args), "backend": args.backend, "hub": args.hub,
            "sizes": None if args.hub else args.sizes, "input_shape": list(shape),
            "n": args.n, "batch_size": args.batch_size, "dynamic": args.dynamic,
            "update_every": args.update_every, "rows": rows}


def _updates(row: dict) -> str:
    """``k × t ms`` for a row whose masks were updated ``k`` times, in ``t`` ms each (mean)."""
    k = row.get("mask_updates", 0)
    return f"{k} × {1e3 * row['update_seconds'] / k:.1f} ms" if k else "—"


def mlp_markdown(result: dict) -> str:
    backend = f"`backend='{result.get('backend', 'auto')}'`"
    what = (f"Hub entry `{result['hub']}` (its learned sparse layers with {backend}) against the "
            "same model with `nn.Linear` in their place" if result.get("hub") else
            f"MLP {' → '.join(map(str, result['sizes']))} (ReLU; hidden layers sparse with "
            f"{backend}, the head dense)")
    dynamic = result.get("dynamic")
    if dynamic:
        what += (f"; the `{dynamic}` rows train the unstructured MLPs again with "
                 f"`DynamicSparsity(method='{dynamic}', update_every={result['update_every']})`, "
                 "their epoch time with the mask updates (and RigL's gradient capture) included, "
                 "and the updates' own time in the last column")
    lines = [*header(result, result["device"] == "cuda", f"device {result['device']}"),
             f"{what}, one epoch of {result['n']} synthetic samples, "
             f"batch {result['batch_size']}, SGD with momentum. Step peak = torch allocator "
             "bytes above the start during one step (gradients dropped before it); training "
             "peak = that plus what the model and optimizer hold (parameters, buffers such as "
             "the structure and cached transposes, momentum).", "",
             "| hidden layers | epoch s | speedup vs nn.Linear | step peak MiB | training peak MiB "
             "| training peak / dense |" + (" mask updates in the epoch |" if dynamic else ""),
             "|---|---|---|---|---|---|" + ("---|" if dynamic else "")]
    base = result["rows"][0]
    base_total = base["held_bytes"] + base["peak_step_bytes"]
    for r in result["rows"]:
        total = r["held_bytes"] + r["peak_step_bytes"]
        lines.append(f"| {r['variant']} | {r['epoch_seconds']:.2f} | "
                     f"{base['epoch_seconds'] / r['epoch_seconds']:.2f}x | "
                     f"{r['peak_step_bytes'] / 2**20:.1f} | {total / 2**20:.1f} | "
                     f"{total / base_total:.2f} |" + (f" {_updates(r)} |" if dynamic else ""))
    return "\n".join(lines)
