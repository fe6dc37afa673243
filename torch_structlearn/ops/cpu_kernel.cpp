// The ``cpu`` backend's kernels: y = x Wᵀ + b and its backward products for a CSR weight W,
// on row-major (batch, features) activations, fused with the transposes they need.
//
// Compiled at first use by ops/cpu.py (g++ -O3 -march=<target> -fopenmp) and called through
// ctypes; OpenMP resolves to the libgomp torch already loaded, so threads are torch's.
//
// Portable across instruction sets. The vector type is the target's native register width,
// chosen at compile time: 64 bytes with AVX-512, 32 with AVX/AVX2, 16 otherwise (SSE2, ARM
// NEON, or scalars where the compiler has no vectors); so are the register tile and how many
// accumulators a step keeps (below). Nothing here is x86-specific: GCC/Clang vector extensions
// lower to whatever the target has. (A vector wider than the registers — as the first
// version's 64-byte vectors were on AVX2 — is split by GCC through the stack, which made the
// AVX2 build 4-10x slower than the AVX-512 one.)
//
// Layout. The batch is cut into panels of P rows. A panel of x (P, in) is transposed into a
// thread-local (in, P) buffer, so each nonzero W[j, c] becomes P-wide FMAs on the row xT[c] —
// vectorised over the batch, in register tiles of TV = NV vectors — and the transposes happen
// in cache, once per panel:
//   forward      yT[j]   = b[j] + Σ_p v[p] · xT[col[p]]       (p over row j of W)
//   input grad   gxT[c] += v[p] · gyT[j]                       (scatter; no transposed W needed)
//   values grad  gv[p]  += Σ_t gyT[j][t] · xT[col[p]][t]      (sampled product, per panel)
//   bias grad    gb[j]  += Σ_t gyT[j][t]
// gy is transposed 16 outputs at a time (into L1) as the rows of W are walked, so only the
// (in, P) panels are read at random — one at a time: the backward makes one pass for the input
// gradient (gxT) and one for the values gradient (xT). P is the largest power-of-2 multiple of
// TV whose panel fills half of this CPU's L2: the index and value streams, the sweeps over the
// values-gradient partials and the horizontal sums of the values gradient are then paid once
// per P rows instead of once per TV rows.
// A batch smaller than the register tile runs on the smallest one (NV = 1, 2, 4, ...) that
// holds it; an unstructured forward of one or two rows (inference) skips the transpose and
// gathers x directly. Panels are spread over threads; with fewer panels than threads (small
// batches) the rows j of W are spread instead. Partial panels are zero-padded, so padded rows
// contribute nothing.
//
// Block layers (BSR: crow / col index block rows / columns, v holds each (bo, bi) block
// row-major) run on panels of one register tile; each block is a small dense product,
// register-blocked so that one load of x or gy serves several FMAs and no index is read per
// weight:
//   forward      yT[jb·bo + o]       = Σ_p Σ_i v[p][o][i] · xT[col[p]·bi + i]    (R rows at once)
//   input grad   gxT[col[p]·bi + i] += Σ_o v[p][o][i] · gyT[jb·bo + o]         (R columns at once)
//   values grad  gv[p][o][i]        += Σ_t gyT[jb·bo + o][t] · x[t][col[p]·bi + i]
// The values gradient is a sum of outer products over the panel's rows, vectorised over i on
// the row-major x (a dot product per weight would need a horizontal sum per weight and panel).
// Shapes: x (n, in), v (nnz) or (nblocks, bo, bi), crow (out / bo + 1), col (nnz or nblocks),
// b / gb (out), y / gy (n, out), gx (n, in); an unstructured layer is bo = bi = 1.
//
// Every entry point first checks the structure it is given — crow starts at 0, never
// decreases and ends at len(col); every col lies in [0, in / bi) — in one pass, and returns 2
// instead of reading out of bounds; 1 means a workspace could not be allocated.

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <utility>

#include <omp.h>

// ---------------------------------------------------------------- the target, at compile time
#if !defined(SL_VBYTES)
#if defined(__AVX512F__)
#define SL_VBYTES 64
#elif defined(__AVX__)
#define SL_VBYTES 32
#else
#define SL_VBYTES 16
#endif
#endif
#if defined(__AVX512F__)
#define SL_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
#define SL_ISA "avx2"
#elif defined(__AVX__)
#define SL_ISA "avx"
#elif defined(__ARM_NEON) || defined(__ARM_NEON__)
#define SL_ISA "neon"
#elif defined(__SSE2__)
#define SL_ISA "sse2"
#else
#define SL_ISA "scalar"
#endif
// The register tile, in batch rows: 32 rows of float32 are 2 AVX-512, 4 AVX2 or 8 128-bit
// registers per accumulator row; a 128-bit target (16 SSE or 32 NEON registers) stops at 16.
#if !defined(SL_TILE)
#if SL_VBYTES >= 32
#define SL_TILE 32
#else
#define SL_TILE 16
#endif
#endif

// The share of L2 the panel read at random (xT, or gxT) may fill.
#if !defined(SL_PANEL_L2_PERCENT)
#define SL_PANEL_L2_PERCENT 50
#endif

