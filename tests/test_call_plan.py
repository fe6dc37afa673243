"""The layer's lean call path (a plan per kind of call, made once) and the one numeric
behaviour for inf/NaN inputs on every backend.

References are independent of the plan: the dense masked computation
``F.linear(x, layer.dense_weight(), layer.bias)`` and torch.autograd.gradcheck."""

import copy
import pickle
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from torch_structlearn import StructLearnedLinear
from torch_structlearn.ops import available_backends

CPU_BACKENDS = [b for b in available_backends() if b not in ("auto", "triton")] + ["auto"]


def _reference(layer, x):
    with torch.no_grad():
        return F.linear(x, layer.dense_weight(), layer.bias)


def _layer(backend, block=None, density=0.1, seed=0, bias=True):
    torch.manual_seed(seed)
    return StructLearnedLinear(32, 24, density=density, block=block, backend=backend, bias=bias)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("block", [None, (4, 8)])
@pytest.mark.parametrize("mode", ["no_grad", "inference", "grad"])
@pytest.mark.parametrize("bias", [True, False])
def test_planned_calls_match_the_dense_reference(backend, block, mode, bias):
    if block is not None and backend == "torch_sparse":
        pytest.skip("torch_sparse serves unstructured layers only")
    layer = _layer(backend, block, density=0.25, bias=bias)
    assert "bias" in layer._parameters and (layer.bias is None) == (not bias)  # as nn.Linear
    ctx = {"no_grad": torch.no_grad, "inference": torch.inference_mode,
           "grad": torch.enable_grad}[mode]
    for shape in [(5, 32), (2, 3, 32), (1, 32), (5, 32), (2, 3, 32)]:  # plans made, then reused
        x = torch.randn(shape)
        with ctx():
            y = layer(x)
        torch.testing.assert_close(y, _reference(layer, x))
    assert len(layer._plans) == 3


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_through_the_planned_path(backend):
    layer = _layer(backend).double()
    x = torch.randn(3, 32, dtype=torch.float64, requires_grad=True)
    layer(x)  # makes the plan the checks below run through
    torch.autograd.gradcheck(lambda x, v, b: _call_with(layer, x, v, b),
                             (x, layer.values, layer.bias))


def _call_with(layer, x, v, b):
    """layer(x) as a function of its parameters (gradcheck perturbs them in place)."""
    return layer(x)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_training_steps_and_in_place_changes_reach_every_planned_call(backend):
    layer = _layer(backend, density=0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(4, 32)
    for _ in range(3):
        opt.zero_grad()
        layer(x).square().sum().backward()
        opt.step()
        with torch.no_grad():  # inference after each step sees the stepped weights
            torch.testing.assert_close(layer(x), _reference(layer, x))
    with torch.no_grad():
        layer.values.mul_(2)  # an in-place change of the weights
        torch.testing.assert_close(layer(x), _reference(layer, x))
        layer.load_state_dict({k: v * 3 for k, v in layer.state_dict().items()
                               if k in ("values", "bias")}, strict=False)
        torch.testing.assert_close(layer(x), _reference(layer, x))
    layer.values = nn.Parameter(torch.randn_like(layer.values))  # another tensor
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference(layer, x))


def test_a_structure_edited_in_place_is_checked_and_replanned():
    layer = _layer("cpu", density=0.25)
    x = torch.randn(4, 32)
    with torch.no_grad():
        layer(x)
        col = layer.col_indices.clone()
        layer.col_indices[0] = (col[0] + 1) % 32 if col[1] != (col[0] + 1) % 32 else col[0]
        layer.col_indices.copy_(col.flip(0))  # unsorted, still in range: a new plan, validated
        with pytest.raises(ValueError, match="invalid structure"):
            layer(x)
        layer.col_indices.copy_(col)
        torch.testing.assert_close(layer(x), _reference(layer, x))
        layer.col_indices[0] = 99  # out of range: refused before any kernel reads it
        with pytest.raises(ValueError, match="invalid structure"):
            layer(x)


def test_bad_input_is_refused_on_every_call_not_only_the_first():
    layer = _layer("cpu")
    with torch.no_grad():
        layer(torch.randn(2, 32))
        with pytest.raises(ValueError, match=r"expected input of shape \(\*, 32\)"):
            layer(torch.randn(2, 31))
        with pytest.raises(TypeError, match="same dtype"):
            layer(torch.randn(2, 32, dtype=torch.float64))
        with pytest.raises(TypeError, match="torch.Tensor"):
            layer([0.0] * 32)


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "to"])
def test_copies_make_their_own_plans(how):
    layer = _layer("cpu")
    x = torch.randn(3, 32)
    with torch.no_grad():
        before = layer(x).double()
        other = {"deepcopy": copy.deepcopy, "pickle": lambda m: pickle.loads(pickle.dumps(m)),
                 "to": lambda m: m.to(torch.float64)}[how](layer)
        x = x.to(other.values.dtype)
        other.values.mul_(-1)  # the copy's own weights (for .to(): the layer's, moved)
        torch.testing.assert_close(other(x), _reference(other, x))
        if how != "to":
            torch.testing.assert_close(layer(x.float()).double(), before)


