// Involution CUDA kernels: forward, input gradient and weight gradient, and the fused
// forward and input gradient (the layer's span convolution with the aggregation).
//
//   out[n, c, i, j] = sum_{a, b < K} w[n, c / Cg, a, b, i, j]
//                     * x[n, c, i*S + a*D - pad, j*S + b*D - pad]      (zero outside)
//
// Layouts (all contiguous): x (N, C, H, W), w (N, G, K, K, Ho, Wo), out (N, C, Ho, Wo),
// with G groups of Cg = C / G channels.
//
// Everything that shapes the loops (element type, index type, K, stride S, dilation D and
// the number of channels one thread handles) is a template argument, so the K*K loops are
// fully unrolled and the accumulators live in registers.  The host side compiles the
// instantiations it needs with INVOLUTION_EXTERN_C_KERNELS defined, where the templates
// are device functions, each called by an extern "C" kernel that it appends (a name
// without C++ mangling: CuPy then needs no NVRTC name expressions, without which it keeps
// the compiled module in its disk cache for later processes).
//
// Unlike the one-thread-per-output-element kernel of the official code, which re-reads
// every generated weight for each of the Cg channels of its group, a thread here loads a
// weight once and applies it to CHUNK channels of the group.  The *_naive kernels at the end
// are that plain one-thread-per-element design, kept as a benchmark baseline.
//
// The file needs no CUDA header (so NVRTC compiles it without an include path): half and
// bfloat16 are 16-bit storage structs converted with PTX or bit arithmetic.  Defining
// INVOLUTION_HOST_EMULATION compiles the same kernels as plain C++ so that their index
// arithmetic can be checked on a machine without a GPU (tests/test_cuda_kernels.py).

#ifdef INVOLUTION_HOST_EMULATION
#include <cstring>
#define INV_KERNEL void
#define INV_INLINE inline
#define INV_CONSTEXPR constexpr
#define INV_UNROLL
#define INV_LOOP
struct inv_dim3 { unsigned int x; };
extern inv_dim3 blockIdx, blockDim, threadIdx, gridDim;
extern long long inv_misaligned_accesses;  // vector accesses off their alignment (tests: none)
static inline float __uint_as_float(unsigned int u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline unsigned int __float_as_uint(float f) { unsigned int u; std::memcpy(&u, &f, 4); return u; }
#else
#ifdef INVOLUTION_EXTERN_C_KERNELS
#define INV_KERNEL __device__ __forceinline__ void
#else
#define INV_KERNEL __global__ void __launch_bounds__(INV_THREADS)
#endif
#define INV_INLINE __device__ __forceinline__
#define INV_CONSTEXPR __host__ __device__ constexpr
#define INV_UNROLL _Pragma("unroll")
#define INV_LOOP _Pragma("unroll 1")
#endif

#define INV_THREADS 256

struct half_t { unsigned short bits; };      // IEEE binary16, torch.float16's layout
struct bfloat16_t { unsigned short bits; };  // bfloat16, torch.bfloat16's layout

// Element access: load as the accumulation type, store with round-to-nearest-even.
template <typename T> struct Elem;

template <> struct Elem<float> {
  typedef float acc_t;
  static INV_INLINE float load(const float* p) { return *p; }
  static INV_INLINE void store(float* p, float v) { *p = v; }
};

template <> struct Elem<double> {
  typedef double acc_t;
  static INV_INLINE double load(const double* p) { return *p; }
  static INV_INLINE void store(double* p, double v) { *p = v; }
};

template <> struct Elem<half_t> {
  typedef float acc_t;
  static INV_INLINE float load(const half_t* p) {
#ifdef INVOLUTION_HOST_EMULATION
    _Float16 h; std::memcpy(&h, &p->bits, 2); return (float)h;
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(p->bits));
    return f;
#endif
  }
  static INV_INLINE void store(half_t* p, float v) {
#ifdef INVOLUTION_HOST_EMULATION
    _Float16 h = (_Float16)v; std::memcpy(&p->bits, &h, 2);
#else
    unsigned short b;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(b) : "f"(v));
    p->bits = b;
#endif
  }
};

template <> struct Elem<bfloat16_t> {
  typedef float acc_t;
  static INV_INLINE float load(const bfloat16_t* p) {
    return __uint_as_float(((unsigned int)p->bits) << 16);
  }
  static INV_INLINE void store(bfloat16_t* p, float v) {
    unsigned int u = __float_as_uint(v);
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN stays a quiet NaN
      p->bits = 0x7fc0;
      return;
    }
    u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
    p->bits = (unsigned short)(u >> 16);
  }
};

// The value v rounded to T, as the unfused operator rounds the generated weights it writes.
template <typename T>
INV_INLINE typename Elem<T>::acc_t rounded_to(const typename Elem<T>::acc_t v) {
  T t;
  Elem<T>::store(&t, v);
  return Elem<T>::load(&t);
}

// Grid-stride loop: any grid size covers `total` items.
#define INV_KERNEL_LOOP(idx, total)                                                  \
  for (I idx = (I)blockIdx.x * (I)blockDim.x + (I)threadIdx.x; idx < (total);      \
       idx += (I)blockDim.x * (I)gridDim.x)

// Item of the chunked kernels: pixel (row, col) of channels [c0, c0 + nc) of group g of
// image n.  Items are ordered (n, g, chunk, row, col), the column fastest, so that a warp
// reads neighbouring columns.
template <typename I, int CHUNK> struct ChunkItem {
  I n, g, c0, nc, row, col;
  INV_INLINE ChunkItem(I idx, I rows, I cols, I G, I Cg) {
    const I chunks = (Cg + CHUNK - 1) / CHUNK;
    col = idx % cols;
    I t = idx / cols;
    row = t % rows;
    t /= rows;
    const I chunk = t % chunks;
    t /= chunks;
    g = t % G;
    n = t / G;
    c0 = g * Cg + chunk * CHUNK;
    nc = (Cg - chunk * CHUNK) < CHUNK ? (Cg - chunk * CHUNK) : (I)CHUNK;
  }
};

