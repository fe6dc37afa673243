"""The sparse kernel against an independent reference: a dense masked weight built with plain
differentiable torch ops (autograd supplies the reference gradients)."""

import hashlib
import shutil
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from torch_structlearn import Connectivity, StructLearnedLinear, sparse_linear
from torch_structlearn.ops import available_backends

from .conftest import devices

BACKENDS = [b for b in available_backends() if b != "auto"] + ["auto"]


def _compiler():
    from torch_structlearn.ops import cpu

    return shutil.which(cpu.compiler())


def _usable_on(backend, device):
    if backend not in available_backends(device=device):
        pytest.skip(f"backend={backend!r} does not run on {device}")


def reference(x, values, conn, bias):
    """y = x @ Wᵀ + b with W dense, built by index_put (autograd differentiates it)."""
    w = torch.zeros(conn.shape, dtype=values.dtype, device=values.device)
    w = w.index_put((conn.row_indices().to(x.device), conn.col_indices.to(x.device)), values)
    y = x @ w.T
    return y + bias if bias is not None else y


@st.composite
def problems(draw):
    out_f = draw(st.integers(1, 9))
    in_f = draw(st.integers(1, 9))
    kind = draw(st.sampled_from(["random", "empty", "some_empty_rows", "full"]))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    if kind == "empty":
        mask = torch.zeros(out_f, in_f, dtype=torch.bool)
    elif kind == "full":
        mask = torch.ones(out_f, in_f, dtype=torch.bool)
    else:
        mask = torch.rand(out_f, in_f, generator=g) < draw(st.sampled_from([0.1, 0.3, 0.7]))
        if kind == "some_empty_rows":
            mask[:: 2] = False
    lead = draw(st.sampled_from([(3,), (1,), (2, 3), (2, 1, 2)]))
    bias = draw(st.booleans())
    noncontig = draw(st.booleans())
    return Connectivity.from_mask(mask), lead, bias, noncontig, seed


def _inputs(conn, lead, bias, noncontig, seed, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    out_f, in_f = conn.shape
    if noncontig:  # a strided view: same shape, non-contiguous memory
        x = torch.randn(*lead, 2 * in_f, generator=g, dtype=dtype)[..., ::2]
        assert not x.is_contiguous() or x.numel() == 1
    else:
        x = torch.randn(*lead, in_f, generator=g, dtype=dtype)
    v = torch.randn(conn.nnz, generator=g, dtype=dtype)
    b = torch.randn(out_f, generator=g, dtype=dtype) if bias else None
    to = dict(device=device)
    return x.to(**to), v.to(**to), (b.to(**to) if b is not None else None)


@pytest.mark.parametrize("backend", BACKENDS)
@given(problems())
def test_gradcheck_against_dense_reference(backend, problem):
    conn, lead, bias, noncontig, seed = problem
    x, v, b = _inputs(conn, lead, bias, noncontig, seed)
    crow, col = conn.crow_indices, conn.col_indices
    args = [t.requires_grad_() for t in (x, v) + ((b,) if b is not None else ())]

    def f(*a):
        return sparse_linear(a[0], a[1], crow, col, a[2] if b is not None else None, backend=backend)

    # 1. forward and every gradient equal the autograd gradients of the dense reference
    y = f(*args)
    assert y.shape == (*lead, conn.shape[0])
    ref = reference(args[0], args[1], conn, args[2] if b is not None else None)
    torch.testing.assert_close(y, ref)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, args, gy, allow_unused=True)
    want = torch.autograd.grad(ref, args, gy, allow_unused=True)
    for g1, g2 in zip(got, want, strict=False):
        torch.testing.assert_close(g1, g2)
    # 2. finite differences (float64)
    assert torch.autograd.gradcheck(f, args)


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_by_one_and_int32_indices(backend):
    for crow, col in [([0, 1], [0]), ([0, 0], [])]:
        crow32 = torch.tensor(crow, dtype=torch.int32)
        col32 = torch.tensor(col, dtype=torch.int32)
        x = torch.randn(4, 1, dtype=torch.float64, requires_grad=True)
        v = torch.randn(len(col), dtype=torch.float64, requires_grad=True)
        b = torch.randn(1, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(
            lambda x, v, b, c=crow32, k=col32: sparse_linear(x, v, c, k, b, backend=backend),
            (x, v, b),
        )


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", ["cpu", "csr", "dense"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("batch", [1, 2, 5, 700])
def test_larger_problem_matches_reference(device, backend, dtype, threads, batch):
    # Bigger than the hypothesis cases: exercises the CPU batch chunking (batch > 256), the
    # cpu kernels' tiles (32 rows, a partial last one) spread over threads, their small-batch
    # mode (fewer tiles than threads: W's rows spread instead), and the gathered forward of one
    # or two rows (9 000 nonzeros: spread over threads), on 1 and 3 threads.
    _usable_on(backend, device)
    conn = Connectivity.random((300, 600), density=0.05, seed=0)
    x, v, b = _inputs(conn, (batch,), True, False, 0, dtype=dtype, device=device)
    x.requires_grad_(), v.requires_grad_(), b.requires_grad_()
    crow, col = conn.crow_indices.to(device), conn.col_indices.to(device)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y = sparse_linear(x, v, crow, col, b, backend=backend)
        gy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, v, b), gy)
    finally:
        torch.set_num_threads(before)
    ref = reference(x, v, conn, b)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else {}
    torch.testing.assert_close(y, ref, **tol)
    for g1, g2 in zip(got, torch.autograd.grad(ref, (x, v, b), gy), strict=False):
        torch.testing.assert_close(g1, g2, **tol)


