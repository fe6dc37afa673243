"""The ``cpu`` kernels built for each instruction set, against the dense masked reference.

Every variant this CPU can run is built and checked — forward with bias, the input, values and
bias gradients, float32 and float64 (tight), unstructured and block layers, batches that hit
each path (the one- and two-row gather, register tiles of 1, 2 and 4 vectors, panels of several
sub-tiles with a partial last one), on 1 and 3 threads — and ``gradcheck`` runs through the op
with the variant loaded. A variant this CPU cannot run is still compiled (so a source that does
not build for AVX-512 fails here, on an AVX2 machine too), and the AVX-512 code shape — 64-byte
vectors, 2 per 32-row tile — runs on AVX2 hardware as ``avx2`` built with ``-DSL_VBYTES=64``
(GCC splits each vector into two registers: slow, but the same program).
"""

import shutil

import pytest
import torch

from torch_structlearn import Connectivity, sparse_linear
from torch_structlearn.ops import cpu

pytestmark = pytest.mark.skipif(shutil.which(cpu.compiler()) is None, reason="no C++ compiler")

RUNNABLE = [v for v in cpu.VARIANTS if not (cpu.REQUIRES.get(v, set()) - cpu.cpu_flags())
            and (v not in cpu.REQUIRES or cpu._X86)]
CASES = [(v, ()) for v in RUNNABLE]
if "avx2" in RUNNABLE:
    CASES.append(("avx2", ("-DSL_VBYTES=64",)))  # the AVX-512 code shape on AVX2 hardware


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + "".join(c[1]))
def kernels(request):
    variant, extra = request.param
    return cpu.build(variant, extra)