// Where aggregate_pixel finds tap k's weight of the current pixel: in the weight tensor
// (involution_forward), or in registers (involution_fused_forward).  ROWS_UNROLLED: how many
// tap rows the loop over them unrolls; registers indexed by the tap need them all, a
// pointer does not (a loop compiles several times faster and costs a few instructions a row).
template <typename T, typename I> struct TensorTaps {
  enum { ROWS_UNROLLED = 1 };
  const T* p;  // the pixel's weight of tap 0
  I stride;    // between taps: Ho * Wo
  INV_INLINE typename Elem<T>::acc_t operator()(int k) const {
    return Elem<T>::load(p + k * stride);
  }
};
template <typename A, int K> struct RegisterTaps {
  enum { ROWS_UNROLLED = K };
  const A* w;
  INV_INLINE A operator()(int k) const { return w[k]; }
};

// Output pixel (i, j) of channels [c0, c0 + nc) of image n (at most CHUNK), each weight
// taps(a*K + b) loaded once and applied to all of them.
template <typename T, typename I, int K, int S, int D, int CHUNK, typename Taps>
INV_INLINE void aggregate_pixel(const T* __restrict__ x, T* __restrict__ out, const Taps& taps,
                                const I n, const I c0, const I nc, const I i, const I j,
                                const I C, const I H, const I W, const I Ho, const I Wo,
                                const I pad) {
  typedef typename Elem<T>::acc_t acc_t;
  const I HW = H * W, HoWo = Ho * Wo;
  acc_t acc[CHUNK];
  INV_UNROLL
  for (int c = 0; c < CHUNK; ++c) acc[c] = 0;
  const T* xn = x + (n * C + c0) * HW;
#ifndef INVOLUTION_HOST_EMULATION
#pragma unroll(Taps::ROWS_UNROLLED)
#endif
  for (int a = 0; a < K; ++a) {
    const I y = i * S + a * D - pad;
    if (y < 0 || y >= H) continue;
    INV_UNROLL
    for (int b = 0; b < K; ++b) {
      const I xx = j * S + b * D - pad;
      if (xx < 0 || xx >= W) continue;
      const acc_t wv = taps(a * K + b);
      const T* xp = xn + y * W + xx;
      INV_UNROLL
      for (int c = 0; c < CHUNK; ++c)
        if (c < nc) acc[c] += wv * Elem<T>::load(xp + c * HW);
    }
  }
  T* op = out + (n * C + c0) * HoWo + i * Wo + j;
  INV_UNROLL
  for (int c = 0; c < CHUNK; ++c)
    if (c < nc) Elem<T>::store(op + c * HoWo, acc[c]);
}

// ---------------------------------------------------------------------------------------
// Forward.  One thread: output pixel (i, j) of CHUNK consecutive channels of one group.
// Items: N * G * chunks * Ho * Wo.
// ---------------------------------------------------------------------------------------
template <typename T, typename I, int K, int S, int D, int CHUNK>
INV_KERNEL involution_forward(
    const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, const I total,
    const I C, const I H, const I W, const I G, const I Ho, const I Wo, const I pad) {
  const I HoWo = Ho * Wo;
  INV_KERNEL_LOOP(idx, total) {
    const ChunkItem<I, CHUNK> it(idx, Ho, Wo, G, C / G);
    const TensorTaps<T, I> taps = {w + (it.n * G + it.g) * (K * K) * HoWo + it.row * Wo + it.col,
                                   HoWo};
    aggregate_pixel<T, I, K, S, D, CHUNK>(x, out, taps, it.n, it.c0, it.nc, it.row, it.col, C,
                                          H, W, Ho, Wo, pad);
  }
}

// ---------------------------------------------------------------------------------------
// Fused forward: the layer's span convolution (reduced features r (N, Cr, Ho, Wo) -> the
// G*K*K generated weights, span (G*K*K, Cr), bias (G*K*K) when has_bias) and the
// aggregation.  One thread: output pixel (i, j) of CHUNK channels of one group.  It first
// computes the pixel's K*K weights of its group in registers,
//   wk[a*K + b] = bias[g*K*K + a*K + b] + sum_cr span[(g*K*K + a*K + b) * Cr + cr] * r[n, cr, i, j],
// then aggregates like involution_forward: the generated weights never reach memory.
// Items: N * G * chunks * Ho * Wo, as in involution_forward.
// ---------------------------------------------------------------------------------------
template <typename T, typename I, int K, int S, int D, int CHUNK>
INV_KERNEL involution_fused_forward(
    const T* __restrict__ x, const T* __restrict__ r, const T* __restrict__ span,
    const T* __restrict__ bias, T* __restrict__ out, const I total, const I C, const I H,
    const I W, const I G, const I Ho, const I Wo, const I pad, const I Cr, const I has_bias) {
  typedef typename Elem<T>::acc_t acc_t;
  const I HoWo = Ho * Wo;
  INV_KERNEL_LOOP(idx, total) {
    const ChunkItem<I, CHUNK> it(idx, Ho, Wo, G, C / G);
    const I n = it.n, g = it.g, i = it.row, j = it.col;

    acc_t wk[K * K];
    const T* sg = span + g * (K * K) * Cr;
    INV_UNROLL
    for (int k = 0; k < K * K; ++k) wk[k] = has_bias ? Elem<T>::load(bias + g * (K * K) + k) : 0;
    const T* rp = r + n * Cr * HoWo + i * Wo + j;
    for (I cr = 0; cr < Cr; ++cr) {
      const acc_t rv = Elem<T>::load(rp + cr * HoWo);
      INV_UNROLL
      for (int k = 0; k < K * K; ++k) wk[k] += Elem<T>::load(sg + k * Cr + cr) * rv;
    }
    // The unfused operator rounds the generated weights to T; so does this one.
    INV_UNROLL
    for (int k = 0; k < K * K; ++k) wk[k] = rounded_to<T>(wk[k]);

    const RegisterTaps<acc_t, K> taps = {wk};
    aggregate_pixel<T, I, K, S, D, CHUNK>(x, out, taps, n, it.c0, it.nc, i, j, C, H, W, Ho, Wo,
                                          pad);
  }
}

