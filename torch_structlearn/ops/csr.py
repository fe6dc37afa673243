"""``csr`` backend: torch's native sparse CSR / BSR matmuls (MKL on CPU, cuSPARSE on CUDA).

* forward      ``y = x Wᵀ``   as ``(W @ xᵀ)ᵀ``     — CSR times dense
* input grad   ``gx = gy W``   as ``(Wᵀ @ gyᵀ)ᵀ``  — with the cached transposed structure
* values grad  ``gW[i, j] = Σ_n gy[n, i] x[n, j]`` only at the nonzeros — a sampled dense-dense
  product (``torch.sparse.sampled_addmm``, accumulated in place over batch chunks), never the
  dense ``gyᵀ x``.

MKL is fast only with a row-major dense operand whose rows are the reduction dimension
(``xᵀ``), so on CPU the batch is processed in chunks of ``CPU_CHUNK`` rows: each chunk is
transposed into a small reused buffer that stays in cache, multiplied into another buffer
(``beta=0``: no zero fill), and copied back. One transposed ``gy`` chunk serves both backward
products. (Measured on the 2-core CPU, batch 4096, 768→3072, 1 %: 20 ms forward against 46 ms
for unchunked calls — whole-matrix transposes were the cost. See BENCHMARKS.md.)
Block layers (``values (nblocks, bo, bi)`` on a BSR structure) take the same path with torch's
BSR tensors; their values gradient is one dense ``(bo, N) @ (N, nb * bi)`` product per block
row (the row's input blocks gathered), as torch has no BSR sampled product on the CPU.
MKL has no bf16/fp16 sparse kernels, so on CPU those dtypes are computed in float32.
Shapes: ``x (N, in)``, ``values (nnz,)``, ``crow (out + 1,)``, ``col (nnz,)``, ``gy (N, out)``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..connectivity import bsr_to_csr

# torch warns once that sparse CSR is "beta"; the ops used here are tested against the dense
# reference in tests/test_ops.py, so the warning only adds noise to users' logs.
warnings.filterwarnings("ignore", message="Sparse (CSR|BSR) tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

CPU_CHUNK = 256


def _compute_dtype(t: Tensor) -> torch.dtype:
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return t.dtype


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR tensor, or BSR when ``values`` are ``(nblocks, bo, bi)`` blocks (MKL's BSR
    kernels need square blocks: rectangular ones are expanded to CSR, each call)."""
    if values.dim() == 3 and values.shape[1] == values.shape[2]:
        return torch.sparse_bsr_tensor(crow, col, values, shape, check_invariants=False)
    if values.dim() == 3:
        crow, col, index = bsr_to_csr(crow, col, tuple(values.shape[1:]))
        values = values.reshape(-1)[index]
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _block_values_grad(gy: Tensor, x: Tensor, crow: Tensor, col: Tensor, bo: int, bi: int) -> Tensor:
    """``gV[k] = gy[:, row block]ᵀ @ x[:, col block]`` for every block, one block row at a time."""
    n = x.shape[0]
    xb = x.view(n, x.shape[1] // bi, bi)
    gv = x.new_empty(col.numel(), bo, bi)
    ptr = crow.tolist()
    for r in range(len(ptr) - 1):
        s, e = ptr[r], ptr[r + 1]
        if s == e:
            continue
        xs = xb[:, col[s:e]].reshape(n, -1)  # (N, nb * bi)
        gv[s:e] = (gy[:, r * bo:(r + 1) * bo].T @ xs).view(bo, e - s, bi).transpose(0, 1)
    return gv


def _chunks(n: int, device: torch.device):
    step = CPU_CHUNK if device.type == "cpu" else max(n, 1)
    return [(s, min(s + step, n)) for s in range(0, n, step)]


class _Transposer:
    """Reusable ``(k, chunk)`` buffer holding the transpose of a row chunk of ``(N, k)``."""

    def __init__(self, like: Tensor, k: int, n: int):
        self.buf = like.new_empty(k, min(n, CPU_CHUNK) if like.device.type == "cpu" else n)

    def __call__(self, rows: Tensor) -> Tensor:
        b = self.buf[:, : rows.shape[0]]
        b.copy_(rows.T)
        return b


def _spmm_rows(w: Tensor, dense: Tensor, out: Tensor) -> None:
    """``out = dense @ wᵀ`` for a CSR ``w (m, k)``, ``dense (N, k)``, ``out (N, m)``."""
    n, m = dense.shape[0], out.shape[1]
    transpose = _Transposer(dense, dense.shape[1], n)
    res = dense.new_empty(m, transpose.buf.shape[1])
    for s, e in _chunks(n, dense.device):
        r = res[:, : e - s]
        torch.addmm(r, w, transpose(dense[s:e]), beta=0, out=r)
        out[s:e].copy_(r.T)


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t) -> Tensor:
    dt = _compute_dtype(x)
    out_features = (crow.numel() - 1) * (values.shape[1] if values.dim() == 3 else 1)
    w = _csr(crow, col, values.to(dt), (out_features, x.shape[1]))
    y = x.new_empty(x.shape[0], out_features, dtype=dt)
    if x.shape[0]:
        _spmm_rows(w, x.to(dt), y)
    return y.to(x.dtype)


def backward(gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t,
             need_input: bool, need_values: bool) -> tuple[Tensor | None, Tensor | None]:
    crow_t, col_t, perm = t
    dt = _compute_dtype(x)
    n, in_features = x.shape
    out_features, nnz = gy.shape[1], col.numel()
    if values.dim() == 3:  # block layer: BSR
        bo, bi = values.shape[1:]
        gx = None
        if need_input:
            wt = _csr(crow_t, col_t, values.to(dt)[perm].transpose(1, 2).contiguous(),
                      (in_features, out_features))
            gx = x.new_empty(n, in_features, dtype=dt)
            if n:
                _spmm_rows(wt, gy.to(dt), gx)
            gx = gx.to(x.dtype)
        gv = None
        if need_values:
            gv = _block_values_grad(gy.to(dt), x.to(dt), crow, col, bo, bi).to(x.dtype)
        return gx, gv
    gy, xc = gy.to(dt), x.to(dt)
    gx = x.new_empty(n, in_features, dtype=dt) if need_input else None
    gv = x.new_zeros(nnz, dtype=dt) if need_values else None
    if n == 0:
        return (gx.to(x.dtype) if need_input else None), (gv.to(x.dtype) if need_values else None)
    if need_input:
        wt = _csr(crow_t, col_t, values.to(dt)[perm], (in_features, out_features))
    if need_values:  # accumulated in place over the chunks: no per-chunk values temporaries
        acc = _csr(crow, col, gv, (out_features, in_features))
    gy_t = _Transposer(gy, out_features, n)
    x_t = _Transposer(xc, in_features, n)
    res = x.new_empty(in_features, gy_t.buf.shape[1], dtype=dt)
    for s, e in _chunks(n, x.device):
        gyc = gy_t(gy[s:e])  # (out, chunk), shared by both products
        if need_input:
            r = res[:, : e - s]
            torch.addmm(r, wt, gyc, beta=0, out=r)
            gx[s:e].copy_(r.T)
        if need_values and nnz:
            # the kernel wants mat2 as (in, chunk) contiguous: pass that buffer's transpose
            xtc = x_t(xc[s:e])
            torch.sparse.sampled_addmm(acc, gyc, xtc.T, beta=1.0, out=acc)
    return (gx.to(x.dtype) if need_input else None), (gv.to(x.dtype) if need_values else None)
