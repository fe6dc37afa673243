// The ``cpu`` backend's kernels: y = x Wᵀ and its two backward products for a CSR weight W,
// on row-major (batch, features) activations, fused with the transposes they need.
//
// Compiled at first use by ops/cpu.py (g++ -O3 -march=native -fopenmp) and called through
// ctypes; OpenMP resolves to the libgomp torch already loaded, so threads are torch's.
//
// Layout: the batch is cut into tiles of T rows. A tile of x (T, in) is transposed into a
// thread-local (in, T) buffer, so each nonzero W[j, c] becomes one T-wide FMA on the row
// xT[c] — vectorised over the batch — and the transposes happen in cache, once per tile:
//   forward      yT[j]   = Σ_p v[p] · xT[col[p]]              (p over row j of W)
//   input grad   gxT[c] += v[p] · gyT[j]                       (scatter; no transposed W needed)
//   values grad  gv[p]  += Σ_t gyT[j][t] · xT[col[p]][t]      (sampled product, per tile)
// Tiles are spread over threads; with fewer tiles than threads (small batches) the rows j of
// W are spread instead. Partial tiles are zero-padded, so padded rows contribute nothing.
//
// Block layers (BSR: crow / col index block rows / columns, v holds each (bo, bi) block
// row-major) run on the same tiles; each block is a small dense product, register-blocked so
// that one load of x or gy serves several FMAs and no index is read per weight:
//   forward      yT[jb·bo + o]       = Σ_p Σ_i v[p][o][i] · xT[col[p]·bi + i]    (R rows at once)
//   input grad   gxT[col[p]·bi + i] += Σ_o v[p][o][i] · gyT[jb·bo + o]         (R columns at once)
//   values grad  gv[p][o][i]        += Σ_t gyT[jb·bo + o][t] · x[t][col[p]·bi + i]
// The values gradient is a sum of outer products over the tile's rows, vectorised over i on the
// row-major x (a dot product per weight would need a horizontal sum per weight and tile).
// Shapes: x (n, in), v (nnz) or (nblocks, bo, bi), crow (out / bo + 1), col (nnz or nblocks),
// y / gy (n, out), gx (n, in); an unstructured layer is bo = bi = 1.

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <omp.h>