// ---------------------------------------------------------------------------------------
// Input gradient (a gather, so no atomics).  One thread: input pixel (y, x) of CHUNK
// channels of one group, summing over the output pixels whose windows cover it:
//   gx[n, c, y, x] = sum_{a, b} w[n, g, a, b, i, j] * gout[n, c, i, j]
//   with i = (y + pad - a*D) / S and j = (x + pad - b*D) / S when exact and in range.
// ---------------------------------------------------------------------------------------
template <typename T, typename I, int K, int S, int D, int CHUNK>
INV_KERNEL involution_backward_input(
    const T* __restrict__ gout, const T* __restrict__ w, T* __restrict__ gx, const I total,
    const I C, const I H, const I W, const I G, const I Ho, const I Wo, const I pad) {
  typedef typename Elem<T>::acc_t acc_t;
  const I HW = H * W, HoWo = Ho * Wo;
  INV_KERNEL_LOOP(idx, total) {
    const ChunkItem<I, CHUNK> it(idx, H, W, G, C / G);
    const I n = it.n, g = it.g, c0 = it.c0, nc = it.nc, y = it.row, xx = it.col;

    acc_t acc[CHUNK];
    INV_UNROLL
    for (int c = 0; c < CHUNK; ++c) acc[c] = 0;

    const T* gn = gout + (n * C + c0) * HoWo;
    const T* wg = w + (n * G + g) * (K * K) * HoWo;
    INV_LOOP
    for (int a = 0; a < K; ++a) {
      const I ty = y + pad - a * D;
      if (ty < 0 || (S > 1 && ty % S != 0)) continue;
      const I i = ty / S;
      if (i >= Ho) continue;
      INV_UNROLL
      for (int b = 0; b < K; ++b) {
        const I tx = xx + pad - b * D;
        if (tx < 0 || (S > 1 && tx % S != 0)) continue;
        const I j = tx / S;
        if (j >= Wo) continue;
        const acc_t wv = Elem<T>::load(wg + (a * K + b) * HoWo + i * Wo + j);
        const T* gp = gn + i * Wo + j;
        INV_UNROLL
        for (int c = 0; c < CHUNK; ++c)
          if (c < nc) acc[c] += wv * Elem<T>::load(gp + c * HoWo);
      }
    }
    T* op = gx + (n * C + c0) * HW + y * W + xx;
    INV_UNROLL
    for (int c = 0; c < CHUNK; ++c)
      if (c < nc) Elem<T>::store(op + c * HW, acc[c]);
  }
}

// ---------------------------------------------------------------------------------------
// Weight gradient.  One thread: all K*K weights of output pixel (i, j) of one group,
// reading each gout value once and summing over the group's channels:
//   gw[n, g, a, b, i, j] = sum_{c in g} gout[n, c, i, j] * x[n, c, i*S + a*D - pad, ...]
// ---------------------------------------------------------------------------------------
template <typename T, typename I, int K, int S, int D>
INV_KERNEL involution_backward_weight(
    const T* __restrict__ gout, const T* __restrict__ x, T* __restrict__ gw, const I total,
    const I C, const I H, const I W, const I G, const I Ho, const I Wo, const I pad) {
  typedef typename Elem<T>::acc_t acc_t;
  const I Cg = C / G;
  const I HW = H * W, HoWo = Ho * Wo;
  INV_KERNEL_LOOP(idx, total) {
    const I j = idx % Wo;
    I t = idx / Wo;
    const I i = t % Ho;
    t /= Ho;
    const I g = t % G;
    const I n = t / G;

    acc_t acc[K * K];
    INV_UNROLL
    for (int k = 0; k < K * K; ++k) acc[k] = 0;

    const I y0 = i * S - pad, x0 = j * S - pad;
    const T* gp = gout + (n * C + g * Cg) * HoWo + i * Wo + j;
    const T* xc = x + (n * C + g * Cg) * HW;
    for (I c = 0; c < Cg; ++c, gp += HoWo, xc += HW) {
      const acc_t go = Elem<T>::load(gp);
      INV_UNROLL
      for (int a = 0; a < K; ++a) {
        const I y = y0 + a * D;
        if (y < 0 || y >= H) continue;
        INV_UNROLL
        for (int b = 0; b < K; ++b) {
          const I xx = x0 + b * D;
          if (xx < 0 || xx >= W) continue;
          acc[a * K + b] += go * Elem<T>::load(xc + y * W + xx);
        }
      }
    }
    T* op = gw + (n * G + g) * (K * K) * HoWo + i * Wo + j;
    INV_UNROLL
    for (int k = 0; k < K * K; ++k) Elem<T>::store(op + k * HoWo, acc[k]);
  }
}

