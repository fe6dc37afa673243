"""``csr`` backend: torch's native sparse CSR matmuls (MKL on CPU, cuSPARSE on CUDA).

* forward      ``y = x Wᵀ``   as ``(W @ xᵀ)ᵀ``     — CSR times dense
* input grad   ``gx = gy W``   as ``(Wᵀ @ gyᵀ)ᵀ``  — with the cached transposed structure
* values grad  ``gW[i, j] = Σ_n gy[n, i] x[n, j]`` only at the nonzeros — a sampled dense-dense
  product (``torch.sparse.sampled_addmm``), never the dense ``gyᵀ x``.

On CPU the batch is processed in chunks of ``CPU_CHUNK`` rows so that the dense operand of each
product stays in the L2 cache (measured: ~2x faster than one call for batch 4096; BENCHMARKS.md).
MKL has no bf16/fp16 sparse kernels, so on CPU those dtypes are computed in float32.
Shapes: ``x (N, in)``, ``values (nnz,)``, ``crow (out + 1,)``, ``col (nnz,)``, ``gy (N, out)``.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

# torch warns once that sparse CSR is "beta"; the ops used here are tested against the dense
# reference in tests/test_ops.py, so the warning only adds noise to users' logs.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")

CPU_CHUNK = 256


def _compute_dtype(t: Tensor) -> torch.dtype:
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return t.dtype


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _chunks(n: int, device: torch.device):
    step = CPU_CHUNK if device.type == "cpu" else max(n, 1)
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _spmm(w: Tensor, dense: Tensor, out_features: int) -> Tensor:
    """``dense (N, k) @ wᵀ`` for a CSR ``w (out, k)`` → ``(N, out)``, chunked over N."""
    out = dense.new_empty(dense.shape[0], out_features)
    for s, e in _chunks(dense.shape[0], dense.device):
        out[s:e] = torch.sparse.mm(w, dense[s:e].T.contiguous()).T
    return out


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t) -> Tensor:
    dt = _compute_dtype(x)
    out_features = crow.numel() - 1
    w = _csr(crow, col, values.to(dt), (out_features, x.shape[1]))
    return _spmm(w, x.to(dt), out_features).to(x.dtype)


def grad_input(gy: Tensor, values: Tensor, crow: Tensor, col: Tensor, t, in_features: int) -> Tensor:
    crow_t, col_t, perm = t
    dt = _compute_dtype(gy)
    wt = _csr(crow_t, col_t, values.to(dt)[perm], (in_features, crow.numel() - 1))
    return _spmm(wt, gy.to(dt), in_features).to(gy.dtype)


def grad_values(gy: Tensor, x: Tensor, crow: Tensor, col: Tensor) -> Tensor:
    dt = _compute_dtype(x)
    out_features, nnz = crow.numel() - 1, col.numel()
    pattern = _csr(crow, col, x.new_ones(nnz, dtype=dt), (out_features, x.shape[1]))
    gv = x.new_zeros(nnz, dtype=dt)
    if nnz == 0:
        return gv.to(x.dtype)
    gy, x = gy.to(dt), x.to(dt)
    for s, e in _chunks(x.shape[0], x.device):
        part = torch.sparse.sampled_addmm(pattern, gy[s:e].T.contiguous(), x[s:e], beta=0.0)
        gv += part.values()
    return gv.to(x.dtype)