namespace {

constexpr int64_t T = 32;  // batch rows per tile
constexpr int64_t J = 16;  // outputs written back per step (one 64-byte line of a float row)

template <class F>
F* alloc(int64_t count) {  // 64-byte aligned; nullptr when out of memory
    size_t bytes = ((size_t)std::max<int64_t>(count, 1) * sizeof(F) + 63) / 64 * 64;
    return static_cast<F*>(std::aligned_alloc(64, bytes));
}

// dst (k, T) = rows b0 .. b0 + T of src (n, k), transposed; rows past n are zero.
template <class F>
void load_tile(const F* src, int64_t n, int64_t k, int64_t b0, F* dst) {
    const int64_t rows = std::min(T, n - b0);
    if (rows < T) std::memset(dst, 0, sizeof(F) * k * T);
    for (int64_t i0 = 0; i0 < k; i0 += J) {
        const int64_t i1 = std::min(k, i0 + J);
        for (int64_t t = 0; t < rows; ++t) {
            const F* s = src + (b0 + t) * k;
            for (int64_t i = i0; i < i1; ++i) dst[i * T + t] = s[i];
        }
    }
}

// rows b0 .. b0 + T of dst (n, k), columns i0 .. i1, from src ((i1 - i0), T) holding them
// transposed.
template <class F>
void store_tile(const F* src, int64_t n, int64_t k, int64_t b0, int64_t i0, int64_t i1, F* dst) {
    const int64_t rows = std::min(T, n - b0);
    for (int64_t t = 0; t < rows; ++t) {
        F* d = dst + (b0 + t) * k;
        for (int64_t i = i0; i < i1; ++i) d[i] = src[(i - i0) * T + t];
    }
}

// T values of F as whole vectors (GCC/Clang vector extensions: AVX-512, or pairs of AVX2
// registers, as -march allows), so the compiler keeps accumulators in registers.
template <class F>
struct Lanes {
    typedef F V __attribute__((vector_size(64)));
    static constexpr int N = T * sizeof(F) / 64;
};

// Σ of a vector's lanes, by halving (the compiler's per-lane extraction is several times slower).
template <class F>
inline F hsum(typename Lanes<F>::V s) {
    typedef F V32 __attribute__((vector_size(32)));
    typedef F V16 __attribute__((vector_size(16)));
    V32 a, b;
    std::memcpy(&a, &s, 32);
    std::memcpy(&b, reinterpret_cast<const char*>(&s) + 32, 32);
    a += b;
    V16 c, d;
    std::memcpy(&c, &a, 16);
    std::memcpy(&d, reinterpret_cast<const char*>(&a) + 16, 16);
    c += d;
    F r = 0;
    for (int l = 0; l < int(16 / sizeof(F)); ++l) r += c[l];
    return r;
}

// yT rows j0 .. j1 of one tile, written straight to y.
template <class F, class I>
void forward_rows(const F* xT, const F* v, const I* crow, const I* col, int64_t j0, int64_t j1,
                  int64_t n, int64_t out, int64_t b0, F* y) {
    using V = typename Lanes<F>::V;
    constexpr int NV = Lanes<F>::N;
    alignas(64) F buf[J * T];
    for (int64_t c0 = j0; c0 < j1; c0 += J) {
        const int64_t c1 = std::min(j1, c0 + J);
        for (int64_t j = c0; j < c1; ++j) {
            V acc[NV] = {};
            for (I p = crow[j]; p < crow[j + 1]; ++p) {
                const V w = V{} + v[p];
                const V* xr = reinterpret_cast<const V*>(xT + (int64_t)col[p] * T);
#pragma GCC unroll 8
                for (int k = 0; k < NV; ++k) acc[k] += w * xr[k];
            }
            std::memcpy(buf + (j - c0) * T, acc, sizeof(acc));
        }
        store_tile(buf, n, out, b0, c0, c1, y);
    }
}

// gxT (when given) and gv (when given) for W's rows j0 .. j1 and one tile.
template <class F, class I>
void backward_rows(const F* gyT, const F* xT, const F* v, const I* crow, const I* col,
                   int64_t j0, int64_t j1, F* gxT, F* gv) {
    using V = typename Lanes<F>::V;
    constexpr int NV = Lanes<F>::N;
    for (int64_t j = j0; j < j1; ++j) {
        const V* g = reinterpret_cast<const V*>(gyT + j * T);
        V gj[NV];
#pragma GCC unroll 8
        for (int k = 0; k < NV; ++k) gj[k] = g[k];
        for (I p = crow[j]; p < crow[j + 1]; ++p) {
            const int64_t c = (int64_t)col[p] * T;
            if (gxT) {
                const V w = V{} + v[p];
                V* r = reinterpret_cast<V*>(gxT + c);
#pragma GCC unroll 8
                for (int k = 0; k < NV; ++k) r[k] += w * gj[k];
            }
            if (gv) {
                const V* xr = reinterpret_cast<const V*>(xT + c);
                V s = gj[0] * xr[0];
#pragma GCC unroll 8
                for (int k = 1; k < NV; ++k) s += gj[k] * xr[k];
                gv[p] += hsum<F>(s);
            }
        }
    }
}

constexpr int R = 4;  // block rows (forward, values grad) or columns (input grad) per step

// acc[r] += w[r · stride] · (the T-wide row at src), r < RR: one load of the row serves RR FMAs
// (the register-blocked step of both block products).
template <class F, int RR>
inline void fma_rows(typename Lanes<F>::V (&acc)[RR][Lanes<F>::N], const F* src, const F* w,
                     int64_t stride) {
    using V = typename Lanes<F>::V;
    constexpr int NV = Lanes<F>::N;
    const V* row = reinterpret_cast<const V*>(src);
    V s[NV];
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) s[k] = row[k];
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
        const V wr = V{} + w[r * stride];
#pragma GCC unroll 8
        for (int k = 0; k < NV; ++k) acc[r][k] += wr * s[k];
    }
}

// Rows o0 .. o0 + RR of block row jb into buf (RR, T) rows, for one tile.
template <class F, class I, int RR>
inline void block_forward_step(const F* xT, const F* v, const I* crow, const I* col, int64_t bo,
                               int64_t bi, int64_t jb, int64_t o0, F* buf) {
    using V = typename Lanes<F>::V;
    constexpr int NV = Lanes<F>::N;
    V acc[RR][NV] = {};
    for (I p = crow[jb]; p < crow[jb + 1]; ++p) {
        const F* w = v + (int64_t)p * bo * bi + o0 * bi;
        const F* xb = xT + (int64_t)col[p] * bi * T;
        for (int64_t i = 0; i < bi; ++i) fma_rows<F, RR>(acc, xb + i * T, w + i, bi);
    }
    std::memcpy(buf, acc, sizeof(acc));
}