def _dense(values, crow, col, shape, block):
    """The dense weight, built with index_put from the structure (independent of the kernels)."""
    out, in_f = shape
    if block is None:
        w = torch.zeros(shape, dtype=values.dtype)
        rows = torch.repeat_interleave(torch.arange(out), crow.diff().long())
        w[rows, col.long()] = values
        return w
    bo, bi = block
    blocks = torch.zeros(out // bo, in_f // bi, bo, bi, dtype=values.dtype)
    rows = torch.repeat_interleave(torch.arange(out // bo), crow.diff().long())
    blocks[rows, col.long()] = values
    return blocks.permute(0, 2, 1, 3).reshape(out, in_f)


def _problem(shape, block, density, dtype, seed, index_dtype=torch.int32):
    out, in_f = shape
    if block is None:
        conn = Connectivity.random(shape, density=density, seed=seed)
        crow, col = conn.crow_indices, conn.col_indices
        values = torch.randn(conn.nnz, dtype=dtype, generator=torch.Generator().manual_seed(seed))
    else:
        bo, bi = block
        conn = Connectivity.random((out // bo, in_f // bi), density=density, seed=seed)
        crow, col = conn.crow_indices, conn.col_indices
        values = torch.randn(conn.nnz, bo, bi, dtype=dtype,
                             generator=torch.Generator().manual_seed(seed))
    return values, crow.to(index_dtype), col.to(index_dtype)


# (batch, in, out): one and two rows (gather), small tiles, a panel of several sub-tiles with a
# partial last one (in small enough that panels grow), wide inputs (one sub-tile per panel)
SHAPES = [(1, 50, 30), (2, 50, 30), (5, 37, 19), (17, 64, 40), (45, 40, 24), (700, 64, 96),
          (300, 1100, 20)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("threads", [1, 3])
def test_unstructured_products_match_the_dense_reference(kernels, dtype, threads):
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for i, (n, in_f, out) in enumerate(SHAPES):
            for index_dtype in (torch.int32, torch.int64):
                values, crow, col = _problem((out, in_f), None, 0.2, dtype, i, index_dtype)
                w = _dense(values, crow, col, (out, in_f), None)
                g = torch.Generator().manual_seed(100 + i)
                x = torch.randn(n, in_f, dtype=dtype, generator=g)
                gy = torch.randn(n, out, dtype=dtype, generator=g)
                b = torch.randn(out, dtype=dtype, generator=g)
                torch.testing.assert_close(kernels.forward(x, values, crow, col, b), x @ w.T + b,
                                           **tol)
                gx, gv, gb = kernels.backward(gy, x, values, crow, col, True, True, True)
                rows = torch.repeat_interleave(torch.arange(out), crow.diff().long())
                torch.testing.assert_close(gx, gy @ w, **tol)
                torch.testing.assert_close(gv, (gy.T @ x)[rows, col.long()], **tol)
                torch.testing.assert_close(gb, gy.sum(0), **tol)
                # each gradient alone (the kernels skip what is not asked for)
                assert kernels.backward(gy, x, values, crow, col, False, True)[0] is None
                torch.testing.assert_close(
                    kernels.backward(gy, x, values, crow, col, True, False)[0], gy @ w, **tol)
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("block", [(3, 5), (4, 8), (16, 16), (1, 40)])
@pytest.mark.parametrize("n", [1, 9, 70])
def test_block_products_match_the_dense_reference(kernels, block, n):
    bo, bi = block
    shape = (bo * 6, bi * 5)
    for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-10)):
        values, crow, col = _problem(shape, block, 0.4, dtype, n)
        w = _dense(values, crow, col, shape, block)
        g = torch.Generator().manual_seed(n)
        x = torch.randn(n, shape[1], dtype=dtype, generator=g)
        gy = torch.randn(n, shape[0], dtype=dtype, generator=g)
        b = torch.randn(shape[0], dtype=dtype, generator=g)
        torch.testing.assert_close(kernels.forward(x, values, crow, col, b), x @ w.T + b,
                                   rtol=tol, atol=tol)
        gx, gv, gb = kernels.backward(gy, x, values, crow, col, True, True, True)
        gw = (gy.T @ x).reshape(shape[0] // bo, bo, shape[1] // bi, bi).permute(0, 2, 1, 3)
        rows = torch.repeat_interleave(torch.arange(shape[0] // bo), crow.diff().long())
        torch.testing.assert_close(gx, gy @ w, rtol=tol, atol=tol)
        torch.testing.assert_close(gv, gw[rows, col.long()], rtol=tol, atol=tol)
        torch.testing.assert_close(gb, gy.sum(0), rtol=tol, atol=tol)


def test_dense_moves_match_indexing(kernels):
    values, crow, col = _problem((30, 50), None, 0.3, torch.float32, 0)
    w = torch.full((30, 50), 7.0)
    kernels.scatter(values, crow, col, w)
    rows = torch.repeat_interleave(torch.arange(30), crow.diff().long())
    expect = torch.full((30, 50), 7.0)
    expect[rows, col.long()] = values
    assert torch.equal(w, expect)  # entries off the structure untouched
    got = torch.empty_like(values)
    kernels.gather(w, crow, col, got)
    assert torch.equal(got, values)
    # whole blocks
    values, crow, col = _problem((12, 40), (4, 8), 0.4, torch.float64, 1)
    w = torch.full((12, 40), 7.0, dtype=torch.float64)
    kernels.scatter(values, crow, col, w)
    expect = _dense(values, crow, col, (12, 40), (4, 8))
    off = torch.ones(12, 40, dtype=torch.bool)
    off.view(3, 4, 5, 8).permute(0, 2, 1, 3)[
        torch.repeat_interleave(torch.arange(3), crow.diff().long()), col.long()] = False
    assert torch.equal(w[~off], expect[~off]) and bool((w[off] == 7.0).all())
    got = torch.empty_like(values)
    kernels.gather(w, crow, col, got)
    assert torch.equal(got, values)


@pytest.mark.parametrize("n", [1, 2, 6, 40])
def test_gradcheck_through_the_op_with_each_variant(kernels, monkeypatch, n):
    monkeypatch.setattr(cpu, "_kernels", kernels)
    values, crow, col = _problem((9, 11), None, 0.4, torch.float64, n)
    x = torch.randn(n, 11, dtype=torch.float64, requires_grad=True)
    v = values.requires_grad_()
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, v, b: sparse_linear(x, v, crow, col, b, backend="cpu"), (x, v, b))


def test_every_variant_compiles_even_where_it_cannot_run():
    """The instruction sets this CPU lacks are compiled (not loaded): their source builds."""
    for variant in cpu.VARIANTS:
        if variant in RUNNABLE:
            continue
        flags = [*cpu.COMMON_FLAGS, *cpu.VARIANTS[variant][0]]
        assert cpu._compile(cpu.compiler(), flags).exists()
        with pytest.raises(ValueError, match=f"variant {variant!r}"):
            cpu.build(variant)


def test_a_build_says_what_it_targets(kernels):
    assert kernels.isa in ("avx512", "avx2", "avx", "sse2", "neon", "scalar")
    assert kernels.vector_bytes in (16, 32, 64)
    assert kernels.tile_rows in (16, 32)
    if kernels.variant == "avx2" and "-DSL_VBYTES=64" not in kernels.flags:
        assert (kernels.isa, kernels.vector_bytes) == ("avx2", 32)
    if kernels.variant == "generic" and cpu._X86:
        assert (kernels.isa, kernels.vector_bytes, kernels.tile_rows) == ("sse2", 16, 16)


def test_an_unknown_variant_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="STRUCTLEARN_CPU_ISA / variant must be one of"):
        cpu.build("avx9000")
    for name, value in [("_kernels", None), ("_error", None), ("_tried", False), ("_ok", False)]:
        monkeypatch.setattr(cpu, name, value)
    monkeypatch.setenv("STRUCTLEARN_CPU_ISA", "avx9000")
    assert not cpu.available() and "avx9000" in cpu.error()