// ---------------------------------------------------------------------------------------
// Baseline: the weight gradient the way the official kernel computes it, one thread per
// weight element, each re-reading gout for all K*K positions.  (The baseline forward and
// input gradient are the kernels above with CHUNK = 1: one thread per element.)
// ---------------------------------------------------------------------------------------
template <typename T, typename I, int K, int S, int D>
INV_KERNEL involution_backward_weight_naive(
    const T* __restrict__ gout, const T* __restrict__ x, T* __restrict__ gw, const I total,
    const I C, const I H, const I W, const I G, const I Ho, const I Wo, const I pad) {
  typedef typename Elem<T>::acc_t acc_t;
  const I Cg = C / G;
  const I HW = H * W, HoWo = Ho * Wo;
  INV_KERNEL_LOOP(idx, total) {
    const I j = idx % Wo;
    I t = idx / Wo;
    const I i = t % Ho;
    t /= Ho;
    const I b = t % K;
    t /= K;
    const I a = t % K;
    t /= K;
    const I g = t % G;
    const I n = t / G;
    const I y = i * S + a * D - pad, xx = j * S + b * D - pad;
    acc_t acc = 0;
    if (y >= 0 && y < H && xx >= 0 && xx < W) {
      for (I c = g * Cg; c < (g + 1) * Cg; ++c)
        acc += Elem<T>::load(gout + (n * C + c) * HoWo + i * Wo + j) *
               Elem<T>::load(x + (n * C + c) * HW + y * W + xx);
    }
    Elem<T>::store(gw + idx, acc);
  }
}

// ---------------------------------------------------------------------------------------
// Row-blocked kernels.  The kernels above issue about one load per multiply-add (each input
// value is read again by each of the K*K threads whose windows cover it), which bounds them
// by the L1 load rate rather than by memory traffic.  Here a thread handles PX neighbouring
// pixels of one row: for each tap row it loads the input segment that the PX windows span
// once, SPAN = (PX - 1)*S + (K - 1)*D + 1 values, into registers and applies them to PX*K
// taps, so a tap row costs SPAN values for PX*K multiply-adds (10 for 28 at K = 7, S = 1,
// PX = 4), loaded in aligned packs of VEC elements (see load_segment).  Each sum adds its
// terms in the same order as the kernels above (taps row by row, channels in order), so the
// results are the same.  Positions outside the input or the output contribute zeros, as in
// the unfold definition.  Items are ordered (n, g, chunk, row, column block), the column
// block fastest.
// ---------------------------------------------------------------------------------------
template <typename T, typename I>
INV_INLINE typename Elem<T>::acc_t load_or_zero(const T* p, const I at, const I size) {
  return (at >= 0 && at < size) ? Elem<T>::load(p + at) : (typename Elem<T>::acc_t)0;
}

// Vector accesses.  A row block's loads are strided across a warp (thread t reads column
// PX*t + s), so a scalar load instruction of the warp touches PX times the cache lines that
// it uses; loaded as aligned packs of VEC neighbouring elements (16 bytes of float at
// VEC = 4), a warp's instruction covers contiguous memory and the kernel issues VEC times
// fewer of them.  The host picks VEC (4, 2 or 1) so that every row the kernel touches starts
// on a pack boundary and each thread's first column moves by a multiple of VEC.
template <typename T, int VEC> struct alignas(sizeof(T) * VEC) Pack { T e[VEC]; };

template <typename T, int VEC>
INV_INLINE Pack<T, VEC> load_pack(const T* p) {
#ifdef INVOLUTION_HOST_EMULATION
  if ((unsigned long long)(const void*)p % sizeof(Pack<T, VEC>) != 0) ++inv_misaligned_accesses;
  Pack<T, VEC> v;
  std::memcpy(&v, p, sizeof v);
  return v;
#else
  return *reinterpret_cast<const Pack<T, VEC>*>(p);
#endif
}

template <typename T, int VEC>
INV_INLINE void store_pack(T* p, const Pack<T, VEC>& v) {
#ifdef INVOLUTION_HOST_EMULATION
  if ((unsigned long long)(void*)p % sizeof(Pack<T, VEC>) != 0) ++inv_misaligned_accesses;
  std::memcpy(p, &v, sizeof v);
#else
  *reinterpret_cast<Pack<T, VEC>*>(p) = v;
#endif
}

// seg[s] = row[first + s] for s < N, zero outside [0, width); `row` starts on a pack
// boundary, `width` is a multiple of VEC and first = PHASE (mod VEC), so each pack covering
// the segment lies wholly inside the row or wholly outside it: loaded whole (the elements
// before and after the segment read and dropped), or zero.
template <typename T, typename I, int N, int VEC, int PHASE>
INV_INLINE void load_segment(typename Elem<T>::acc_t (&seg)[N], const T* row, const I first,
                             const I width) {
  constexpr int PACKS = (PHASE + N + VEC - 1) / VEC;
  const I start = first - PHASE;  // a multiple of VEC
  INV_UNROLL
  for (int k = 0; k < PACKS; ++k) {
    const I at = start + k * VEC;
    Pack<T, VEC> v = Pack<T, VEC>();  // all bits zero: +0 in every dtype
    if (at >= 0 && at < width) v = load_pack<T, VEC>(row + at);
    INV_UNROLL
    for (int e = 0; e < VEC; ++e) {
      const int s = k * VEC + e - PHASE;
      if (s >= 0 && s < N) seg[s] = Elem<T>::load(&v.e[e]);
    }
  }
}

