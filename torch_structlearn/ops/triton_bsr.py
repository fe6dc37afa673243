"""``triton`` backend: Triton kernels for block-sparse (BSR) weights, for CUDA.

The weight ``W (out, in)`` is made of dense blocks ``values[k] (bo, bi)`` at block row
``row[k]`` and block column ``col[k]`` (BSR: ``crow (out/bo + 1,)``, ``col (nblocks,)``).

* ``_rows_kernel`` — one program per (``BLOCK_N`` rows of the batch, one output block row):
  ``acc (BLOCK_N, out_block) += a[:, in block of k] @ Wblock_k`` over the blocks ``k`` of that
  row. The forward ``y = x Wᵀ`` runs it on the BSR structure with every block read
  transposed; the input gradient ``gx = gy W`` runs it on the cached *transposed* structure
  (``crow_t, col_t, perm``) with the blocks read as stored — no transposed copy of the values.
* ``_values_kernel`` — one program per block: ``gV[k] = gy[:, row block]ᵀ @ x[:, col block]``
  summed over the batch in ``BLOCK_N`` steps: the block-sampled product, never ``gyᵀ x``.

Both read the activations row-major as they come (no transposes), accumulate in float32 and
write the input dtype (float64, for gradcheck, accumulates in float64). ``tl.dot`` needs tiles of at least 16, so ``bo, bi >= 16``. With
``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (that is how the CPU test suite
checks them against the dense reference); on a GPU they are the fast path for block layers.
Shapes: ``x (N, in)``, ``values (nblocks, bo, bi)``, ``gy (N, out)``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from ..connectivity import row_of_entries

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - triton ships with torch's CUDA wheels on Linux
    AVAILABLE = False

MIN_BLOCK = 16


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def usable(device: torch.device) -> bool:
    """Whether the kernels can run on ``device`` here."""
    return AVAILABLE and (device.type == "cuda" or (device.type == "cpu" and interpreting()))


if AVAILABLE:

    @triton.jit
    def _rows_kernel(a_ptr, v_ptr, crow_ptr, col_ptr, perm_ptr, out_ptr, N, stride_a, stride_o,
                     W_IN: tl.constexpr, W_OUT: tl.constexpr, S_IN: tl.constexpr,
                     S_OUT: tl.constexpr, HAS_PERM: tl.constexpr, BLOCK_N: tl.constexpr,
                     PRECISION: tl.constexpr, ACC: tl.constexpr):
        pid_n = tl.program_id(0)
        r = tl.program_id(1)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_i = tl.arange(0, W_IN)
        offs_o = tl.arange(0, W_OUT)
        mask_n = offs_n < N
        start = tl.load(crow_ptr + r)
        end = tl.load(crow_ptr + r + 1)
        acc = tl.zeros((BLOCK_N, W_OUT), dtype=ACC)
        for kk in range(start, end):
            k = kk
            if HAS_PERM:
                k = tl.load(perm_ptr + kk)
            c = tl.load(col_ptr + kk)
            a = tl.load(a_ptr + offs_n[:, None].to(tl.int64) * stride_a + c * W_IN + offs_i[None, :],
                        mask=mask_n[:, None], other=0.0)
            w = tl.load(v_ptr + k.to(tl.int64) * (W_IN * W_OUT)
                        + offs_i[:, None] * S_IN + offs_o[None, :] * S_OUT)
            acc += tl.dot(a, w, input_precision=PRECISION)
        tl.store(out_ptr + offs_n[:, None].to(tl.int64) * stride_o + r * W_OUT + offs_o[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=mask_n[:, None])

    @triton.jit
    def _values_kernel(gy_ptr, x_ptr, row_ptr, col_ptr, gv_ptr, N, stride_g, stride_x,
                       BO: tl.constexpr, BI: tl.constexpr, BLOCK_N: tl.constexpr,
                       PRECISION: tl.constexpr, ACC: tl.constexpr):
        k = tl.program_id(0)
        r = tl.load(row_ptr + k)
        c = tl.load(col_ptr + k)
        offs_a = tl.arange(0, BO)
        offs_c = tl.arange(0, BI)
        acc = tl.zeros((BO, BI), dtype=ACC)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < N
            g = tl.load(gy_ptr + offs_n[None, :].to(tl.int64) * stride_g + r * BO + offs_a[:, None],
                        mask=mask_n[None, :], other=0.0)  # (BO, BLOCK_N) = gy tileᵀ
            xv = tl.load(x_ptr + offs_n[:, None].to(tl.int64) * stride_x + c * BI + offs_c[None, :],
                         mask=mask_n[:, None], other=0.0)
            acc += tl.dot(g, xv, input_precision=PRECISION)
        tl.store(gv_ptr + k.to(tl.int64) * (BO * BI) + offs_a[:, None] * BI + offs_c[None, :],
                 acc.to(gv_ptr.dtype.element_ty))


def _options(dtype: torch.dtype) -> dict:
    """``tl.dot`` precision and accumulator: float32 matches ``nn.Linear`` (TF32 only where
    torch allows it for matmuls); float64 (gradcheck) accumulates in float64."""
    tf32 = dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    return {"PRECISION": "tf32" if tf32 else "ieee",
            "ACC": tl.float64 if dtype == torch.float64 else tl.float32}


def _block_n(n: int) -> int:
    return 64 if n >= 64 else max(16, triton.next_power_of_2(n))


def _rows(a: Tensor, values: Tensor, crow: Tensor, col: Tensor, perm: Tensor | None,
          w_in: int, w_out: int, transposed: bool) -> Tensor:
    n = a.shape[0]
    rows = crow.numel() - 1
    out = a.new_empty(n, rows * w_out)
    if n == 0 or rows == 0:
        return out.zero_()
    bn = _block_n(n)
    bo, bi = values.shape[1:]
    # element (in i, out o) of a block: forward reads values[k][o, i]; transposed values[k][i, o]
    s_in, s_out = (bi, 1) if transposed else (1, bi)
    grid = (triton.cdiv(n, bn), rows)
    _rows_kernel[grid](a, values, crow, col, perm if perm is not None else col, out, n,
                       a.stride(0), out.stride(0), W_IN=w_in, W_OUT=w_out, S_IN=s_in,
                       S_OUT=s_out, HAS_PERM=perm is not None, BLOCK_N=bn, **_options(a.dtype))
    return out


def forward(x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t) -> Tensor:
    """``y (N, out) = x Wᵀ``."""
    bo, bi = values.shape[1:]
    return _rows(x, values.contiguous(), crow, col, None, bi, bo, transposed=False)


def backward(gy: Tensor, x: Tensor, values: Tensor, crow: Tensor, col: Tensor, t,
             need_input: bool, need_values: bool) -> tuple[Tensor | None, Tensor | None]:
    """``gx = gy W`` (transposed structure ``t = (crow_t, col_t, perm)``) and the block values
    gradient ``gV[k] = gy[:, row k]ᵀ x[:, col k]``."""
    crow_t, col_t, perm = t
    values = values.contiguous()
    bo, bi = values.shape[1:]
    gx = gv = None
    if need_input:
        gx = _rows(gy, values, crow_t, col_t, perm, bo, bi, transposed=True)
    if need_values:
        nblk, n = col.numel(), x.shape[0]
        gv = torch.zeros_like(values) if n == 0 else torch.empty_like(values)
        if nblk and n:
            row = row_of_entries(crow, nblk)
            _values_kernel[(nblk,)](gy, x, row, col, gv, n, gy.stride(0), x.stride(0), BO=bo,
                                    BI=bi, BLOCK_N=_block_n(n), **_options(x.dtype))
    return gx, gv