namespace {

constexpr int64_t TMAX = SL_TILE;  // batch rows per register tile, at most
constexpr int64_t J = 16;          // outputs per step (one 64-byte line of floats)
constexpr int64_t PMAX = 256;      // batch rows per panel, at most

template <class F>
struct Vec {
    typedef F V __attribute__((vector_size(SL_VBYTES)));                      // aligned
    typedef F U __attribute__((vector_size(SL_VBYTES), aligned(sizeof(F))));  // unaligned
    static constexpr int L = SL_VBYTES / sizeof(F);                            // lanes
    static constexpr int NVMAX = TMAX / L > 0 ? TMAX / L : 1;  // vectors per register tile
};

// Register blocking of the block kernels: rows (columns) per step, so that R accumulator rows
// of NV registers stay within the register file.
template <int NV>
constexpr int block_rows() { return NV >= 8 ? 1 : NV >= 4 ? 2 : 4; }

// Nonzeros per step of the unstructured forward: enough independent accumulator rows to
// cover the FMA latency (two FMA pipes, four cycles), within the register file.
template <int NV>
constexpr int unroll() { return NV >= 8 ? 1 : NV >= 4 ? 2 : 4; }

template <class F>
F* alloc(int64_t count) {  // 64-byte aligned; nullptr when out of memory
    size_t bytes = ((size_t)std::max<int64_t>(count, 1) * sizeof(F) + 63) / 64 * 64;
    return static_cast<F*>(std::aligned_alloc(64, bytes));
}

int64_t l2_bytes() {  // this CPU's L2 per core, 512 KiB where the system does not say
#if defined(_SC_LEVEL2_CACHE_SIZE)
    static const long size = sysconf(_SC_LEVEL2_CACHE_SIZE);
    if (size > 0) return size;
#endif
    return 512 * 1024;
}

// Batch rows per panel: a power-of-2 multiple of the register tile TV, such that `arrays`
// panels of (in, P) fill about `percent` % of L2, no more than a thread's share of the batch,
// PMAX or 8 TV.
template <class F>
int64_t panel_rows(int64_t TV, int64_t n, int64_t in, int arrays, int threads, int percent) {
    const int64_t budget = l2_bytes() * percent / 100;
    const int64_t fit = budget / std::max<int64_t>(1, in * (int64_t)sizeof(F) * arrays);
    const int64_t share = (n + threads - 1) / threads;
    const int64_t most = std::min({fit, share, PMAX});
    int64_t p = TV;
    while (p * 2 <= most && p * 2 <= 8 * TV) p *= 2;
    return p;
}

// Σ of the lanes of the B bytes at p, by halving (lane-by-lane extraction is several times
// slower).
template <class F, int B>
inline F hsum_bytes(const F* p) {
    if constexpr (B <= (int)sizeof(F)) {
        return p[0];
    } else if constexpr (B <= 2 * (int)sizeof(F)) {
        return p[0] + p[1];
    } else {
        typedef F H __attribute__((vector_size(B / 2)));
        H a, b;
        std::memcpy(&a, p, B / 2);
        std::memcpy(&b, p + B / 2 / sizeof(F), B / 2);
        a += b;
        alignas(64) F h[B / 2 / sizeof(F)];
        std::memcpy(h, &a, B / 2);
        return hsum_bytes<F, B / 2>(h);
    }
}

template <class F>
inline F hsum(typename Vec<F>::V s) {
    alignas(64) F lanes[Vec<F>::L];
    std::memcpy(lanes, &s, sizeof(s));
    return hsum_bytes<F, SL_VBYTES>(lanes);
}

// Σ_t row[t] over a (T,) row, T a multiple of the vector width.
template <class F>
inline F row_sum(const F* row, int64_t T) {
    using V = typename Vec<F>::V;
    V s{};
    for (int64_t t = 0; t < T; t += Vec<F>::L) s += *reinterpret_cast<const V*>(row + t);
    return hsum<F>(s);
}

// ---------------------------------------------------------------- tile transposes
// Whole L x L blocks are transposed in registers: log2(L) rounds of interleaving rows i and
// i + L/2 (a perfect shuffle moves one bit of the row index into the column index per round).
// Where the compiler has no __builtin_shufflevector (GCC < 12), element by element.
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
#define SL_SHUFFLE 1
template <class V, int L, size_t... Is>
inline V zip_lo(V a, V b, std::index_sequence<Is...>) {
    return __builtin_shufflevector(a, b, (Is % 2 ? L + Is / 2 : Is / 2)...);
}
template <class V, int L, size_t... Is>
inline V zip_hi(V a, V b, std::index_sequence<Is...>) {
    return __builtin_shufflevector(a, b, (Is % 2 ? L + L / 2 + Is / 2 : L / 2 + Is / 2)...);
}
#endif

// d[b · ds + a] = s[a · ss + b] for a, b < L: one L x L block (any alignment).
template <class F>
__attribute__((always_inline)) inline void transpose_block(const F* s, int64_t ss, F* d,
                                                           int64_t ds) {
    constexpr int L = Vec<F>::L;
#if defined(SL_SHUFFLE)
    using U = typename Vec<F>::U;
    using Idx = std::make_index_sequence<L>;
    U r[L];
#pragma GCC unroll 16
    for (int a = 0; a < L; ++a) r[a] = *reinterpret_cast<const U*>(s + a * ss);
#pragma GCC unroll 4
    for (int round = 1; round < L; round *= 2) {
        U t[L];
#pragma GCC unroll 16
        for (int i = 0; i < L / 2; ++i) {
            t[2 * i] = zip_lo<U, L>(r[i], r[i + L / 2], Idx{});
            t[2 * i + 1] = zip_hi<U, L>(r[i], r[i + L / 2], Idx{});
        }
#pragma GCC unroll 16
        for (int i = 0; i < L; ++i) r[i] = t[i];
    }
#pragma GCC unroll 16
    for (int b = 0; b < L; ++b) *reinterpret_cast<U*>(d + b * ds) = r[b];
#else
    for (int a = 0; a < L; ++a)
        for (int b = 0; b < L; ++b) d[b * ds + a] = s[a * ss + b];
#endif
}

// dst (i1 - i0, T) = columns i0 .. i1 of rows b0 .. b0 + T of src (n, k), transposed; rows
// past n are zero.
template <class F>
void load_tile(const F* src, int64_t n, int64_t k, int64_t b0, int64_t T, int64_t i0, int64_t i1,
               F* dst) {
    constexpr int64_t L = Vec<F>::L;
    const int64_t rows = std::min(T, n - b0), full = rows / L * L, m = (i1 - i0) / L * L;
    if (rows < T) std::memset(dst, 0, sizeof(F) * (i1 - i0) * T);
    for (int64_t t = 0; t < full; t += L)  // whole blocks of L rows and L columns
        for (int64_t i = 0; i < m; i += L)
            transpose_block<F>(src + (b0 + t) * k + i0 + i, k, dst + i * T + t, T);
    for (int64_t t = 0; t < rows; ++t) {  // the rest: last columns, last rows
        const F* s = src + (b0 + t) * k;
        for (int64_t i = t < full ? i0 + m : i0; i < i1; ++i) dst[(i - i0) * T + t] = s[i];
    }
}

// Rows b0 .. b0 + T of dst (n, k), columns i0 .. i1, from src ((i1 - i0), T) holding them
// transposed.
template <class F>
void store_tile(const F* src, int64_t n, int64_t k, int64_t b0, int64_t T, int64_t i0,
                int64_t i1, F* dst) {
    constexpr int64_t L = Vec<F>::L;
    const int64_t rows = std::min(T, n - b0), full = rows / L * L, m = (i1 - i0) / L * L;
    for (int64_t t = 0; t < full; t += L)
        for (int64_t i = 0; i < m; i += L)
            transpose_block<F>(src + i * T + t, T, dst + (b0 + t) * k + i0 + i, k);
    for (int64_t t = 0; t < rows; ++t) {
        F* d = dst + (b0 + t) * k;
        for (int64_t i = t < full ? i0 + m : i0; i < i1; ++i) d[i] = src[(i - i0) * T + t];
    }
}

// 0 when (crow, col) is a valid structure of `rows` rows over `cols` columns with nnz entries
// (the length of col), else 2.
template <class I>
int check_rows(const I* crow, int64_t rows, int64_t nnz) {  // crow alone
    if (crow[0] != 0 || (int64_t)crow[rows] != nnz) return 2;
    for (int64_t r = 0; r < rows; ++r)
        if (crow[r + 1] < crow[r]) return 2;
    return 0;
}

template <class I>
int check_structure(const I* crow, const I* col, int64_t rows, int64_t cols, int64_t nnz,
                    int threads) {
    if (check_rows(crow, rows, nnz)) return 2;
    I lo = 0, hi = 0;
#pragma omp parallel for num_threads(threads) reduction(min : lo) reduction(max : hi) \
    schedule(static) if (nnz > (1 << 16))
    for (int64_t p = 0; p < nnz; ++p) {
        lo = std::min(lo, col[p]);
        hi = std::max(hi, col[p]);
    }
    return (lo < 0 || (nnz && (int64_t)hi >= cols)) ? 2 : 0;
}

// ------------------------------------------------------------------ unstructured layers

// dst (TV) = Σ_p v[p] · xT[col[p] · P] over p in [p0, p1): one unit's outputs for one register
// tile (xT points at the tile's first row in the panel).
template <class F, class I, int NV>
inline void unit_forward(const F* xT, int64_t P, const F* v, const I* col, int64_t p0,
                         int64_t p1, F* dst) {
    using V = typename Vec<F>::V;
    constexpr int U = unroll<NV>();
    V acc[U][NV] = {};
    int64_t p = p0;
    for (; p + U <= p1; p += U) {
#pragma GCC unroll 4
        for (int u = 0; u < U; ++u) {
            const V w = V{} + v[p + u];
            const V* xr = reinterpret_cast<const V*>(xT + (int64_t)col[p + u] * P);
#pragma GCC unroll 8
            for (int k = 0; k < NV; ++k) acc[u][k] += w * xr[k];
        }
    }
    for (; p < p1; ++p) {
        const V w = V{} + v[p];
        const V* xr = reinterpret_cast<const V*>(xT + (int64_t)col[p] * P);
#pragma GCC unroll 8
        for (int k = 0; k < NV; ++k) acc[0][k] += w * xr[k];
    }
#pragma GCC unroll 4
    for (int u = 1; u < U; ++u)
#pragma GCC unroll 8
        for (int k = 0; k < NV; ++k) acc[0][k] += acc[u][k];
    std::memcpy(dst, acc[0], sizeof(acc[0]));
}

// y rows b0 .. b0 + P, columns j0 .. j1, from the panel xT (in, P = S · TV); buf: (J, P)
// scratch. Each unit's panel row is accumulated in chunks of up to 8 registers, so a panel of
// several register tiles reads each nonzero's index and value once per chunk, not per tile.
template <class F, class I, int NV, int S>
void forward_rows(const F* xT, const F* v, const I* crow, const I* col, const F* bias,
                  int64_t j0, int64_t j1, int64_t n, int64_t out, int64_t b0, F* buf, F* y) {
    using V = typename Vec<F>::V;
    constexpr int L = Vec<F>::L, NP = S * NV, CH = NP >= 8 ? 8 : NP;
    constexpr int64_t P = NP * L;
    for (int64_t c0 = j0; c0 < j1; c0 += J) {
        const int64_t c1 = std::min(j1, c0 + J);
        for (int64_t j = c0; j < c1; ++j) {
            F* row = buf + (j - c0) * P;
            for (int c = 0; c < NP; c += CH)
                unit_forward<F, I, CH>(xT + c * L, P, v, col, crow[j], crow[j + 1], row + c * L);
            if (bias) {
                const V b = V{} + bias[j];
#pragma GCC unroll 8
                for (int k = 0; k < NP; ++k) reinterpret_cast<V*>(row)[k] += b;
            }
        }
        store_tile(buf, n, out, b0, P, c0, c1, y);
    }
}

// For W's rows j0 .. j1 and the panel of rows b0 .. b0 + P: gxT (in, P) += the input gradient,
// gv += the values gradient, gb += the bias gradient (each when given); xT: the panel of x
// (in, P), needed for gv; g: (J, P) scratch for gy's transposed columns.
template <class F, class I, int NV, int S>
void backward_rows(const F* gy, int64_t n, int64_t out, int64_t b0, const F* __restrict__ xT,
                   const F* v, const I* crow, const I* col, int64_t j0, int64_t j1, F* g,
                   F* __restrict__ gxT, F* __restrict__ gv, F* gb) {
    using V = typename Vec<F>::V;
    constexpr int64_t TV = NV * Vec<F>::L, P = S * TV;
    for (int64_t c0 = j0; c0 < j1; c0 += J) {
        const int64_t c1 = std::min(j1, c0 + J);
        load_tile(gy, n, out, b0, P, c0, c1, g);
        for (int64_t j = c0; j < c1; ++j) {
            V gj[S][NV];  // gy's column j for the panel, in registers where they hold it
            std::memcpy(gj, g + (j - c0) * P, sizeof(gj));
            if (gb) gb[j] += row_sum(g + (j - c0) * P, P);
            for (int64_t p = crow[j]; p < crow[j + 1]; ++p) {
                const int64_t c = (int64_t)col[p] * P;
                if (gxT) {
                    const V w = V{} + v[p];
                    V* r = reinterpret_cast<V*>(gxT + c);
#pragma GCC unroll 8
                    for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
                        for (int k = 0; k < NV; ++k) r[s * NV + k] += w * gj[s][k];
                }
                if (gv) {
                    const V* xr = reinterpret_cast<const V*>(xT + c);
                    V acc[NV] = {};
#pragma GCC unroll 8
                    for (int s = 0; s < S; ++s)
#pragma GCC unroll 8
                        for (int k = 0; k < NV; ++k) acc[k] += gj[s][k] * xr[s * NV + k];
#pragma GCC unroll 8
                    for (int k = 1; k < NV; ++k) acc[0] += acc[k];
                    gv[p] += hsum<F>(acc[0]);
                }
            }
        }
    }
}

// y (NB, out) columns j0 .. j1 for a batch of NB <= 2 rows, gathering x (no transpose): the
// inference case, where a tile would be mostly padding. Vectors run along each row's nonzeros
// (values loaded whole, x gathered lane by lane, two accumulators), one horizontal sum per
// output. Measured on the 2-core AVX2 CPU, 4096 x 4096, batch 1: 5 % 0.40 ms, 25 % 2.0 ms,
// against 0.65 / 3.1 ms for scalar sums (and 1.37 ms at 5 % where GCC vectorised the scalar
// loop itself: gathers, then a lane-by-lane sum to keep the order). A row's columns are
// checked before any is read through: returns 1 at a column outside [0, in).
template <class F, class I, int NB>
__attribute__((noinline))
int gather_forward(const F* x, int64_t in, const F* v, const I* crow, const I* col,
                   const F* bias, int64_t out, int64_t j0, int64_t j1, F* y) {
    using V = typename Vec<F>::V;
    using U = typename Vec<F>::U;
    constexpr int L = Vec<F>::L;
    for (int64_t j = j0; j < j1; ++j) {
        int64_t p = crow[j];
        const int64_t p1 = crow[j + 1];
        uint64_t hi = 0;
        for (int64_t q = p; q < p1; ++q) hi = std::max(hi, (uint64_t)(int64_t)col[q]);
        if (p1 > p && hi >= (uint64_t)in) return 1;
        V acc[NB][2] = {};
        for (; p + 2 * L <= p1; p += 2 * L) {
#pragma GCC unroll 2
            for (int h = 0; h < 2; ++h) {
                const V w = *reinterpret_cast<const U*>(v + p + h * L);
#pragma GCC unroll 2
                for (int b = 0; b < NB; ++b) {
                    V g;
#pragma GCC unroll 16
                    for (int u = 0; u < L; ++u) g[u] = x[b * in + col[p + h * L + u]];
                    acc[b][h] += w * g;
                }
            }
        }
        F tail[NB] = {};
        for (; p < p1; ++p)
            for (int b = 0; b < NB; ++b) tail[b] += v[p] * x[b * in + col[p]];
        for (int b = 0; b < NB; ++b)
            y[b * out + j] = hsum<F>(acc[b][0] + acc[b][1]) + tail[b] + (bias ? bias[j] : F(0));
    }
    return 0;
}

// ------------------------------------------------------------------ block layers
// (panels of one register tile: T = TV = NV · L rows)

// acc[r] += w[r · stride] · (the T-wide row at src), r < RR: one load of the row serves RR FMAs
// (the register-blocked step of both block products).
template <class F, int NV, int RR>
inline void fma_rows(typename Vec<F>::V (&acc)[RR][NV], const F* src, const F* w, int64_t stride) {
    using V = typename Vec<F>::V;
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
template <class F, class I, int NV, int RR>
inline void block_forward_step(const F* xT, const F* v, const I* crow, const I* col, int64_t bo,
                               int64_t bi, int64_t jb, int64_t o0, F* buf) {
    using V = typename Vec<F>::V;
    constexpr int64_t T = NV * Vec<F>::L;
    V acc[RR][NV] = {};
    for (int64_t p = crow[jb]; p < crow[jb + 1]; ++p) {
        const F* w = v + p * bo * bi + o0 * bi;
        const F* xb = xT + (int64_t)col[p] * bi * T;
        for (int64_t i = 0; i < bi; ++i) fma_rows<F, NV, RR>(acc, xb + i * T, w + i, bi);
    }
    std::memcpy(buf, acc, sizeof(acc));
}

// y rows b0 .. b0 + T of block rows jb0 .. jb1, from the tile xT (in, T); buf: (J, T) scratch.
template <class F, class I, int NV>
void block_forward_rows(const F* xT, const F* v, const I* crow, const I* col, const F* bias,
                        int64_t bo, int64_t bi, int64_t jb0, int64_t jb1, int64_t n, int64_t out,
                        int64_t b0, F* buf, F* y) {
    using V = typename Vec<F>::V;
    constexpr int64_t T = NV * Vec<F>::L;
    constexpr int R = block_rows<NV>();
    for (int64_t jb = jb0; jb < jb1; ++jb) {
        for (int64_t c0 = 0; c0 < bo; c0 += J) {
            const int64_t c1 = std::min(bo, c0 + J);
            int64_t o = c0;
            for (; o + R <= c1; o += R)
                block_forward_step<F, I, NV, R>(xT, v, crow, col, bo, bi, jb, o, buf + (o - c0) * T);
            for (; o < c1; ++o)
                block_forward_step<F, I, NV, 1>(xT, v, crow, col, bo, bi, jb, o, buf + (o - c0) * T);
            if (bias)
                for (o = c0; o < c1; ++o) {
                    const V b = V{} + bias[jb * bo + o];
#pragma GCC unroll 8
                    for (int k = 0; k < NV; ++k)
                        reinterpret_cast<V*>(buf + (o - c0) * T)[k] += b;
                }
            store_tile(buf, n, out, b0, T, jb * bo + c0, jb * bo + c1, y);
        }
    }
}

// gxT rows col[p]·bi + i0 .. + RR += Σ_o v[p][o][i] · gyT[o], for one block p (gyT: its block
// row's rows of gy, transposed).
template <class F, int NV, int RR>
inline void block_input_step(const F* gyT, const F* w, int64_t bo, int64_t bi, int64_t i0, F* gx) {
    using V = typename Vec<F>::V;
    constexpr int64_t T = NV * Vec<F>::L;
    V acc[RR][NV] = {};
    for (int64_t o = 0; o < bo; ++o) fma_rows<F, NV, RR>(acc, gyT + o * T, w + o * bi + i0, 1);
#pragma GCC unroll 8
    for (int r = 0; r < RR; ++r) {
        V* d = reinterpret_cast<V*>(gx + (i0 + r) * T);
#pragma GCC unroll 8
        for (int k = 0; k < NV; ++k) d[k] += acc[r][k];
    }
}

// gv[p] rows o0 .. o0 + RR += Σ_t gyT[o][t] · x[t][col[p]·bi + i], for one block p: x rows
// are read in place (row-major), vectors along i, two at a time; a tail of bi not filling two
// vectors is done in scalars.
template <class F, int64_t T, int RR>
inline void block_values_step(const F* gyT, const F* xc, int64_t in, int64_t rows, int64_t bi,
                              int64_t o0, F* g) {
    using U = typename Vec<F>::U;
    constexpr int64_t L = Vec<F>::L;
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

// gxT, gv, gb (each when given) for block rows jb0 .. jb1 and the tile of rows b0 .. b0 + T;
// x is read in place (row-major); g: (bo, T) scratch for gy's transposed block row.
template <class F, class I, int NV>
void block_backward_rows(const F* gy, const F* x, int64_t n, int64_t in, int64_t out, int64_t b0,
                         const F* v, const I* crow, const I* col, int64_t bo, int64_t bi,
                         int64_t jb0, int64_t jb1, F* g, F* gxT, F* gv, F* gb) {
    constexpr int64_t T = NV * Vec<F>::L;
    constexpr int R = block_rows<NV>();
    constexpr int RV = 4;  // values-gradient rows per step: 2 x RV vector accumulators
    const int64_t rows = std::min(T, n - b0);
    const F* xt = x + b0 * in;
    for (int64_t jb = jb0; jb < jb1; ++jb) {
        load_tile(gy, n, out, b0, T, jb * bo, (jb + 1) * bo, g);
        if (gb)
            for (int64_t o = 0; o < bo; ++o) gb[jb * bo + o] += row_sum(g + o * T, T);
        for (int64_t p = crow[jb]; p < crow[jb + 1]; ++p) {
            const int64_t c = (int64_t)col[p] * bi, base = p * bo * bi;
            if (gxT) {
                int64_t i = 0;
                for (; i + R <= bi; i += R)
                    block_input_step<F, NV, R>(g, v + base, bo, bi, i, gxT + c * T);
                for (; i < bi; ++i) block_input_step<F, NV, 1>(g, v + base, bo, bi, i, gxT + c * T);
            }
            if (gv) {
                int64_t o = 0;
                for (; o + RV <= bo; o += RV)
                    block_values_step<F, T, RV>(g, xt + c, in, rows, bi, o, gv + base);
                for (; o < bo; ++o) block_values_step<F, T, 1>(g, xt + c, in, rows, bi, o, gv + base);
            }
        }
    }
}

// ------------------------------------------------------------------ the dense backend's moves
// Between a CSR (or BSR: bo x bi blocks) weight and its dense (out, in) copy, rows spread over
// threads (the dense backend keeps the copy and rewrites its nonzeros every call; its values
// gradient is read off the dense gyᵀ x). Off-structure entries of w are never touched.

// Below this many multiply-adds (or moved values) a call runs on one thread: waking the others
// costs more.
constexpr int64_t SERIAL_WORK = 1 << 17;
// The gathered forward of one or two rows spreads its outputs over threads sooner: at batch 1
// a second thread halves a 512 x 512, 10 % layer's 19 µs, and waking it costs ~3 µs
// (`structlearn bench overhead`, 2-core EPYC, native and AVX2 builds).
constexpr int64_t GATHER_SERIAL_WORK = 1 << 13;

template <class F, class I>
int scatter_entry(const F* v, const I* crow, const I* col, int64_t nnz, int64_t out,
                  int64_t in, int64_t bo, int64_t bi, F* w, int threads) {
    if (nnz * bo * bi < SERIAL_WORK) threads = 1;
    if (check_structure(crow, col, out / bo, in / bi, nnz, threads)) return 2;
    const int64_t rows = out / bo;
    if (bo == 1 && bi == 1) {  // one value per entry: a plain store (a memcpy call each costs
                               // more than the move)
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t j = 0; j < rows; ++j) {
            F* wj = w + j * in;
            for (int64_t p = crow[j]; p < crow[j + 1]; ++p) wj[col[p]] = v[p];
        }
        return 0;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < rows; ++j)
        for (int64_t p = crow[j]; p < crow[j + 1]; ++p)
            for (int64_t o = 0; o < bo; ++o)  // one row of a block: bi contiguous values
                std::memcpy(w + (j * bo + o) * in + (int64_t)col[p] * bi, v + (p * bo + o) * bi,
                            sizeof(F) * bi);
    return 0;
}

template <class F, class I>
int gather_entry(const F* w, const I* crow, const I* col, int64_t nnz, int64_t out, int64_t in,
                 int64_t bo, int64_t bi, F* v, int threads) {
    if (nnz * bo * bi < SERIAL_WORK) threads = 1;
    if (check_structure(crow, col, out / bo, in / bi, nnz, threads)) return 2;
    const int64_t rows = out / bo;
    if (bo == 1 && bi == 1) {
#pragma omp parallel for num_threads(threads) schedule(static)
        for (int64_t j = 0; j < rows; ++j) {
            const F* wj = w + j * in;
            for (int64_t p = crow[j]; p < crow[j + 1]; ++p) v[p] = wj[col[p]];
        }
        return 0;
    }
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t j = 0; j < rows; ++j)
        for (int64_t p = crow[j]; p < crow[j + 1]; ++p)
            for (int64_t o = 0; o < bo; ++o)
                std::memcpy(v + (p * bo + o) * bi, w + (j * bo + o) * in + (int64_t)col[p] * bi,
                            sizeof(F) * bi);
    return 0;
}

// ------------------------------------------------------------------ drivers

// Every buffer of a call comes from one allocation made before any work, so running out of
// memory is reported (return 1) instead of crashing inside a parallel region. Slices are
// multiples of TV · sizeof(F) >= the vector size (and of 64 bytes where that is larger), so
// each stays aligned for the vector type.
template <class F, class I, int NV>
int forward(const F* x, int64_t n, int64_t in, const F* v, const I* crow, const I* col,
            const F* bias, int64_t out, int64_t bo, int64_t bi, F* y, int threads) {
    constexpr int64_t TV = NV * Vec<F>::L;
    const bool blocks = bo != 1 || bi != 1;
    const int64_t P = blocks ? TV : panel_rows<F>(TV, n, in, 1, threads, SL_PANEL_L2_PERCENT);
    const int64_t panels = (n + P - 1) / P, rows = out / bo;
    const bool by_panels = panels >= threads;
    const int64_t mine = in * P + J * P;  // a panel of x and the output scratch
    F* ws = alloc<F>(by_panels ? mine * threads : in * P + J * P * threads);
    if (!ws) return 1;
    auto rows_of = [&](const F* xT, F* buf, int64_t r0, int64_t r1, int64_t b0) {
        if (blocks)
            block_forward_rows<F, I, NV>(xT, v, crow, col, bias, bo, bi, r0, r1, n, out, b0, buf, y);
        else
            switch (P / TV) {
                case 1: forward_rows<F, I, NV, 1>(xT, v, crow, col, bias, r0, r1, n, out, b0, buf, y); break;
                case 2: forward_rows<F, I, NV, 2>(xT, v, crow, col, bias, r0, r1, n, out, b0, buf, y); break;
                case 4: forward_rows<F, I, NV, 4>(xT, v, crow, col, bias, r0, r1, n, out, b0, buf, y); break;
                default: forward_rows<F, I, NV, 8>(xT, v, crow, col, bias, r0, r1, n, out, b0, buf, y); break;
            }
    };
    if (by_panels) {
#pragma omp parallel num_threads(threads)
        {
            F* xT = ws + mine * omp_get_thread_num();
#pragma omp for schedule(static)
            for (int64_t b = 0; b < panels; ++b) {
                load_tile(x, n, in, b * P, P, 0, in, xT);
                rows_of(xT, xT + in * P, 0, rows, b * P);
            }
        }
    } else {  // few panels: threads split W's rows (block rows)
        const int64_t step = blocks ? 1 : J, steps = (rows + step - 1) / step;
        for (int64_t b = 0; b < panels; ++b) {
            load_tile(x, n, in, b * P, P, 0, in, ws);
#pragma omp parallel num_threads(threads)
            {
                F* buf = ws + in * P + J * P * omp_get_thread_num();
#pragma omp for schedule(static)
                for (int64_t s = 0; s < steps; ++s)
                    rows_of(ws, buf, s * step, std::min(rows, (s + 1) * step), b * P);
            }
        }
    }
    std::free(ws);
    return 0;
}

template <class F, class I, int NV>
int backward(const F* gy, const F* x, int64_t n, int64_t in, int64_t out, const F* v,
             const I* crow, const I* col, int64_t bo, int64_t bi, F* gx, F* gv, F* gb,
             int threads) {
    constexpr int64_t TV = NV * Vec<F>::L;
    const bool blocks = bo != 1 || bi != 1;
    if (!blocks && gx && gv) {
        // Two passes over the panels, the input gradient (and the bias's), then the values
        // gradient: each pass reads one (in, P) panel at random, so each keeps it in L2 with
        // panels twice as tall as one pass with both could. Measured on the 2-core AVX2 CPU at
        // 5 %: batch 256, 3072 -> 4096: 24 / 33 / 34 ms in one pass against 24 / 31 / 32 in
        // two; batch 4096, 768 -> 3072: 76 / 73 / 70 against 69 / 62 / 65 (three runs).
        const int rc = backward<F, I, NV>(gy, x, n, in, out, v, crow, col, bo, bi, gx, nullptr,
                                          gb, threads);
        return rc ? rc : backward<F, I, NV>(gy, x, n, in, out, v, crow, col, bo, bi, nullptr, gv,
                                            nullptr, threads);
    }
    const int64_t rows = out / bo, nnz = (int64_t)crow[rows] * bo * bi;
    // the panels read at random: xT (in, P) for an unstructured values gradient, gxT (in, P)
    const bool xT_needed = gv && !blocks;
    const int arrays = (xT_needed ? 1 : 0) + (gx ? 1 : 0);
    const int64_t P = blocks ? TV : panel_rows<F>(TV, n, in, std::max(arrays, 1), threads,
                                                  SL_PANEL_L2_PERCENT);
        const int64_t panels = (n + P - 1) / P, G = std::max(J, bo) * P;  // G: gy scratch
    const bool by_panels = panels >= threads;
    // by panels: per thread its panels, scratch and — with several threads — its own partial
    // values and bias gradients (summed at the end); few panels: threads split W's rows (so gv
    // and gb are theirs alone) and each scatters into its own gxT
    const bool parts = by_panels && threads > 1;
    const int64_t xsz = xT_needed ? in * P : 0, gxsz = gx ? in * P : 0;
    constexpr int64_t A = 64 / sizeof(F);  // each thread's share starts on a 64-byte boundary
    const int64_t mine = (xsz + gxsz + G + (parts ? (gv ? nnz : 0) + (gb ? out : 0) : 0) + A - 1)
                         / A * A;
    F* ws = alloc<F>(by_panels ? mine * threads : xsz + (gxsz + G) * threads);
    if (!ws) return 1;
    if (gv) std::memset(gv, 0, sizeof(F) * nnz);
    if (gb) std::memset(gb, 0, sizeof(F) * out);
    auto rows_of = [&](const F* xT, F* g, F* gxT, F* gvs, F* gbs, int64_t r0, int64_t r1,
                       int64_t b0) {
        if (blocks)
            block_backward_rows<F, I, NV>(gy, x, n, in, out, b0, v, crow, col, bo, bi, r0, r1, g,
                                          gxT, gvs, gbs);
        else
            switch (P / TV) {
                case 1: backward_rows<F, I, NV, 1>(gy, n, out, b0, xT, v, crow, col, r0, r1, g, gxT, gvs, gbs); break;
                case 2: backward_rows<F, I, NV, 2>(gy, n, out, b0, xT, v, crow, col, r0, r1, g, gxT, gvs, gbs); break;
                case 4: backward_rows<F, I, NV, 4>(gy, n, out, b0, xT, v, crow, col, r0, r1, g, gxT, gvs, gbs); break;
                default: backward_rows<F, I, NV, 8>(gy, n, out, b0, xT, v, crow, col, r0, r1, g, gxT, gvs, gbs); break;
            }
    };
    if (by_panels) {
#pragma omp parallel num_threads(threads)
        {
            F* base = ws + mine * omp_get_thread_num();
            F* xT = xT_needed ? base : nullptr;
            F* gxT = gx ? base + xsz : nullptr;
            F* g = base + xsz + gxsz;
            F* gvs = parts && gv ? g + G : gv;
            F* gbs = parts && gb ? g + G + (gv ? nnz : 0) : gb;
            if (parts && gv) std::memset(gvs, 0, sizeof(F) * nnz);
            if (parts && gb) std::memset(gbs, 0, sizeof(F) * out);
#pragma omp for schedule(static)
            for (int64_t b = 0; b < panels; ++b) {
                if (xT) load_tile(x, n, in, b * P, P, 0, in, xT);
                if (gxT) std::memset(gxT, 0, sizeof(F) * in * P);
                rows_of(xT, g, gxT, gvs, gbs, 0, rows, b * P);
                if (gxT) store_tile(gxT, n, in, b * P, P, 0, in, gx);
            }
            if (parts) {  // the omp for above ended with a barrier: every partial is complete
                const int64_t total = (gv ? nnz : 0) + (gb ? out : 0);
#pragma omp for schedule(static)
                for (int64_t q = 0; q < total; ++q) {
                    const int64_t off = xsz + gxsz + G + q;
                    F s = 0;
                    for (int k = 0; k < threads; ++k) s += ws[mine * k + off];
                    if (gv && q < nnz)
                        gv[q] = s;
                    else
                        gb[q - (gv ? nnz : 0)] = s;
                }
            }
        }
    } else {
        F* xT = xT_needed ? ws : nullptr;
        for (int64_t b = 0; b < panels; ++b) {
            if (xT) load_tile(x, n, in, b * P, P, 0, in, xT);
#pragma omp parallel num_threads(threads)
            {
                const int id = omp_get_thread_num(), k = omp_get_num_threads();
                F* gxT = gx ? ws + xsz + (gxsz + G) * id : nullptr;
                F* g = ws + xsz + (gxsz + G) * id + gxsz;
                if (gxT) std::memset(gxT, 0, sizeof(F) * in * P);
                rows_of(xT, g, gxT, gv, gb, rows * id / k, rows * (id + 1) / k, b * P);
            }
            if (gx) {
                F* gx0 = ws + xsz;
                for (int k = 1; k < threads; ++k) {
                    const F* part = ws + xsz + (gxsz + G) * k;
                    for (int64_t i = 0; i < in * P; ++i) gx0[i] += part[i];
                }
                store_tile(gx0, n, in, b * P, P, 0, in, gx);
            }
        }
    }
    std::free(ws);
    return 0;
}

// The register tile for a batch of n rows: the smallest whole number of vectors (1, 2, 4, ...)
// that holds n, at most NVMAX; `Op<NV>::run(args...)` is called with it.
template <class F, template <int> class Op, class... A>
int with_tile(int64_t n, A... args) {
    constexpr int M = Vec<F>::NVMAX, L = Vec<F>::L;
    if (n <= L || M == 1) return Op<1>::run(args...);
    if constexpr (M >= 2)
        if (n <= 2 * L || M == 2) return Op<2>::run(args...);
    if constexpr (M >= 4)
        if (n <= 4 * L || M == 4) return Op<4>::run(args...);
    if constexpr (M >= 8)
        if (n <= 8 * L || M == 8) return Op<8>::run(args...);
    if constexpr (M >= 16) return Op<16>::run(args...);
    return 0;
}

template <class F, class I>
struct Forward {
    template <int NV>
    struct Op {
        template <class... A>
        static int run(A... a) { return forward<F, I, NV>(a...); }
    };
};

template <class F, class I>
struct Backward {
    template <int NV>
    struct Op {
        template <class... A>
        static int run(A... a) { return backward<F, I, NV>(a...); }
    };
};

// Whether any of x's count entries is inf or NaN: exponent bits all ones (integer compares, so
// the loop vectorises without -ffast-math, which would fold std::isfinite away).
template <class F>
bool any_nonfinite(const F* x, int64_t count) {
    using U = std::conditional_t<sizeof(F) == 4, uint32_t, uint64_t>;
    constexpr U EXP = sizeof(F) == 4 ? U(0x7f800000u) : U(0x7ff0000000000000ull);
    U bad = 0;
    for (int64_t i = 0; i < count; ++i) {
        U u;
        std::memcpy(&u, x + i, sizeof(F));
        bad |= U((u & EXP) == EXP);
    }
    return bad != 0;
}

template <class F, class I>
int forward_sparse(const F* x, int64_t n, int64_t in, const F* v, const I* crow, const I* col,
                   int64_t nnz, const F* bias, int64_t out, int64_t bo, int64_t bi, F* y,
                   int threads);

template <class F, class I>
int forward_entry(const F* x, int64_t n, int64_t in, const F* v, const I* crow, const I* col,
                  int64_t nnz, const F* bias, int64_t out, int64_t bo, int64_t bi, F* y,
                  int threads) {
    const bool gathered = bo == 1 && bi == 1 && n <= 2;  // (forward_sparse's gather path)
    if (n * nnz * bo * bi < (gathered ? GATHER_SERIAL_WORK : SERIAL_WORK)) threads = 1;
    const int rc = forward_sparse<F, I>(x, n, in, v, crow, col, nnz, bias, out, bo, bi, y, threads);
    // an inf/NaN input: the rows holding one must read as the masked dense product does
    // (0 * inf = NaN off the structure); the caller recomputes them (return 3)
    return rc ? rc : any_nonfinite(x, n * in) ? 3 : 0;
}

template <class F, class I>
int forward_sparse(const F* x, int64_t n, int64_t in, const F* v, const I* crow, const I* col,
                   int64_t nnz, const F* bias, int64_t out, int64_t bo, int64_t bi, F* y,
                   int threads) {
    if (bo == 1 && bi == 1 && n <= 2) {  // inference on a row or two: gather, no tile
        // the columns are checked as they are read (one pass over the structure, not two)
        if (check_rows(crow, out, nnz)) return 2;
        const int64_t steps = (out + J - 1) / J;
        int bad = 0;
#pragma omp parallel for num_threads(threads) schedule(static) reduction(| : bad)
        for (int64_t s = 0; s < steps; ++s) {
            const int64_t j0 = s * J, j1 = std::min(out, j0 + J);
            if (n == 1)
                bad |= gather_forward<F, I, 1>(x, in, v, crow, col, bias, out, j0, j1, y);
            else
                bad |= gather_forward<F, I, 2>(x, in, v, crow, col, bias, out, j0, j1, y);
        }
        return bad ? 2 : 0;
    }
    if (check_structure(crow, col, out / bo, in / bi, nnz, threads)) return 2;
    return with_tile<F, Forward<F, I>::template Op>(n, x, n, in, v, crow, col, bias, out, bo, bi,
                                                     y, threads);
}

template <class F, class I>
int backward_entry(const F* gy, const F* x, int64_t n, int64_t in, int64_t out, const F* v,
                   const I* crow, const I* col, int64_t nnz, int64_t bo, int64_t bi, F* gx,
                   F* gv, F* gb, int threads) {
    if (n * nnz * bo * bi < SERIAL_WORK) threads = 1;
    if (check_structure(crow, col, out / bo, in / bi, nnz, threads)) return 2;
    return with_tile<F, Backward<F, I>::template Op>(n, gy, x, n, in, out, v, crow, col, bo, bi,
                                                      gx, gv, gb, threads);
}

}  // namespace