def test_cpu_kernels_build_where_a_compiler_exists():
    """The ``cpu`` backend must not silently drop out of the parametrised tests above: where a
    C++ compiler is on PATH (CI's machine has g++), its kernels must build and load."""
    from torch_structlearn.ops import cpu

    if _compiler() is None:
        pytest.skip("no C++ compiler here")
    assert cpu.available(), cpu.error()
    assert "cpu" in available_backends()
    assert "cpu" in available_backends(block=(4, 4))


def test_cpu_backend_reports_a_failed_build(monkeypatch, tmp_path):
    """A compiler that fails leaves the backend unavailable with the compiler's message, and
    asking for it is a ValueError naming the cause (no crash, no half-written library)."""
    from torch_structlearn.ops import cpu
    from torch_structlearn.ops.sparse_linear import check_backend

    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    for name, value in [("SOURCE", broken), ("_kernels", None), ("_error", None),
                        ("_tried", False), ("_ok", False)]:
        monkeypatch.setattr(cpu, name, value)
    monkeypatch.setenv("STRUCTLEARN_CACHE", str(tmp_path / "cache"))
    if _compiler() is None:
        pytest.skip("no C++ compiler here")
    assert not cpu.available()
    assert "could not build broken.cpp" in cpu.error()
    # the failed output was removed (the lock files the build waited on may stay)
    assert [p for p in (tmp_path / "cache").glob("*") if p.suffix != ".lock"] == []
    with pytest.raises(ValueError, match="backend='cpu' is unavailable here: could not build"):
        check_backend("cpu")