// yT rows of block rows jb0 .. jb1 of one tile, written straight to y.
template <class F, class I>
void block_forward_rows(const F* xT, const F* v, const I* crow, const I* col, int64_t bo,
                        int64_t bi, int64_t jb0, int64_t jb1, int64_t n, int64_t out, int64_t b0,
                        F* y) {
    alignas(64) F buf[J * T];
    for (int64_t jb = jb0; jb < jb1; ++jb) {
        for (int64_t c0 = 0; c0 < bo; c0 += J) {
            const int64_t c1 = std::min(bo, c0 + J);
            int64_t o = c0;
            for (; o + R <= c1; o += R)
                block_forward_step<F, I, R>(xT, v, crow, col, bo, bi, jb, o, buf + (o - c0) * T);
            for (; o < c1; ++o)
                block_forward_step<F, I, 1>(xT, v, crow, col, bo, bi, jb, o, buf + (o - c0) * T);
            store_tile(buf, n, out, b0, jb * bo + c0, jb * bo + c1, y);
        }
    }
}

// gxT rows col[p]·bi + i0 .. + RR += Σ_o v[p][o][i] · gyT[jb·bo + o], for one block p.
template <class F, int RR>
inline void block_input_step(const F* gyT, const F* w, int64_t bo, int64_t bi, int64_t i0, F* gx) {
    using V = typename Lanes<F>::V;
    constexpr int NV = Lanes<F>::N;
    V acc[RR][NV] = {};
    for (int64_t o = 0; o < bo; ++o) fma_rows<F, RR>(acc, gyT + o * T, w + o * bi + i0, 1);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
        V* d = reinterpret_cast<V*>(gx + (i0 + r) * T);
#pragma GCC unroll 8
        for (int k = 0; k < NV; ++k) d[k] += acc[r][k];
    }
}

// gv[p] rows o0 .. o0 + RR += Σ_t gyT[jb·bo + o][t] · x[t][col[p]·bi + i], for one block p:
// x rows are read in place (row-major), vectors along i; a tail of bi not filling a vector is
// done in scalars.
template <class F, int RR>
inline void block_values_step(const F* gyT, const F* xc, int64_t in, int64_t rows, int64_t bi,
                              int64_t o0, F* g) {
    typedef F U __attribute__((vector_size(64), aligned(sizeof(F))));  // unaligned loads/stores
    constexpr int64_t L = 64 / sizeof(F);
    int64_t i0 = 0;
    for (; i0 + 2 * L <= bi; i0 += 2 * L) {
        U acc[RR][2] = {};
        for (int64_t t = 0; t < rows; ++t) {
            const U x0 = *reinterpret_cast<const U*>(xc + t * in + i0);
            const U x1 = *reinterpret_cast<const U*>(xc + t * in + i0 + L);
#pragma GCC unroll 8
            for (int r = 0; r < RR; ++r) {
                const U s = U{} + gyT[(o0 + r) * T + t];
                acc[r][0] += s * x0;
                acc[r][1] += s * x1;
            }
        }
#pragma GCC unroll 8
        for (int r = 0; r < RR; ++r) {
            *reinterpret_cast<U*>(g + (o0 + r) * bi + i0) += acc[r][0];
            *reinterpret_cast<U*>(g + (o0 + r) * bi + i0 + L) += acc[r][1];
        }
    }
    for (; i0 < bi; ++i0)
        for (int r = 0; r < RR; ++r) {
            F s = 0;
            for (int64_t t = 0; t < rows; ++t) s += gyT[(o0 + r) * T + t] * xc[t * in + i0];
            g[(o0 + r) * bi + i0] += s;
        }
}