def test_a_planned_call_runs_a_handful_of_python_functions():
    """The fixed cost of a call is Python: count the functions a planned call enters (the
    checked path entered ~140 before; the kernel is one foreign call)."""
    layer = _layer("cpu")
    x = torch.randn(1, 32)
    counts = []
    for grad in (False, True):
        n = [0]

        def count(frame, event, arg, n=n):
            if event in ("call", "c_call"):
                n[0] += 1

        xg = x.clone().requires_grad_(grad)
        with torch.enable_grad() if grad else torch.inference_mode():
            layer(xg)  # the plan
            sys.setprofile(count)
            try:
                layer(xg)
            finally:
                sys.setprofile(None)
        counts.append(n[0])
    assert counts[0] <= 35, counts  # inference (27 when written)
    assert counts[1] <= 45, counts  # autograd (33 when written)


# ---------------------------------------------------------------- inf and NaN


def _poisoned(n=6, d=32):
    x = torch.randn(n, d)
    x[1, 0] = float("inf")
    x[2, 5] = float("nan")
    x[3, 7], x[3, 9] = -float("inf"), float("inf")
    return x


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("block", [None, (4, 8)])
@pytest.mark.parametrize("mode", ["inference", "grad"])
def test_inf_and_nan_inputs_give_the_masked_dense_result_on_every_backend(backend, block, mode):
    """Masked dense semantics everywhere: an output reads NaN where ``F.linear`` with the
    dense weight (zeros off the structure) does — 0 * inf is NaN — also on sparse kernels."""
    if block is not None and backend == "torch_sparse":
        pytest.skip("torch_sparse serves unstructured layers only")
    layer = _layer(backend, block, density=0.25)
    x = _poisoned()
    ctx = torch.inference_mode if mode == "inference" else torch.enable_grad
    for _ in range(2):  # the plan's first call and a planned one
        with ctx():
            y = layer(x)
        ref = _reference(layer, x)
        assert torch.equal(y.isnan(), ref.isnan()) and torch.equal(y.isinf(), ref.isinf())
        torch.testing.assert_close(y.nan_to_num(), ref.nan_to_num())
    assert ref[1:4].isfinite().sum() == 0 and ref[[0, 4, 5]].isfinite().all()


def test_finite_rows_beside_a_poisoned_one_are_untouched_and_grads_match():
    layer = _layer("cpu", density=0.25)
    x = _poisoned().requires_grad_()
    y = layer(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    x2 = x.detach().clone().requires_grad_()
    w = layer.dense_weight()
    F.linear(x2, w, layer.bias).backward(gy)
    torch.testing.assert_close(x.grad, x2.grad)


# ---------------------------------------------------------------- torch.export


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                         nn.Linear(32, 10)).eval()


def test_export_with_auto_uses_the_decision_made_before_tracing():
    from torch_structlearn import convert
    from torch_structlearn.ops import calibrate

    model = _mlp()
    convert(model, None, density=0.25, method="magnitude", verbose=False)
    x = torch.randn(8, 64)
    with torch.no_grad():
        want = model(x)  # eager: auto decides here
    picked = calibrate.recall(torch.device("cpu"), torch.float32, None, (8, 64, 48),
                              model[0].density, False)
    program = torch.export.export(model, (x,))
    ops = [n.args[-1] for n in program.graph.nodes
           if n.op == "call_function" and "structlearn" in str(n.target)]
    if picked != "dense":
        assert ops and ops[0] == picked
    torch.testing.assert_close(program.module()(x), want)


EXPORT = """
import sys, torch
from torch import nn
import torch_structlearn
from torch_structlearn import convert
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(),
                      nn.Linear(32, 10)).eval()
convert(model, None, density=0.25, method="magnitude", verbose=False)
x = torch.randn(8, 64)
program = torch.export.export(model, (x,))  # before any eager call: the shipped prior
torch.export.save(program, sys.argv[1])
with torch.no_grad():
    torch.save({"x": x, "y": model(x)}, sys.argv[2])
"""

RUN = """
import sys, torch
import torch_structlearn  # registers the structlearn ops the program calls
program = torch.export.load(sys.argv[1])
io = torch.load(sys.argv[2])
torch.testing.assert_close(program.module()(io["x"]), io["y"])
print("ok")
"""


def test_an_exported_converted_model_runs_in_a_fresh_process_without_the_cache(tmp_path):
    import os
    import subprocess

    for step, script in (("export", EXPORT), ("run", RUN)):
        env = {**os.environ, "STRUCTLEARN_CACHE": str(tmp_path / f"cache-{step}")}
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "model.pt2"),
                               str(tmp_path / "io.pt")], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")
    assert not (tmp_path / "cache-run" / "auto").exists()  # nothing calibrated there


def test_aot_inductor_package_of_a_layer_with_auto(tmp_path):
    """AOTInductor compiles the exported program (with the structlearn op inside) into a
    package that loads and runs (~25 s: a C++ build)."""
    from torch_structlearn import convert

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    convert(model, None, density=0.25, method="magnitude", verbose=False)
    x = torch.randn(8, 64)
    program = torch.export.export(model, (x,))
    path = torch._inductor.aoti_compile_and_package(program,
                                                    package_path=str(tmp_path / "m.pt2"))
    with torch.no_grad():
        torch.testing.assert_close(torch._inductor.aoti_load_package(path)(x), model(x))