def test_cpu_backend_rebuilds_a_damaged_cached_library(monkeypatch, tmp_path):
    """A truncated library in the cache (say, a full disk) is rebuilt on the next load, checked
    against the digest written beside it — loading it would kill the process (SIGBUS in dlopen)
    or leave the backend unavailable for good; the rebuilt kernel computes the reference."""
    from torch_structlearn.ops import cpu

    if _compiler() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setenv("STRUCTLEARN_CACHE", str(tmp_path / "cache"))
    for name, value in [("_kernels", None), ("_error", None), ("_tried", False), ("_ok", False)]:
        monkeypatch.setattr(cpu, name, value)
    # in the cache, not loaded by this process
    built = cpu._compile(cpu.compiler(), [*cpu.COMMON_FLAGS, *cpu.VARIANTS[cpu.variant()][0]])
    damaged = built.read_bytes()[:1000]
    built.unlink()
    built.write_bytes(damaged)
    assert cpu.available(), cpu.error()
    assert built.stat().st_size > 1000  # the same name, rebuilt
    assert built.with_suffix(".sha256").read_text() == hashlib.sha256(built.read_bytes()).hexdigest()
    conn = Connectivity.random((16, 24), density=0.25, seed=0)
    x, v, b = _inputs(conn, (8,), True, False, 1, dtype=torch.float32, device="cpu")
    torch.testing.assert_close(sparse_linear(x, v, conn.crow_indices, conn.col_indices, b, backend="cpu"),
                               reference(x, v, conn, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_low_precision_forward_close_to_reference(device, backend, dtype):
    _usable_on(backend, device)
    if backend == "torch_sparse":
        pytest.skip("torch-sparse has no low-precision kernels")
    conn = Connectivity.random((64, 96), density=0.1, seed=3)
    x, v, b = _inputs(conn, (32,), True, False, 1, dtype=torch.float32, device=device)
    crow, col = conn.crow_indices.to(device), conn.col_indices.to(device)
    with torch.autocast(device, dtype=dtype):
        y = sparse_linear(x, v, crow, col, b, backend=backend)
    assert y.dtype == dtype  # like nn.Linear under autocast
    ref = reference(x.double(), v.double(), conn, b.double())
    torch.testing.assert_close(y.double(), ref, rtol=2e-2, atol=5e-2)
    # and backward runs, giving float32 grads for float32 leaves
    v.requires_grad_()
    with torch.autocast(device, dtype=dtype):
        sparse_linear(x, v, crow, col, b, backend=backend).float().sum().backward()
    assert v.grad.dtype == torch.float32 and torch.isfinite(v.grad).all()


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_compile_fullgraph_equals_eager(device, backend):
    _usable_on(backend, device)
    conn = Connectivity.random((12, 10), density=0.3, seed=0)
    crow, col = conn.crow_indices.to(device), conn.col_indices.to(device)
    x, v, b = _inputs(conn, (4, 5), True, False, 2, dtype=torch.float32, device=device)

    def f(x, v, b):
        return torch.relu(sparse_linear(x, v, crow, col, b, backend=backend)).square().sum()

    compiled = torch.compile(f, fullgraph=True, backend="inductor")
    args_e = [t.clone().requires_grad_() for t in (x, v, b)]
    args_c = [t.clone().requires_grad_() for t in (x, v, b)]
    ye, yc = f(*args_e), compiled(*args_c)
    torch.testing.assert_close(yc, ye)
    ye.backward()
    yc.backward()
    for a, c in zip(args_e, args_c, strict=False):
        torch.testing.assert_close(c.grad, a.grad)


def test_compiled_before_any_eager_call_traces_in_one_graph():
    """A fresh process (the cpu kernels not loaded yet) that compiles a converted model first:
    the kernels' build (files, locks, hashes) must not be traced — fullgraph=True succeeds with
    backend='auto' — and the compiled forward and gradients equal the eager ones."""
    import subprocess
    import sys

    code = """
import torch
from torch_structlearn import convert
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Linear(24, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
convert(model, None, density=0.25, method="magnitude", verbose=False)
x = torch.randn(16, 24)
compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
yc = compiled(x)
yc.square().sum().backward()
gc = [p.grad.clone() for p in model.parameters()]
model.zero_grad()
ye = model(x)
ye.square().sum().backward()
torch.testing.assert_close(yc, ye)
for a, b in zip(gc, [p.grad for p in model.parameters()]):
    torch.testing.assert_close(a, b)
print("same")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip().endswith("same"), r.stderr[-3000:]


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b not in ("auto", "dense")])
def test_op_is_registered_with_fake_impl(backend):
    from torch._subclasses.fake_tensor import FakeTensorMode

    conn = Connectivity.random((5, 4), fan_in=2, seed=0)
    with FakeTensorMode():
        x = torch.empty(3, 4)
        v = torch.empty(conn.nnz)
        y = torch.ops.structlearn.sparse_linear(
            x, v, torch.empty(6, dtype=torch.int64), torch.empty(conn.nnz, dtype=torch.int64),
            torch.empty(5, dtype=torch.int64), torch.empty(conn.nnz, dtype=torch.int64),
            torch.empty(conn.nnz, dtype=torch.int64), None, "csr",
        )
        assert y.shape == (3, 5)
    torch.library.opcheck(
        torch.ops.structlearn.sparse_linear.default,
        (torch.randn(3, 4), torch.randn(conn.nnz), conn.crow_indices, conn.col_indices,
         *__import__("torch_structlearn").connectivity.csr_transpose(conn.crow_indices, conn.col_indices, 4),
         torch.randn(5), backend),
    )


def test_bad_arguments():
    conn = Connectivity.random((3, 4), fan_in=2, seed=0)
    crow, col = conn.crow_indices, conn.col_indices
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="backend must be one of"):
        sparse_linear(x, torch.randn(6), crow, col, backend="fast")
    with pytest.raises(TypeError, match="same dtype"):
        sparse_linear(x, torch.randn(6, dtype=torch.float64), crow, col)
    with pytest.raises(ValueError, match="len\\(col\\) = 6 entries"):
        sparse_linear(x, torch.randn(5), crow, col)
    with pytest.raises(ValueError, match="bias must have shape \\(3,\\)"):
        sparse_linear(x, torch.randn(6), crow, col, torch.randn(4))
    with pytest.raises(TypeError, match="floating-point"):
        sparse_linear(torch.ones(2, 4, dtype=torch.long), torch.randn(6), crow, col)


def _fused_kernel(monkeypatch, present: bool) -> str:
    """Pretend the ``cpu`` backend's kernels did (not) compile; the sparse CPU pick."""
    from torch_structlearn.ops import cpu as cpu_backend

    if present and not cpu_backend.available():
        pytest.skip(f"the cpu backend's kernels did not build: {cpu_backend.error()}")
    monkeypatch.setattr(cpu_backend, "_ok", present)
    monkeypatch.setattr(cpu_backend, "_tried", True)
    return "cpu" if present else "csr"


@pytest.mark.parametrize("kernel", [True, False], ids=["fused", "no-compiler"])
def test_auto_prior_chooses_by_crossover_and_nearest_shape(monkeypatch, kernel):
    from torch_structlearn.ops import auto

    sparse = _fused_kernel(monkeypatch, kernel)
    cpu = torch.device("cpu")
    dev = auto.table_device(cpu)  # "cpu/<isa>": a crossover holds for one instruction set
    # 'float32' was measured for the cpu kernels, 'float32@csr' for csr standing in for them
    # (block layers too: 'float32/b32x32' for the cpu kernels, '…@csr' for the stand-in)
    monkeypatch.setattr(auto, "TABLE", {dev: {"float32": 0.05, "float32@csr": 0.02,
                                              "float32/b32x32": 0.08, "float32/b32x32@csr": 0.04},
                                        "cpu/other-isa": {"float32": 0.9}})
    monkeypatch.setattr(auto, "BY_SHAPE", {dev: {
        "float32/b32x32": {"256x3072x4096": 0.105, "4096x768x3072": 0.08},
        "float32/b32x32@csr": {"256x3072x4096": 0.06, "4096x768x3072": 0.04}}})
    limit = 0.05 if kernel else 0.02  # each kernel at its own measured crossover
    assert auto.prior(cpu, torch.float32, limit) == sparse
    assert auto.prior(cpu, torch.float32, limit + 0.01) == "dense"
    assert auto.prior(cpu, torch.bfloat16, limit) == sparse  # CPU low precision: float32 entry
    assert auto.prior(cpu, torch.float64, 0.01) == "dense"  # nothing measured
    b = (32, 32)
    big = 0.105 if kernel else 0.06  # the batch-256 shape's block crossover of the kernel that runs
    assert auto.prior(cpu, torch.float32, big, b) == "dense"  # no shape: the smallest
    assert auto.prior(cpu, torch.float32, big, b, (200, 3072, 4096)) == sparse
    assert auto.prior(cpu, torch.float32, big, b, (8192, 768, 3072)) == "dense"
    assert auto.prior(cpu, torch.float32, big + 0.005, b, (256, 3072, 4096)) == "dense"
    assert sorted(auto.limits(cpu, torch.float32, b)) == ([0.08, 0.08, 0.105] if kernel
                                                          else [0.04, 0.04, 0.06])
    assert auto.limits(cpu, torch.float64) == []
    monkeypatch.setattr(auto, "TABLE", {dev: {"float32": 0.05}})  # csr never measured:
    assert auto.prior(cpu, torch.float32, 0.01) == ("cpu" if kernel else "dense")  # no evidence
    # another instruction set's entry never applies here
    monkeypatch.setattr(auto, "TABLE", {"cpu/other-isa": {"float32": 0.9, "float32@csr": 0.9}})
    assert auto.prior(cpu, torch.float32, 0.01) == "dense"
    # calibration off: choose() is the prior, whatever it is given to measure
    monkeypatch.setenv("STRUCTLEARN_CALIBRATE", "0")
    assert auto.choose(cpu, torch.float32, 0.01, None, (8, 64, 48), candidates=lambda: ["cpu", "dense"],
                       make_runs=lambda names: pytest.fail("measured with calibration off")) == "dense"


@pytest.mark.parametrize("kernel", [True, False], ids=["fused", "no-compiler"])
def test_auto_layer_caches_what_every_shape_may_need(monkeypatch, kernel):
    """Calibration off: a layer caches up front what the prior may pick at any shape."""
    from torch_structlearn.ops import auto

    monkeypatch.setenv("STRUCTLEARN_CALIBRATE", "0")
    sparse = _fused_kernel(monkeypatch, kernel)
    k = "float32" if kernel else "float32@csr"  # the entry of the kernel that runs
    dev = auto.table_device(torch.device("cpu"))
    monkeypatch.setattr(auto, "TABLE", {dev: {k: 0.05}})
    monkeypatch.setattr(auto, "BY_SHAPE", {dev: {k: {"8x64x48": 0.3, "512x64x48": 0.05}}})
    torch.manual_seed(0)
    layer = StructLearnedLinear(64, 48, density=0.2)  # sparse at batch 8, dense at batch 512
    transposed = layer.nnz if sparse == "csr" else 0  # the fused kernel needs no transpose
    assert layer.col_t.numel() == 0 and layer.dense_index.numel() == 0  # nothing at construction
    with torch.no_grad():
        layer(torch.randn(1, 64))  # the first call builds what the prior may need at any shape
    assert layer.col_t.numel() == transposed and layer.dense_index.numel() == layer.nnz
    w = torch.zeros(48, 64)
    w[layer.connectivity.row_indices(), layer.connectivity.col_indices.long()] = layer.csr_values().detach()
    picked = []
    prior = auto.prior
    monkeypatch.setattr(auto, "prior", lambda *a: picked.append(prior(*a)) or picked[-1])
    for batch in (8, 512):
        x = torch.randn(batch, 64)
        torch.testing.assert_close(layer(x), x @ w.T + layer.bias, rtol=1e-5, atol=1e-5)
    assert picked == [sparse, "dense"]
    sparse_only = StructLearnedLinear(64, 48, density=0.02)
    with torch.no_grad():
        sparse_only(torch.randn(1, 64))
    assert (sparse_only.col_t.numel() > 0) == (sparse == "csr")
    assert sparse_only.dense_index.numel() == 0


def test_cpu_backend_layer_trains_without_a_transposed_structure():
    """With ``backend='cpu'`` a training-mode layer keeps no transpose (2ρ of the dense bytes:
    values + int32 columns, plus the row pointers) and its gradients still match the dense
    reference."""
    if "cpu" not in available_backends():
        pytest.skip("the cpu backend's kernels did not build")
    torch.manual_seed(0)
    layer = StructLearnedLinear(96, 80, density=0.1, backend="cpu").train()
    assert layer.col_t.numel() == 0 and layer.dense_index.numel() == 0
    kept = sum(t.numel() * t.element_size() for t in (layer.values, layer.col_indices))
    assert kept == 8 * layer.nnz  # 4-byte values + 4-byte columns
    x = torch.randn(70, 96, requires_grad=True)
    y = layer(x)
    w = layer.dense_weight()
    ref = x @ w.T + layer.bias
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.values), gy)
    want = torch.autograd.grad(ref, (x, layer.values), gy)
    for g1, g2 in zip(got, want, strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-5)