// gxT (when given) and gv (when given) for block rows jb0 .. jb1 and one tile; xt: the tile's
// first row of x (row-major), rows: its rows.
template <class F, class I>
void block_backward_rows(const F* gyT, const F* xt, int64_t in, int64_t rows, const F* v,
                         const I* crow, const I* col, int64_t bo, int64_t bi, int64_t jb0,
                         int64_t jb1, F* gxT, F* gv) {
    for (int64_t jb = jb0; jb < jb1; ++jb) {
        const F* g = gyT + jb * bo * T;
        for (I p = crow[jb]; p < crow[jb + 1]; ++p) {
            const int64_t c = (int64_t)col[p] * bi, base = (int64_t)p * bo * bi;
            if (gxT) {
                int64_t i = 0;
                for (; i + R <= bi; i += R) block_input_step<F, R>(g, v + base, bo, bi, i, gxT + c * T);
                for (; i < bi; ++i) block_input_step<F, 1>(g, v + base, bo, bi, i, gxT + c * T);
            }
            if (gv) {
                int64_t o = 0;
                for (; o + R <= bo; o += R) block_values_step<F, R>(g, xt + c, in, rows, bi, o, gv + base);
                for (; o < bo; ++o) block_values_step<F, 1>(g, xt + c, in, rows, bi, o, gv + base);
            }
        }
    }
}

// Rows r0 .. r1 of the structure (block rows for a block layer) for one tile.
template <class F, class I>
void forward_any(const F* xT, const F* v, const I* crow, const I* col, int64_t bo, int64_t bi,
                 int64_t r0, int64_t r1, int64_t n, int64_t out, int64_t b0, F* y) {
    if (bo == 1 && bi == 1)
        forward_rows(xT, v, crow, col, r0, r1, n, out, b0, y);
    else
        block_forward_rows(xT, v, crow, col, bo, bi, r0, r1, n, out, b0, y);
}

// The same for the backward products; xT is only read by unstructured layers' values
// gradient, x (row-major, tile rows from b0) only by block layers'.
template <class F, class I>
void backward_any(const F* gyT, const F* xT, const F* x, int64_t n, int64_t in, int64_t b0,
                  const F* v, const I* crow, const I* col, int64_t bo, int64_t bi, int64_t r0,
                  int64_t r1, F* gxT, F* gv) {
    if (bo == 1 && bi == 1)
        backward_rows(gyT, xT, v, crow, col, r0, r1, gxT, gv);
    else
        block_backward_rows(gyT, x + b0 * in, in, std::min(T, n - b0), v, crow, col, bo, bi, r0,
                            r1, gxT, gv);
}

// Every buffer of a call comes from one allocation made before any work, so running out of
// memory is reported (return 1) instead of crashing inside a parallel region. Slices are
// multiples of T * sizeof(F) = 128 bytes, so each stays 64-byte aligned.
template <class F, class I>
int forward(const F* x, int64_t n, int64_t in, const F* v, const I* crow, const I* col,
            int64_t out, int64_t bo, int64_t bi, F* y, int threads) {
    const int64_t tiles = (n + T - 1) / T, rows = out / bo;
    const bool by_tiles = tiles >= threads;
    F* ws = alloc<F>(in * T * (by_tiles ? threads : 1));
    if (!ws) return 1;
    if (by_tiles) {
#pragma omp parallel num_threads(threads)
        {
            F* xT = ws + in * T * omp_get_thread_num();
#pragma omp for schedule(static)
            for (int64_t b = 0; b < tiles; ++b) {
                load_tile(x, n, in, b * T, xT);
                forward_any(xT, v, crow, col, bo, bi, 0, rows, n, out, b * T, y);
            }
        }
    } else {  // few tiles: threads split W's rows (block rows)
        const int64_t step = bo == 1 ? J : 1, steps = (rows + step - 1) / step;
        for (int64_t b = 0; b < tiles; ++b) {
            load_tile(x, n, in, b * T, ws);
#pragma omp parallel for num_threads(threads) schedule(static)
            for (int64_t s = 0; s < steps; ++s)
                forward_any(ws, v, crow, col, bo, bi, s * step, std::min(rows, (s + 1) * step), n,
                            out, b * T, y);
        }
    }
    std::free(ws);
    return 0;
}