template <typename A, int CHUNK, int PX>
INV_INLINE void set_zero(A (&acc)[CHUNK][PX]) {
  INV_UNROLL
  for (int c = 0; c < CHUNK; ++c)
    INV_UNROLL
    for (int p = 0; p < PX; ++p) acc[c][p] = 0;
}

// The generated weights of a tap row before the span's sum: the bias of each of its K taps
// (from `bias`, the row's first), or zero.
template <typename T, int K, int PX>
INV_INLINE void set_to_bias(typename Elem<T>::acc_t (&wk)[K][PX], const T* bias,
                            const bool has_bias) {
  INV_UNROLL
  for (int b = 0; b < K; ++b) {
    const typename Elem<T>::acc_t b0 = has_bias ? Elem<T>::load(bias + b) : 0;
    INV_UNROLL
    for (int p = 0; p < PX; ++p) wk[b][p] = b0;
  }
}

// One tap row of the row-blocked forward: for each of the first nc of CHUNK channels (rows
// `stride` apart from `row`), the SPAN input values from column `first` loaded once (zero
// outside [0, width)) and applied to the PX pixels' K taps, b in order:
//   acc[c][p] += wk[b][p] * value[first + p*S + b*D].
template <typename T, typename I, int K, int S, int D, int CHUNK, int PX, int VEC, int PHASE>
INV_INLINE void accumulate_tap_row(typename Elem<T>::acc_t (&acc)[CHUNK][PX],
                                   const typename Elem<T>::acc_t (&wk)[K][PX],
                                   const T* row, const I stride, const I first, const I width,
                                   const I nc) {
  typedef typename Elem<T>::acc_t acc_t;
  constexpr int SPAN = (PX - 1) * S + (K - 1) * D + 1;
  INV_UNROLL
  for (int c = 0; c < CHUNK; ++c) {
    if (c >= nc) break;
    acc_t seg[SPAN];
    load_segment<T, I, SPAN, VEC, PHASE>(seg, row + c * stride, first, width);
    INV_UNROLL
    for (int b = 0; b < K; ++b)
      INV_UNROLL
      for (int p = 0; p < PX; ++p) acc[c][p] += wk[b][p] * seg[p * S + b * D];
  }
}

// The input gradient's gather, row-blocked, at any stride S that divides PX.  Input pixel
// x0 + p takes tap (a, b) from output column (x0 + p + pad - b*D) / S when that divides
// exactly.  With x0 a multiple of S, whether it does and where the column lies relative to
// j0 = (x0 + pad - Q) / S depend only on p, b and Q = pad mod S, known when the kernel is
// compiled: the pairs that do not divide are dropped then (at S = 2 half of them), and a
// tap row reads the output columns [j0 + LO, j0 + LO + SPAN) once per channel.
INV_CONSTEXPR int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }
template <int K, int S, int D, int PX, int Q> struct InputGather {
  static constexpr int LO = floor_div(Q - (K - 1) * D, S);
  static constexpr int SPAN = floor_div(PX - 1 + Q, S) - LO + 1;
  // Does input pixel p take tap b from this tap row, and from which of the SPAN columns?
  static INV_CONSTEXPR bool takes(int p, int b) { return (p + Q - b * D - LO * S) % S == 0; }
  static INV_CONSTEXPR int column(int p, int b) { return (p + Q - b * D - LO * S) / S; }
  // The first pixel that takes tap b; the others are every S-th after it, from the
  // columns that follow its column.
  static INV_CONSTEXPR int first_pixel(int b) { return takes(0, b) ? 0 : first_pixel_from(1, b); }
  static INV_CONSTEXPR int first_pixel_from(int p, int b) {
    return p >= S || takes(p, b) ? p : first_pixel_from(p + 1, b);
  }
};

// wk[b][p] for the taps b >= B of a tap row: the PX/S weights of tap b that the pixels take
// lie in consecutive output columns of plane b, loaded as one segment (zero where a pixel
// takes no weight of tap b).
template <typename T, typename I, int K, int S, int D, int PX, int Q, int VEC, int PHASE,
          int B = 0>
struct GatherTapWeights {
  static INV_INLINE void load(typename Elem<T>::acc_t (&wk)[K][PX], const T* plane0,
                              const I plane_stride, const I first, const I width) {
    typedef InputGather<K, S, D, PX, Q> G;
    constexpr int P0 = G::first_pixel(B), C0 = G::column(P0, B);
    typename Elem<T>::acc_t run[PX / S];
    load_segment<T, I, PX / S, VEC, (PHASE + C0) % VEC>(run, plane0 + B * plane_stride,
                                                        first + C0, width);
    INV_UNROLL
    for (int p = 0; p < PX; ++p) wk[B][p] = 0;
    INV_UNROLL
    for (int m = 0; m < PX / S; ++m) wk[B][P0 + m * S] = run[m];
    GatherTapWeights<T, I, K, S, D, PX, Q, VEC, PHASE, B + 1>::load(wk, plane0, plane_stride,
                                                                   first, width);
  }
};
template <typename T, typename I, int K, int S, int D, int PX, int Q, int VEC, int PHASE>
struct GatherTapWeights<T, I, K, S, D, PX, Q, VEC, PHASE, K> {
  static INV_INLINE void load(typename Elem<T>::acc_t (&)[K][PX], const T*, const I, const I,
                              const I) {}
};

// One tap row of the row-blocked input gradient: for each of the first nc of CHUNK channels
// (rows `stride` apart from `row`, output row i), the SPAN output-gradient values from
// column `first` (= j0 + LO) loaded once and applied to the taps the PX pixels take, b in
// order (the order of the chunked kernel, which skips the others).
template <typename T, typename I, int K, int S, int D, int CHUNK, int PX, int Q, int VEC,
          int PHASE>