// What this build was compiled for: the instruction set, the vector width in bytes and the
// register tile in rows (the benchmark prints them beside its tables).
extern "C" const char* structlearn_isa() { return SL_ISA; }
extern "C" int structlearn_vector_bytes() { return SL_VBYTES; }
extern "C" int structlearn_tile_rows() { return SL_TILE; }

// Exported entry points; each returns 0, 1 when its workspace could not be allocated, or 2 when
// the structure is malformed (nothing computed); the forward returns 3 when x holds an inf or
// NaN (y then holds the sparse sums: rows with one must be recomputed as the masked dense
// product). bias, gx, gv and gb may be null.
#define STRUCTLEARN_EXPORT(F, I, NAME)                                                          \
    extern "C" int NAME##_forward(const F* x, int64_t n, int64_t in, const F* v,                \
                                  const I* crow, const I* col, int64_t nnz, const F* bias,      \
                                  int64_t out, int64_t bo, int64_t bi, F* y, int th) {          \
        return forward_entry<F, I>(x, n, in, v, crow, col, nnz, bias, out, bo, bi, y, th);      \
    }                                                                                           \
    extern "C" int NAME##_backward(const F* gy, const F* x, int64_t n, int64_t in, int64_t out, \
                                   const F* v, const I* crow, const I* col, int64_t nnz,        \
                                   int64_t bo, int64_t bi, F* gx, F* gv, F* gb, int th) {       \
        return backward_entry<F, I>(gy, x, n, in, out, v, crow, col, nnz, bo, bi, gx, gv, gb,   \
                                    th);                                                        \
    }