def test_cpu_backend_refuses_a_malformed_structure():
    """The fused kernels index memory through crow/col: out-of-range entries are a ValueError,
    not a crash."""
    if "cpu" not in available_backends():
        pytest.skip("the cpu backend's kernels did not build")
    x = torch.randn(3, 4)
    good_crow, good_col = torch.tensor([0, 2, 3]), torch.tensor([0, 3, 1])
    sparse_linear(x, torch.randn(3), good_crow, good_col, backend="cpu")
    for crow, col, msg in [
        (good_crow, torch.tensor([0, 4, 1]), "col_indices must lie in \\[0, in_features=4\\)"),
        (good_crow, torch.tensor([0, -1, 1]), "col_indices must lie"),
        (torch.tensor([0, 2, 5]), good_col, "end at nnz = len\\(col_indices\\) = 3"),
        (torch.tensor([0, 3, 2, 3]), good_col, "non-decreasing"),
    ]:
        with pytest.raises(ValueError, match=msg):
            sparse_linear(x, torch.randn(3), crow, col, backend="cpu")


@pytest.mark.parametrize("text", [b'{"crossover": ', b"\xff\xfe", b"[0.1]"])
def test_a_damaged_crossover_table_warns_and_falls_back_to_dense(tmp_path, monkeypatch, text):
    from torch_structlearn.ops import auto

    bad = tmp_path / "crossover.json"
    bad.write_bytes(text)
    monkeypatch.setattr(auto, "TABLE_PATH", bad)
    with pytest.warns(UserWarning, match="ignoring the unreadable crossover table .*crossover.json"):
        assert auto.load_table() == {} and auto.load_by_shape() == {}
    monkeypatch.setattr(auto, "TABLE_PATH", tmp_path / "absent.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no file: nothing to warn about
        assert auto.load_table() == {}