INV_INLINE void gather_tap_row(typename Elem<T>::acc_t (&acc)[CHUNK][PX],
                               const typename Elem<T>::acc_t (&wk)[K][PX], const T* row,
                               const I stride, const I first, const I width, const I nc) {
  typedef typename Elem<T>::acc_t acc_t;
  typedef InputGather<K, S, D, PX, Q> G;
  INV_UNROLL
  for (int c = 0; c < CHUNK; ++c) {
    if (c >= nc) break;
    acc_t seg[G::SPAN];
    load_segment<T, I, G::SPAN, VEC, PHASE>(seg, row + c * stride, first, width);
    INV_UNROLL
    for (int b = 0; b < K; ++b)
      INV_UNROLL
      for (int p = 0; p < PX; ++p)
        if (G::takes(p, b)) acc[c][p] += wk[b][p] * seg[G::column(p, b)];
  }
}

// Stores the sums of the first nc channels (rows `stride` apart from `at`, the pixel of
// column `first`, a multiple of VEC; `at`'s rows start on pack boundaries and `width` is a
// multiple of VEC), in packs, those below `width`.
template <typename T, typename I, int CHUNK, int PX, int VEC>
INV_INLINE void store_row_block(T* at, const typename Elem<T>::acc_t (&acc)[CHUNK][PX],
                                const I stride, const I nc, const I first, const I width) {
  INV_UNROLL
  for (int c = 0; c < CHUNK; ++c) {
    if (c >= nc) break;
    INV_UNROLL
    for (int k = 0; k < PX / VEC; ++k) {
      if (first + k * VEC >= width) break;
      Pack<T, VEC> v;
      INV_UNROLL
      for (int e = 0; e < VEC; ++e) Elem<T>::store(&v.e[e], acc[c][k * VEC + e]);
      store_pack<T, VEC>(at + c * stride + k * VEC, v);
    }
  }
}

// The row-blocked forward: output pixels (i, j0 .. j0 + PX) of CHUNK channels of one group,
// tap row by tap row; `weights` gives a tap row's K weights of the PX pixels (read from the
// generated kernels, or generated in registers by the fused kernel).  Packs of VEC (which
// divides PX); PHASE = -pad mod VEC, where each input segment starts.
template <typename T, typename I, int K, int S, int D, int CHUNK, int PX, int VEC, int PHASE,
          typename TapWeights>
INV_INLINE void forward_row_blocks(const T* __restrict__ x, T* __restrict__ out,
                                   const TapWeights& weights, const I total, const I C,
                                   const I H, const I W, const I G, const I Ho, const I Wo,
                                   const I pad) {
  static_assert(PX % VEC == 0 && PHASE >= 0 && PHASE < VEC, "blocks start on packs");
  typedef typename Elem<T>::acc_t acc_t;
  const I HW = H * W, HoWo = Ho * Wo, blocks = (Wo + PX - 1) / PX;
  INV_KERNEL_LOOP(idx, total) {
    const ChunkItem<I, CHUNK> it(idx, Ho, blocks, G, C / G);
    const I i = it.row, j0 = it.col * PX, x0 = j0 * S - pad;
    acc_t acc[CHUNK][PX];
    set_zero(acc);
    const T* xn = x + (it.n * C + it.c0) * HW;
    INV_LOOP
    for (int a = 0; a < K; ++a) {
      const I y = i * S + a * D - pad;
      if (y < 0 || y >= H) continue;
      acc_t wk[K][PX];  // this tap row's weights of the PX pixels
      weights.tap_row(wk, it.n, it.g, i, j0, a);
      accumulate_tap_row<T, I, K, S, D, CHUNK, PX, VEC, PHASE>(acc, wk, xn + y * W, HW, x0, W,
                                                              it.nc);
    }
    store_row_block<T, I, CHUNK, PX, VEC>(out + (it.n * C + it.c0) * HoWo + i * Wo + j0, acc, HoWo,
                                     it.nc, j0, Wo);
  }
}

// A tap row's weights read from the generated kernels (N, G, K*K, Ho, Wo).
template <typename T, typename I, int K, int PX, int VEC> struct StoredTapWeights {
  const T* w;
  I G, HoWo, Wo;
  INV_INLINE void tap_row(typename Elem<T>::acc_t (&wk)[K][PX], const I n, const I g, const I i,
                          const I j0, const int a) const {
    const T* wp = w + (n * G + g) * (K * K) * HoWo + i * Wo;
    INV_UNROLL
    for (int b = 0; b < K; ++b)
      load_segment<T, I, PX, VEC, 0>(wk[b], wp + (a * K + b) * HoWo, j0, Wo);
  }
};

// Forward: involution_forward's sums, row-blocked (forward_row_blocks).
template <typename T, typename I, int K, int S, int D, int CHUNK, int PX, int VEC, int PHASE>
INV_KERNEL involution_forward_rows(
    const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ out, const I total,
    const I C, const I H, const I W, const I G, const I Ho, const I Wo, const I pad) {
  const StoredTapWeights<T, I, K, PX, VEC> weights = {w, G, Ho * Wo, Wo};
  forward_row_blocks<T, I, K, S, D, CHUNK, PX, VEC, PHASE>(x, out, weights, total, C, H, W, G,
                                                          Ho, Wo, pad);
}

// Input gradient (a gather: no atomics): input pixels (y, x0 .. x0 + PX) of CHUNK channels
// of one group, at a stride S that divides PX, Q = pad mod S (InputGather).  Output row
// i = (y + pad - a*D) / S where that divides exactly.  Packs of VEC (which divides PX / S);
// PHASE: where the output-gradient segments start, mod VEC.
template <typename T, typename I, int K, int S, int D, int CHUNK, int PX, int Q, int VEC,
          int PHASE>