template <class F, class I>
int backward(const F* gy, const F* x, int64_t n, int64_t in, int64_t out, const F* v,
             const I* crow, const I* col, int64_t bo, int64_t bi, F* gx, F* gv, int threads) {
    const int64_t tiles = (n + T - 1) / T, rows = out / bo, nnz = (int64_t)crow[rows] * bo * bi;
    const bool by_tiles = tiles >= threads;
    // per tile: gyT (out, T), xT (in, T) for an unstructured values gradient, gxT (in, T) for
    // the input's
    const bool xT_needed = gv && bo == 1 && bi == 1;
    const int64_t tile = out * T + (xT_needed ? in * T : 0) + (gx ? in * T : 0);
    // by tiles: one such set per thread, and per-thread values-gradient partials (summed at the
    // end); few tiles: threads split W's rows and each scatters into its own gxT
    const bool parts = by_tiles && gv && threads > 1;
    const int64_t size = by_tiles ? tile * threads + (parts ? nnz * threads : 0)
                                  : out * T + (xT_needed ? in * T : 0) + (gx ? in * T * threads : 0);
    F* ws = alloc<F>(size);
    if (!ws) return 1;
    if (gv) std::memset(gv, 0, sizeof(F) * nnz);
    if (by_tiles) {
        F* partial = parts ? ws + tile * threads : nullptr;
        if (parts) std::memset(partial, 0, sizeof(F) * nnz * threads);
#pragma omp parallel num_threads(threads)
        {
            const int id = omp_get_thread_num();
            F* gyT = ws + tile * id;
            F* xT = xT_needed ? gyT + out * T : nullptr;
            F* gxT = gx ? gyT + out * T + (xT_needed ? in * T : 0) : nullptr;
            F* mine = parts ? partial + nnz * id : gv;
#pragma omp for schedule(static)
            for (int64_t b = 0; b < tiles; ++b) {
                load_tile(gy, n, out, b * T, gyT);
                if (xT) load_tile(x, n, in, b * T, xT);
                if (gxT) std::memset(gxT, 0, sizeof(F) * in * T);
                backward_any(gyT, xT, x, n, in, b * T, v, crow, col, bo, bi, 0, rows, gxT, mine);
                if (gxT) store_tile(gxT, n, in, b * T, 0, in, gx);
            }
            if (parts) {  // the omp for above ended with a barrier: every partial is complete
#pragma omp for schedule(static)
                for (int64_t p = 0; p < nnz; ++p) {
                    F s = 0;
                    for (int k = 0; k < threads; ++k) s += partial[nnz * k + p];
                    gv[p] = s;
                }
            }
        }
    } else {
        F* gyT = ws;
        F* xT = xT_needed ? ws + out * T : nullptr;
        F* gxTs = gx ? ws + out * T + (xT_needed ? in * T : 0) : nullptr;
        for (int64_t b = 0; b < tiles; ++b) {
            load_tile(gy, n, out, b * T, gyT);
            if (xT) load_tile(x, n, in, b * T, xT);
            if (gxTs) std::memset(gxTs, 0, sizeof(F) * in * T * threads);
#pragma omp parallel num_threads(threads)
            {
                const int id = omp_get_thread_num(), k = omp_get_num_threads();
                const int64_t r0 = rows * id / k, r1 = rows * (id + 1) / k;
                backward_any(gyT, xT, x, n, in, b * T, v, crow, col, bo, bi, r0, r1,
                             gxTs ? gxTs + in * T * id : nullptr, gv);
            }
            if (gxTs) {
                for (int k = 1; k < threads; ++k)
                    for (int64_t i = 0; i < in * T; ++i) gxTs[i] += gxTs[in * T * k + i];
                store_tile(gxTs, n, in, b * T, 0, in, gx);
            }
        }
    }
    std::free(ws);
    return 0;
}

}  // namespace

// Exported entry points; each returns 0, or 1 when its workspace could not be allocated.
#define STRUCTLEARN_EXPORT(F, I, NAME)                                                          \
    extern "C" int NAME##_forward(const F* x, int64_t n, int64_t in, const F* v,                \
                                  const I* crow, const I* col, int64_t out, int64_t bo,         \
                                  int64_t bi, F* y, int th) {                                   \
        return forward<F, I>(x, n, in, v, crow, col, out, bo, bi, y, th);                       \
    }                                                                                           \
    extern "C" int NAME##_backward(const F* gy, const F* x, int64_t n, int64_t in, int64_t out, \
                                   const F* v, const I* crow, const I* col, int64_t bo,         \
                                   int64_t bi, F* gx, F* gv, int th) {                          \
        return backward<F, I>(gy, x, n, in, out, v, crow, col, bo, bi, gx, gv, th);             \
    }

STRUCTLEARN_EXPORT(float, int32_t, f32_i32)
STRUCTLEARN_EXPORT(float, int64_t, f32_i64)
STRUCTLEARN_EXPORT(double, int32_t, f64_i32)
STRUCTLEARN_EXPORT(double, int64_t, f64_i64)