#define STRUCTLEARN_EXPORT_MOVES(F, I, NAME)                                                    \
    extern "C" int NAME##_scatter(const F* v, const I* crow, const I* col, int64_t nnz,         \
                                  int64_t out, int64_t in, int64_t bo, int64_t bi, F* w,        \
                                  int th) {                                                     \
        return scatter_entry<F, I>(v, crow, col, nnz, out, in, bo, bi, w, th);                  \
    }                                                                                           \
    extern "C" int NAME##_gather(const F* w, const I* crow, const I* col, int64_t nnz,          \
                                 int64_t out, int64_t in, int64_t bo, int64_t bi, F* v,         \
                                 int th) {                                                      \
        return gather_entry<F, I>(w, crow, col, nnz, out, in, bo, bi, v, th);                   \
    }

STRUCTLEARN_EXPORT_MOVES(float, int32_t, f32_i32)
STRUCTLEARN_EXPORT_MOVES(float, int64_t, f32_i64)
STRUCTLEARN_EXPORT_MOVES(double, int32_t, f64_i32)
STRUCTLEARN_EXPORT_MOVES(double, int64_t, f64_i64)
STRUCTLEARN_EXPORT(float, int32_t, f32_i32)
STRUCTLEARN_EXPORT(float, int64_t, f32_i64)
STRUCTLEARN_EXPORT(double, int32_t, f64_i32)
STRUCTLEARN_EXPORT(double, int64_t, f64_i64)