INV_KERNEL involution_backward_input_rows(
    const T* __restrict__ gout, const T* __restrict__ w, T* __restrict__ gx, const I total,
    const I C, const I H, const I W, const I G, const I Ho, const I Wo, const I pad) {
  static_assert(PX % S == 0 && Q >= 0 && Q < S, "a row block starts at a multiple of S");
  static_assert((PX / S) % VEC == 0 && PHASE >= 0 && PHASE < VEC, "segments move by packs");
  typedef typename Elem<T>::acc_t acc_t;
  typedef InputGather<K, S, D, PX, Q> Gather;
  const I HW = H * W, HoWo = Ho * Wo, blocks = (W + PX - 1) / PX;
  INV_KERNEL_LOOP(idx, total) {
    const ChunkItem<I, CHUNK> it(idx, H, blocks, G, C / G);
    const I y = it.row, x0 = it.col * PX, first = (x0 + pad - Q) / S + Gather::LO;
    acc_t acc[CHUNK][PX];
    set_zero(acc);
    const T* wg = w + (it.n * G + it.g) * (K * K) * HoWo;
    const T* gn = gout + (it.n * C + it.c0) * HoWo;
    INV_LOOP
    for (int a = 0; a < K; ++a) {
      const I ti = y + pad - a * D;
      if (ti < 0 || (S > 1 && ti % S != 0) || ti / S >= Ho) continue;
      const I i = ti / S;
      acc_t wk[K][PX];
      GatherTapWeights<T, I, K, S, D, PX, Q, VEC, PHASE>::load(wk, wg + a * K * HoWo + i * Wo,
                                                               HoWo, first, Wo);
      gather_tap_row<T, I, K, S, D, CHUNK, PX, Q, VEC, PHASE>(acc, wk, gn + i * Wo, HoWo, first,
                                                              Wo, it.nc);
    }
    store_row_block<T, I, CHUNK, PX, VEC>(gx + (it.n * C + it.c0) * HW + y * W + x0, acc, HW, it.nc,
                                     x0, W);
  }
}

// Weight gradient: the K weights of tap row a of output pixels (i, j0 .. j0 + PX) of one
// group, summed over the group's channels: per channel PX output-gradient values and one
// input segment for PX*K multiply-adds.  Items: N * G * K * Ho * column blocks, ordered
// (n, g, a, row, column block).  Packs of VEC (which divides PX); PHASE = -pad mod VEC.
template <typename T, typename I, int K, int S, int D, int PX, int VEC, int PHASE>
INV_KERNEL involution_backward_weight_rows(
    const T* __restrict__ gout, const T* __restrict__ x, T* __restrict__ gw, const I total,
    const I C, const I H, const I W, const I G, const I Ho, const I Wo, const I pad) {
  static_assert(PX % VEC == 0 && PHASE >= 0 && PHASE < VEC, "blocks start on packs");
  typedef typename Elem<T>::acc_t acc_t;
  constexpr int SPAN = (PX - 1) * S + (K - 1) * D + 1;
  const I Cg = C / G, HW = H * W, HoWo = Ho * Wo, blocks = (Wo + PX - 1) / PX;
  INV_KERNEL_LOOP(idx, total) {
    const I j0 = (idx % blocks) * PX;
    I t = idx / blocks;
    const I i = t % Ho;
    t /= Ho;
    const int a = (int)(t % K);
    t /= K;
    const I g = t % G;
    const I n = t / G;
    acc_t acc[K][PX];
    set_zero(acc);
    const I y = i * S + a * D - pad, x0 = j0 * S - pad;
    if (y >= 0 && y < H) {
      const T* gp = gout + (n * C + g * Cg) * HoWo + i * Wo;
      const T* xr = x + (n * C + g * Cg) * HW + y * W;
      for (I c = 0; c < Cg; ++c, gp += HoWo, xr += HW) {
        acc_t go[PX], seg[SPAN];
        load_segment<T, I, PX, VEC, 0>(go, gp, j0, Wo);
        load_segment<T, I, SPAN, VEC, PHASE>(seg, xr, x0, W);
        INV_UNROLL
        for (int b = 0; b < K; ++b)
          INV_UNROLL
          for (int p = 0; p < PX; ++p) acc[b][p] += go[p] * seg[p * S + b * D];
      }
    }
    store_row_block<T, I, K, PX, VEC>(gw + ((n * G + g) * (K * K) + a * K) * HoWo + i * Wo + j0,
                                      acc, HoWo, (I)K, j0, Wo);
  }
}

// A tap row's weights generated in registers from the reduced features (N, Cr, Ho, Wo) and
// the span (G*K*K, Cr): each span weight loaded once for PX pixels and each reduced feature
// once for K taps ((K + PX) loads for K*PX multiply-adds, where involution_fused_forward
// loads a span weight per multiply-add), rounded to T as the unfused operator rounds its
// kernels.
template <typename T, typename I, int K, int PX, int VEC> struct GeneratedTapWeights {
  const T* r;
  const T* span;
  const T* bias;
  I HoWo, Wo, Cr, has_bias;
  INV_INLINE void tap_row(typename Elem<T>::acc_t (&wk)[K][PX], const I n, const I g, const I i,
                          const I j0, const int a) const {
    typedef typename Elem<T>::acc_t acc_t;
    const T* rn = r + n * Cr * HoWo + i * Wo;
    const I tap0 = (g * K + a) * K;  // this tap row's first of the G*K*K generated
    set_to_bias<T, K, PX>(wk, bias + tap0, has_bias);
    for (I cr = 0; cr < Cr; ++cr) {
      acc_t rv[PX];
      load_segment<T, I, PX, VEC, 0>(rv, rn + cr * HoWo, j0, Wo);
      INV_UNROLL
      for (int b = 0; b < K; ++b) {
        const acc_t sv = Elem<T>::load(span + (tap0 + b) * Cr + cr);
        INV_UNROLL
        for (int p = 0; p < PX; ++p) wk[b][p] += sv * rv[p];
      }
    }
    INV_UNROLL
    for (int b = 0; b < K; ++b)
      INV_UNROLL
      for (int p = 0; p < PX; ++p) wk[b][p] = rounded_to<T>(wk[b][p]);
  }
};

// Fused forward, row-blocked: forward_row_blocks with each tap row's weights generated in
// registers (GeneratedTapWeights), so the generated kernels are never written.  The same
// sums in the same order as involution_fused_forward.
template <typename T, typename I, int K, int S, int D, int CHUNK, int PX, int VEC, int PHASE>
INV_KERNEL involution_fused_forward_rows(
    const T* __restrict__ x, const T* __restrict__ r, const T* __restrict__ span,
    const T* __restrict__ bias, T* __restrict__ out, const I total, const I C, const I H,
    const I W, const I G, const I Ho, const I Wo, const I pad, const I Cr, const I has_bias) {
  const GeneratedTapWeights<T, I, K, PX, VEC> weights = {r, span, bias, Ho * Wo, Wo, Cr,
                                                         has_bias};
  forward_row_blocks<T, I, K, S, D, CHUNK, PX, VEC, PHASE>(x, out, weights, total, C, H, W, G,
                                                          Ho, Wo, pad);
}

// Fused input gradient, row-blocked: involution_backward_input_rows with each tap row's
// weights generated from the reduced features in registers, as involution_fused_forward_rows
// generates them (same sums, rounded to T alike), so the fused operator's backward never
// writes the generated kernels.  The weights that a tap row needs belong to the output
// columns [first, first + SPAN) that its output-gradient segment covers: per reduced
// channel, that segment of the reduced features and the K span weights are loaded once
// (SPAN + K loads for the multiply-adds of the pairs taken).  Weights of output pixels
// outside the output are zero, as the unfused kernel reads them.  VEC and PHASE as in
// involution_backward_input_rows.
template <typename T, typename I, int K, int S, int D, int CHUNK, int PX, int Q, int VEC,
          int PHASE>
INV_KERNEL involution_fused_backward_input_rows(
    const T* __restrict__ gout, const T* __restrict__ r, const T* __restrict__ span,
    const T* __restrict__ bias, T* __restrict__ gx, const I total, const I C, const I H,
    const I W, const I G, const I Ho, const I Wo, const I pad, const I Cr, const I has_bias) {
  static_assert(PX % S == 0 && Q >= 0 && Q < S, "a row block starts at a multiple of S");
  static_assert((PX / S) % VEC == 0 && PHASE >= 0 && PHASE < VEC, "segments move by packs");
  typedef typename Elem<T>::acc_t acc_t;
  typedef InputGather<K, S, D, PX, Q> Gather;
  const I HW = H * W, HoWo = Ho * Wo, blocks = (W + PX - 1) / PX;
  INV_KERNEL_LOOP(idx, total) {
    const ChunkItem<I, CHUNK> it(idx, H, blocks, G, C / G);
    const I y = it.row, x0 = it.col * PX, first = (x0 + pad - Q) / S + Gather::LO;
    acc_t acc[CHUNK][PX];
    set_zero(acc);
    const T* gn = gout + (it.n * C + it.c0) * HoWo;
    const T* rn = r + it.n * Cr * HoWo;
    INV_LOOP
    for (int a = 0; a < K; ++a) {
      const I ti = y + pad - a * D;
      if (ti < 0 || (S > 1 && ti % S != 0) || ti / S >= Ho) continue;
      const I i = ti / S;
      const I tap0 = (it.g * K + a) * K;  // this tap row's first of the G*K*K generated
      acc_t wk[K][PX];  // wk[b][p]: the weight of tap (a, b) that input pixel x0 + p takes
      set_to_bias<T, K, PX>(wk, bias + tap0, has_bias);
      const T* ri = rn + i * Wo;
      for (I cr = 0; cr < Cr; ++cr) {
        acc_t rseg[Gather::SPAN];
        load_segment<T, I, Gather::SPAN, VEC, PHASE>(rseg, ri + cr * HoWo, first, Wo);
        INV_UNROLL
        for (int b = 0; b < K; ++b) {
          const acc_t sv = Elem<T>::load(span + (tap0 + b) * Cr + cr);
          INV_UNROLL
          for (int p = 0; p < PX; ++p)
            if (Gather::takes(p, b)) wk[b][p] += sv * rseg[Gather::column(p, b)];
        }
      }
      INV_UNROLL
      for (int b = 0; b < K; ++b)
        INV_UNROLL
        for (int p = 0; p < PX; ++p) {
          const I j = first + Gather::column(p, b);
          wk[b][p] = (Gather::takes(p, b) && j >= 0 && j < Wo) ? rounded_to<T>(wk[b][p])
                                                              : (acc_t)0;
        }
      gather_tap_row<T, I, K, S, D, CHUNK, PX, Q, VEC, PHASE>(acc, wk, gn + i * Wo, HoWo, first,
                                                              Wo, it.nc);
    }
    store_row_block<T, I, CHUNK, PX, VEC>(gx + (it.n * C + it.c0) * HW + y * W + x0, acc, HW, it.nc,
                                     x0, W);
  }
}
