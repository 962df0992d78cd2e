// Involution CPU kernels: forward, input gradient and weight gradient, and the fused operator
// (the kernel generation's last 1x1 convolution, "span", with the aggregation; see "fused
// operator" below).
//
//   out[n, c, i, j] = sum_{a, b < K} w[n, c / Cg, a, b, i, j]
//                     * x[n, c, i*S + a*D - P, j*S + b*D - P]      (zero outside)
//
// Layouts (made contiguous on entry): x (N, C, H, W), w (N, G, K, K, Ho, Wo),
// out (N, C, Ho, Wo), with G groups of Cg = C / G channels.
//
// Work is split with at::parallel_for over the (n, g, output row) items, so that each thread
// gets one contiguous run of rows and torch.set_num_threads applies.  Within a run:
//
// - Input rows are "staged" once into a small ring buffer (the rows the K taps of the
//   current output row read), converted to the accumulation type (float; double for
//   double), zero-padded left and right and split into S column phases: staged (q, t) holds
//   x[y, t*S + q - P].  Tap (a, b) of output column j then reads phase (b*D) % S at
//   t = j + (b*D) / S: a contiguous, in-bounds vector load for any stride, dilation and
//   padding, with no per-tap branch and no temporary tensor.
// - The innermost loop is vectorised along the output width: a tile of V output columns
//   (one SIMD register) for a block of up to 16 channels of the group, accumulated in
//   registers over the K*K taps.  Each generated weight vector is loaded once per tap and
//   applied to all channels of the block.
// - The weight gradient runs over the same tiles: the tile's output gradient stays in
//   registers and each tap sums it against the staged input over the group's channels.
// - The input gradient is a gather over input rows (no scattered read-modify-writes, which
//   would stall on store forwarding): the output-gradient and weight rows that reach an
//   input row are staged, padded, like the input in the forward pass, and each input
//   column phase accumulates its taps in registers.  Threads split the input rows.
//
// float16 and bfloat16 load through float and accumulate in float; indices are int64_t.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace involution_d2 {
namespace {

using at::vec::Vectorized;

template <typename scalar_t>
using acc_type = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Channels accumulated in registers at once: 16 accumulators + weight + input fit the 32
// registers of AVX-512; 8 for the 16 registers of AVX2 (and the generic fallback).
constexpr int kMaxBlock = VECTOR_WIDTH >= 64 ? 16 : 8;

// Calls tile(block, c0) over the channels [0, Cg) of a group, where block is a
// std::integral_constant: kMaxBlock channels at a time, then at most one block each of 8,
// 4, 2 and 1 for the rest (each block size is its own register-resident instantiation).
template <typename Tile>
inline void for_each_channel_block(int64_t Cg, Tile&& tile) {
  int64_t c0 = 0;
  for (; c0 + kMaxBlock <= Cg; c0 += kMaxBlock) tile(std::integral_constant<int, kMaxBlock>{}, c0);
  if (kMaxBlock > 8 && Cg - c0 >= 8) {
    tile(std::integral_constant<int, 8>{}, c0);
    c0 += 8;
  }
  if (Cg - c0 >= 4) {
    tile(std::integral_constant<int, 4>{}, c0);
    c0 += 4;
  }
  if (Cg - c0 >= 2) {
    tile(std::integral_constant<int, 2>{}, c0);
    c0 += 2;
  }
  if (Cg - c0 >= 1) tile(std::integral_constant<int, 1>{}, c0);
}

inline int64_t floor_div(int64_t a, int64_t b) {
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
inline int64_t ceil_div(int64_t a, int64_t b) { return -floor_div(-a, b); }

// The generated weights are read as K*K concurrent streams (one per tap plane) and the
// output gradient as Cg: more than the hardware prefetchers track, so the loops prefetch
// each stream this many bytes ahead.
constexpr int64_t kPrefetchBytes = 512;

template <typename T>
inline void prefetch(const T* p) {
  __builtin_prefetch(reinterpret_cast<const char*>(p) + kPrefetchBytes);
}
template <typename T>
inline void prefetch_for_write(T* p) {
  __builtin_prefetch(reinterpret_cast<char*>(p) + kPrefetchBytes, 1);
}

// Loads n <= V elements as a vector of the accumulation type, zero-filling the rest.
template <typename acc_t, typename scalar_t>
inline Vectorized<acc_t> load_vec(const scalar_t* p, int64_t n) {
  using Vec = Vectorized<acc_t>;
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return n == Vec::size() ? Vec::loadu(p) : Vec::loadu(p, n);
  } else {
    Vec out;
    if (n == Vec::size()) {
      at::vec::load_to_float(p, out);
    } else {
      scalar_t buf[Vec::size()] = {};
      std::copy(p, p + n, buf);
      at::vec::load_to_float(buf, out);
    }
    return out;
  }
}

// Stores the first n <= V lanes, rounding to scalar_t (round to nearest even).
template <typename scalar_t, typename acc_t>
inline void store_vec(scalar_t* p, const Vectorized<acc_t>& v, int64_t n) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    v.store(p, n);
  } else {
    at::vec::convert_from_float<scalar_t>(v, v).store(p, n);
  }
}

struct Geometry {
  int64_t N, C, H, W, G, Cg, K, Ho, Wo, S, P, D;
  int64_t V;      // vector lanes of the accumulation type
  int64_t tiles;  // ceil(Wo / V)
  int64_t L;      // entries of one staged phase row
  int64_t R;      // rows in a ring
  int64_t slot;   // elements of one ring row: Cg channels x S phases x L
  std::vector<int64_t> tap_offset;  // per b: (b*D % S) * L + b*D / S

  Geometry(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t padding,
           int64_t dilation, int64_t lanes)
      : Geometry(x, w.size(1), w.size(2), w.size(4), w.size(5), stride, padding, dilation,
                 lanes) {}
  Geometry(const at::Tensor& x, int64_t groups, int64_t kernel_size, int64_t out_h,
           int64_t out_w, int64_t stride, int64_t padding, int64_t dilation, int64_t lanes) {
    N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    G = groups, K = kernel_size, Ho = out_h, Wo = out_w;
    Cg = C / G, S = stride, P = padding, D = dilation, V = lanes;
    tiles = (Wo + V - 1) / V;
    L = tiles * V + (K - 1) * D / S;
    R = (K - 1) * D + 1;
    slot = Cg * S * L;
    for (int64_t b = 0; b < K; ++b) tap_offset.push_back((b * D % S) * L + b * D / S);
  }
  int64_t span() const { return (K - 1) * D; }
  // Runs of at least this many output rows per thread (~64k multiply-adds).
  int64_t grain() const { return std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, Cg * Wo * K * K)); }
};

// Stages row y of the Cg channels at src (x[n, g*Cg, 0, 0]) into ring row dst.
template <typename scalar_t, typename acc_t>
void stage_row(const Geometry& gm, const scalar_t* src, int64_t y, acc_t* dst) {
  const int64_t plane = gm.H * gm.W;
  for (int64_t c = 0; c < gm.Cg; ++c) {
    const scalar_t* s = src + c * plane + y * gm.W;
    for (int64_t q = 0; q < gm.S; ++q) {
      acc_t* d = dst + (c * gm.S + q) * gm.L;
      // t is inside the image when 0 <= t*S + q - P < W.
      const int64_t t0 = std::clamp<int64_t>(ceil_div(gm.P - q, gm.S), 0, gm.L);
      const int64_t t1 = std::clamp<int64_t>(ceil_div(gm.W + gm.P - q, gm.S), t0, gm.L);
      std::fill(d, d + t0, acc_t(0));
      if (gm.S == 1) {
        at::vec::convert(s + t0 - gm.P, d + t0, t1 - t0);
      } else {
        const scalar_t* sq = s + q - gm.P;
        for (int64_t t = t0; t < t1; ++t) d[t] = static_cast<acc_t>(sq[t * gm.S]);
      }
      std::fill(d + t1, d + gm.L, acc_t(0));
    }
    if (y + 1 < gm.H) {  // the next row, staged next: short rows escape the prefetchers
      for (int64_t k = 0; k < gm.W; k += 64 / sizeof(scalar_t)) __builtin_prefetch(s + gm.W + k);
    }
  }
}

// Writes row y of the input gradient from its staged form src (laid out like a staged input
// row) to dst (gx[n, g*Cg, 0, 0]), converted to scalar_t.
template <typename scalar_t, typename acc_t>
void flush_row(const Geometry& gm, const acc_t* src, int64_t y, scalar_t* dst) {
  const int64_t plane = gm.H * gm.W;
  for (int64_t c = 0; c < gm.Cg; ++c) {
    scalar_t* d = dst + c * plane + y * gm.W;
    for (int64_t q = 0; q < gm.S; ++q) {
      const acc_t* s = src + (c * gm.S + q) * gm.L;
      const int64_t t0 = std::clamp<int64_t>(ceil_div(gm.P - q, gm.S), 0, gm.L);
      const int64_t t1 = std::clamp<int64_t>(ceil_div(gm.W + gm.P - q, gm.S), t0, gm.L);
      if (gm.S == 1) {
        at::vec::convert(s + t0, d + t0 - gm.P, t1 - t0);
      } else {
        scalar_t* dq = d + q - gm.P;
        for (int64_t t = t0; t < t1; ++t) dq[t * gm.S] = static_cast<scalar_t>(s[t]);
      }
    }
  }
}

// The taps of output row i whose input row is inside [lo, hi): their a and ring rows.
template <typename acc_t>
int row_taps(const Geometry& gm, int64_t i, int64_t lo, int64_t hi, acc_t* ring,
             int64_t* taps, acc_t** rows) {
  int n = 0;
  for (int64_t a = 0; a < gm.K; ++a) {
    const int64_t y = i * gm.S + a * gm.D - gm.P;
    if (y >= lo && y < hi) {
      taps[n] = a;
      rows[n++] = ring + (y % gm.R) * gm.slot;
    }
  }
  return n;
}

// ------------------------------------------------------------------------------ forward
// One tile: output columns [j0, j0 + nv) of channels [c0, c0 + CB) of output row i.
// The weights of tap (a, b) are at w_tile[(a*K + b) * w_plane]: planes of the generated-weight
// tensor (w_plane = Ho*Wo) or of a block of generated rows (fused operator).
template <int CB, typename scalar_t, typename acc_t>
inline void forward_tile(const Geometry& gm, int ntaps, const int64_t* taps,
                         acc_t* const* rows, const scalar_t* w_tile, int64_t w_plane,
                         scalar_t* out_row, int64_t c0, int64_t j0, int64_t nv) {
  using Vec = Vectorized<acc_t>;
  const int64_t plane = gm.Ho * gm.Wo, cstride = gm.S * gm.L;
  Vec acc[CB];
  for (int c = 0; c < CB; ++c) acc[c] = Vec(acc_t(0));
  for (int ta = 0; ta < ntaps; ++ta) {
    const acc_t* xr = rows[ta] + c0 * cstride + j0;
    const scalar_t* wr = w_tile + taps[ta] * gm.K * w_plane;
    for (int64_t b = 0; b < gm.K; ++b) {
      prefetch(wr + b * w_plane);
      const Vec wv = load_vec<acc_t>(wr + b * w_plane, nv);
      const acc_t* xp = xr + gm.tap_offset[b];
#pragma GCC unroll 16
      for (int c = 0; c < CB; ++c) acc[c] = at::vec::fmadd(wv, Vec::loadu(xp + c * cstride), acc[c]);
    }
  }
  for (int c = 0; c < CB; ++c) {
    prefetch_for_write(out_row + (c0 + c) * plane + j0);
    store_vec(out_row + (c0 + c) * plane + j0, acc[c], nv);
  }
}

template <typename scalar_t, typename acc_t>
void forward_row(const Geometry& gm, int ntaps, const int64_t* taps, acc_t* const* rows,
                 const scalar_t* w_row, int64_t w_plane, scalar_t* out_row) {
  for (int64_t tile = 0; tile < gm.tiles; ++tile) {
    const int64_t j0 = tile * gm.V, nv = std::min(gm.V, gm.Wo - j0);
    for_each_channel_block(gm.Cg, [&](auto block, int64_t c0) {
      forward_tile<decltype(block)::value>(gm, ntaps, taps, rows, w_row + j0, w_plane, out_row,
                                           c0, j0, nv);
    });
  }
}

// Output rows [i_begin, i_end) of image n, every group, split over the threads.  The weights
// of group g, tap k, output pixel (i, j) are at w[g * w_group + k * w_plane +
// (i - i_begin) * Wo + j]: the generated-weight tensor, or a block of generated rows.
template <typename scalar_t>
void forward_rows(const Geometry& gm, const scalar_t* xd, scalar_t* od, int64_t n,
                  int64_t i_begin, int64_t i_end, const scalar_t* w, int64_t w_group,
                  int64_t w_plane) {
  using acc_t = acc_type<scalar_t>;
  const int64_t plane = gm.Ho * gm.Wo, nrows = i_end - i_begin;
  at::parallel_for(0, gm.G * nrows, gm.grain(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ring(gm.R * gm.slot);
    std::vector<int64_t> taps(gm.K);
    std::vector<acc_t*> rows(gm.K);
    for (int64_t item = begin; item < end;) {
      const int64_t g = item / nrows, i0 = i_begin + item % nrows;
      const int64_t i1 = std::min(i_end, i0 + (end - item));
      const int64_t ng = n * gm.G + g;
      const scalar_t* xg = xd + ng * gm.Cg * gm.H * gm.W;
      const scalar_t* wg = w + g * w_group;
      scalar_t* og = od + ng * gm.Cg * plane;
      int64_t staged = 0;  // rows [.., staged) are in the ring (this run's segment)
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t y0 = std::max<int64_t>(0, i * gm.S - gm.P);
        const int64_t y1 = std::min(gm.H, i * gm.S - gm.P + gm.span() + 1);
        for (int64_t y = std::max(y0, staged); y < y1; ++y)
          stage_row(gm, xg, y, ring.data() + (y % gm.R) * gm.slot);
        staged = std::max(staged, y1);
        const int ntaps = row_taps(gm, i, 0, gm.H, ring.data(), taps.data(), rows.data());
        forward_row(gm, ntaps, taps.data(), rows.data(), wg + (i - i_begin) * gm.Wo, w_plane,
                    og + i * gm.Wo);
      }
      item += i1 - i0;
    }
  });
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& x, const at::Tensor& w, at::Tensor& out,
                    const Geometry& gm) {
  const int64_t plane = gm.Ho * gm.Wo, kk = gm.K * gm.K;
  for (int64_t n = 0; n < gm.N; ++n)
    forward_rows(gm, x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, 0,
                 gm.Ho, w.const_data_ptr<scalar_t>() + n * gm.G * kk * plane, kk * plane, plane);
}

// ------------------------------------------------------------------------ fused operator
// The layer's last kernel-generation step (a 1x1 convolution, "span": Cr -> G*K*K, with bias)
// and the aggregation in one operator.  The generated weights are computed a block of output
// rows at a time, by one matrix product (ATen's BLAS) into a buffer of at most
// kGeneratedBlock values, and aggregated from there: they never exist whole.

constexpr int64_t kGeneratedBlock = int64_t(1) << 22;  // 16 MiB of float

// Output rows per generated block: at least one.
int64_t rows_per_block(int64_t gkk, int64_t wo) {
  return std::max<int64_t>(1, kGeneratedBlock / std::max<int64_t>(1, gkk * wo));
}

// The matrix-product engine for the span: oneDNN's 1x1 convolution from this many reduced
// channels, ATen's matmul (BLAS) below (measured on AMD EPYC, AVX-512: the convolution is
// 1.5-2x faster with Cr >= 64 and 2-3x slower with Cr <= 16).
constexpr int64_t kConvolutionFromChannels = 64;

bool span_as_convolution(int64_t cr) { return cr >= kConvolutionFromChannels; }

// Generated weights of image n, output rows [i0, i1): a contiguous (G*K*K, (i1 - i0) * Wo)
// block, written into buf (or, by the convolution, a new tensor).  span is (G*K*K, Cr, 1, 1)
// and bias (G*K*K) or undefined, in the dtype of r.
at::Tensor generate_rows(const at::Tensor& r, const at::Tensor& span, const at::Tensor& bias,
                         int64_t n, int64_t i0, int64_t i1, at::Tensor& buf) {
  const int64_t cr = r.size(1), wo = r.size(3), gkk = span.size(0);
  if (span_as_convolution(cr))
    return at::conv2d(r.narrow(0, n, 1).narrow(2, i0, i1 - i0), span,
                      bias.defined() ? c10::optional<at::Tensor>(bias) : c10::nullopt);
  const at::Tensor r_rows = r[n].view({cr, r.size(2) * wo}).narrow(1, i0 * wo, (i1 - i0) * wo);
  at::Tensor out = buf.narrow(0, 0, gkk * (i1 - i0) * wo).view({gkk, (i1 - i0) * wo});
  const at::Tensor span2d = span.view({gkk, cr});
  if (bias.defined())
    at::addmm_out(out, bias.view({gkk, 1}), span2d, r_rows);
  else
    at::mm_out(out, span2d, r_rows);
  return out;
}

template <typename scalar_t>
void fused_forward_kernel(const at::Tensor& x, const at::Tensor& r, const at::Tensor& span,
                          const at::Tensor& bias, at::Tensor& out, const Geometry& gm) {
  const int64_t kk = gm.K * gm.K, gkk = gm.G * kk;
  const int64_t block = std::min(gm.Ho, rows_per_block(gkk, gm.Wo));
  at::Tensor buf = at::empty({gkk * block * gm.Wo}, x.options());
  for (int64_t n = 0; n < gm.N; ++n) {
    for (int64_t i0 = 0; i0 < gm.Ho; i0 += block) {
      const int64_t i1 = std::min(gm.Ho, i0 + block), plane = (i1 - i0) * gm.Wo;
      const at::Tensor w = generate_rows(r, span, bias, n, i0, i1, buf);
      forward_rows(gm, x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), n, i0,
                   i1, w.const_data_ptr<scalar_t>(), kk * plane, plane);
    }
  }
}

// ------------------------------------------------------------------------ weight gradient
// gw[n, g, a, b, i, j] = sum_{c in g} gout[n, c, i, j] * x[n, c, i*S + a*D - P, j*S + b*D - P]
//
// One tile of output row i, channels [c0, c0 + CB): the tile's output gradient stays in
// registers while each tap sums it against the staged input over the block's channels;
// gw_tile (K*K vectors) collects the blocks.
template <int CB, typename scalar_t, typename acc_t>
inline void grad_weight_tile(const Geometry& gm, int ntaps, const int64_t* taps,
                             acc_t* const* rows, const scalar_t* gout_row, acc_t* gw_tile,
                             int64_t c0, int64_t j0, int64_t nv) {
  using Vec = Vectorized<acc_t>;
  const int64_t plane = gm.Ho * gm.Wo, cstride = gm.S * gm.L;
  Vec g[CB];
  for (int c = 0; c < CB; ++c) {
    prefetch(gout_row + (c0 + c) * plane + j0);
    g[c] = load_vec<acc_t>(gout_row + (c0 + c) * plane + j0, nv);
  }
  constexpr int NS = CB < 4 ? CB : 4;  // independent partial sums
  for (int ta = 0; ta < ntaps; ++ta) {
    const acc_t* xr = rows[ta] + c0 * cstride + j0;
    acc_t* gwr = gw_tile + taps[ta] * gm.K * gm.V;
    for (int64_t b = 0; b < gm.K; ++b) {
      const acc_t* xp = xr + gm.tap_offset[b];
      Vec sum[NS];
      for (int k = 0; k < NS; ++k) sum[k] = Vec(acc_t(0));
#pragma GCC unroll 16
      for (int c = 0; c < CB; ++c)
        sum[c % NS] = at::vec::fmadd(g[c], Vec::loadu(xp + c * cstride), sum[c % NS]);
      Vec total = Vec::loadu(gwr + b * gm.V);
      for (int k = 0; k < NS; ++k) total = total + sum[k];
      total.store(gwr + b * gm.V);
    }
  }
}

template <typename scalar_t, typename acc_t>
void grad_weight_row(const Geometry& gm, int ntaps, const int64_t* taps, acc_t* const* rows,
                     const scalar_t* gout_row, scalar_t* gw_row, acc_t* gw_tile) {
  using Vec = Vectorized<acc_t>;
  const int64_t plane = gm.Ho * gm.Wo;
  for (int64_t tile = 0; tile < gm.tiles; ++tile) {
    const int64_t j0 = tile * gm.V, nv = std::min(gm.V, gm.Wo - j0);
    std::fill(gw_tile, gw_tile + gm.K * gm.K * gm.V, acc_t(0));  // taps outside stay 0
    for_each_channel_block(gm.Cg, [&](auto block, int64_t c0) {
      grad_weight_tile<decltype(block)::value>(gm, ntaps, taps, rows, gout_row, gw_tile, c0,
                                               j0, nv);
    });
    for (int64_t k = 0; k < gm.K * gm.K; ++k) {
      prefetch_for_write(gw_row + k * plane + j0);
      store_vec(gw_row + k * plane + j0, Vec::loadu(gw_tile + k * gm.V), nv);
    }
  }
}

template <typename scalar_t>
void grad_weight_kernel(const at::Tensor& gout, const at::Tensor& x, at::Tensor& gw,
                        const Geometry& gm) {
  using acc_t = acc_type<scalar_t>;
  const scalar_t* god = gout.const_data_ptr<scalar_t>();
  const scalar_t* xd = x.const_data_ptr<scalar_t>();
  scalar_t* gwd = gw.mutable_data_ptr<scalar_t>();
  const int64_t plane = gm.Ho * gm.Wo;
  at::parallel_for(0, gm.N * gm.G * gm.Ho, gm.grain(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ring(gm.R * gm.slot);
    std::vector<acc_t> gw_tile(gm.K * gm.K * gm.V);
    std::vector<int64_t> taps(gm.K);
    std::vector<acc_t*> rows(gm.K);
    for (int64_t item = begin; item < end;) {
      const int64_t ng = item / gm.Ho, i0 = item % gm.Ho;
      const int64_t i1 = std::min(gm.Ho, i0 + (end - item));
      const scalar_t* xg = xd + ng * gm.Cg * gm.H * gm.W;
      int64_t staged = 0;
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t y0 = std::max<int64_t>(0, i * gm.S - gm.P);
        const int64_t y1 = std::min(gm.H, i * gm.S - gm.P + gm.span() + 1);
        for (int64_t y = std::max(y0, staged); y < y1; ++y)
          stage_row(gm, xg, y, ring.data() + (y % gm.R) * gm.slot);
        staged = std::max(staged, y1);
        const int ntaps = row_taps(gm, i, 0, gm.H, ring.data(), taps.data(), rows.data());
        grad_weight_row(gm, ntaps, taps.data(), rows.data(), god + ng * gm.Cg * plane + i * gm.Wo,
                        gwd + ng * gm.K * gm.K * plane + i * gm.Wo, gw_tile.data());
      }
      item += i1 - i0;
    }
  });
}

// ------------------------------------------------------------------------- input gradient
// gx[n, c, y, u - P] = sum over the taps (a, b) and output pixels (i, j) with
// i*S + a*D = y + P and j*S + b*D = u of w[n, g, a, b, i, j] * gout[n, c, i, j].
//
// Computed as a gather (no scattered read-modify-writes), one input row y at a time: with
// u = m*S + r, column phase r takes the taps b with b*D % S == r, at j = m - b*D / S.  The
// output rows i that reach row y are staged in a ring like the input in the forward pass:
// the Cg output-gradient rows and the K*K weight rows of row i, in the accumulation type,
// zero-padded on the left by (K-1)*D / S so that j = m - b*D / S never leaves the buffer.
// The result of each row (per phase, like a staged input row) is written to gx by
// flush_row.
struct GradInputGeometry {
  int64_t pad;    // left padding of staged output rows: (K-1)*D / S
  int64_t tiles;  // vector tiles over m, covering every column u = m*S + r < P + W
  int64_t Lj;     // entries of a staged output row
  int64_t Ri;     // output rows in the ring
  int64_t rows;   // staged rows per output row: Cg gradient rows, then K*K weight rows
  int64_t slot;   // rows * Lj

  explicit GradInputGeometry(const Geometry& gm) {
    pad = gm.span() / gm.S;
    tiles = ((gm.P + gm.W - 1) / gm.S + gm.V) / gm.V;
    Lj = std::max(pad + tiles * gm.V, pad + gm.Wo);
    Ri = gm.span() / gm.S + 2;
    rows = gm.Cg + gm.K * gm.K;
    slot = rows * Lj;
  }
};

// Stages output row i: the Cg output-gradient rows, then the K*K weight rows, each
// weight row k written by stage_weights(i, dst + (Cg + k) * Lj + pad, Lj) (Wo entries).
template <typename scalar_t, typename acc_t, typename StageWeights>
void stage_output_row(const Geometry& gm, const GradInputGeometry& gi, const scalar_t* gout_g,
                      int64_t i, acc_t* dst, StageWeights&& stage_weights) {
  const int64_t plane = gm.Ho * gm.Wo;
  for (int64_t r = 0; r < gi.rows; ++r) {
    acc_t* d = dst + r * gi.Lj;
    std::fill(d, d + gi.pad, acc_t(0));
    if (r < gm.Cg) at::vec::convert(gout_g + r * plane + i * gm.Wo, d + gi.pad, gm.Wo);
    std::fill(d + gi.pad + gm.Wo, d + gi.Lj, acc_t(0));
  }
  stage_weights(i, dst + gm.Cg * gi.Lj + gi.pad, gi.Lj);
}

template <int CB, typename acc_t>
inline void grad_input_tile(const GradInputGeometry& gi, int ntaps, const acc_t* const* wrows,
                            const acc_t* const* grows, acc_t* out, int64_t out_stride,
                            int64_t c0, int64_t m0) {
  using Vec = Vectorized<acc_t>;
  Vec acc[CB];
  for (int c = 0; c < CB; ++c) acc[c] = Vec(acc_t(0));
  for (int t = 0; t < ntaps; ++t) {
    const Vec wv = Vec::loadu(wrows[t] + m0);
    const acc_t* gp = grows[t] + c0 * gi.Lj + m0;
#pragma GCC unroll 16
    for (int c = 0; c < CB; ++c) acc[c] = at::vec::fmadd(wv, Vec::loadu(gp + c * gi.Lj), acc[c]);
  }
  for (int c = 0; c < CB; ++c) acc[c].store(out + (c0 + c) * out_stride + m0);
}

// Input rows [y_begin, y_end) of image n, every group, split over the threads.
// weight_rows(g) gives the stager of group g's weight rows: (i, dst, stride) -> writes the K*K
// rows of output row i (see stage_output_row).
template <typename scalar_t, typename WeightRows>
void grad_input_rows(const scalar_t* god, scalar_t* gxd, const Geometry& gm, int64_t n,
                     int64_t y_begin, int64_t y_end, WeightRows&& weight_rows) {
  using acc_t = acc_type<scalar_t>;
  const GradInputGeometry gi(gm);
  const int64_t plane = gm.Ho * gm.Wo, nrows = y_end - y_begin;
  // The per-row result, laid out as flush_row reads it: (channel, phase) rows of L entries.
  const int64_t L = std::max(gm.L, gi.tiles * gm.V);
  Geometry out_gm = gm;
  out_gm.L = L;
  out_gm.slot = gm.Cg * gm.S * L;
  at::parallel_for(0, gm.G * nrows, gm.grain(), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> ring(gi.Ri * gi.slot);
    std::vector<acc_t> row(out_gm.slot);
    std::vector<const acc_t*> wrows(gm.K * gm.K), grows(gm.K * gm.K);
    for (int64_t item = begin; item < end;) {
      const int64_t g = item / nrows, y0 = y_begin + item % nrows;
      const int64_t y1 = std::min(y_end, y0 + (end - item));
      const int64_t ng = n * gm.G + g;
      const scalar_t* gout_g = god + ng * gm.Cg * plane;
      auto stage_weights = weight_rows(g);
      int64_t staged = 0;
      bool any_staged = false;
      for (int64_t y = y0; y < y1; ++y) {
        // Output rows reaching row y: i*S + a*D = y + P for some a.
        const int64_t lo = std::max<int64_t>(0, ceil_div(y + gm.P - gm.span(), gm.S));
        const int64_t hi = std::min(gm.Ho, floor_div(y + gm.P, gm.S) + 1);
        for (int64_t i = any_staged ? std::max(lo, staged) : lo; i < hi; ++i)
          stage_output_row(gm, gi, gout_g, i, ring.data() + (i % gi.Ri) * gi.slot,
                           stage_weights);
        if (hi > lo) {
          staged = std::max(staged, hi);
          any_staged = true;
        }
        for (int64_t r = 0; r < gm.S; ++r) {
          int ntaps = 0;
          for (int64_t a = 0; a < gm.K; ++a) {
            const int64_t ty = y + gm.P - a * gm.D;
            if (ty < 0 || ty % gm.S != 0 || ty / gm.S >= gm.Ho) continue;
            const acc_t* base = ring.data() + (ty / gm.S % gi.Ri) * gi.slot;
            for (int64_t b = 0; b < gm.K; ++b) {
              if (b * gm.D % gm.S != r) continue;
              const int64_t shift = gi.pad - b * gm.D / gm.S;
              grows[ntaps] = base + shift;
              wrows[ntaps++] = base + (gm.Cg + a * gm.K + b) * gi.Lj + shift;
            }
          }
          acc_t* out = row.data() + r * L;
          for (int64_t tile = 0; tile < gi.tiles; ++tile) {
            const int64_t m0 = tile * gm.V;
            for_each_channel_block(gm.Cg, [&](auto block, int64_t c0) {
              grad_input_tile<decltype(block)::value>(gi, ntaps, wrows.data(), grows.data(),
                                                      out, gm.S * L, c0, m0);
            });
          }
        }
        flush_row(out_gm, row.data(), y, gxd + ng * gm.Cg * gm.H * gm.W);
      }
      item += y1 - y0;
    }
  });
}

// The weight stagers of grad_input_rows for weights laid out as w[g * K*K * w_plane +
// k * w_plane + (i - i_first) * Wo + j]: the generated-weight tensor of one image
// (i_first = 0, w_plane = Ho*Wo) or a block of generated rows.
template <typename scalar_t>
auto weight_rows_from(const Geometry& gm, const scalar_t* w, int64_t i_first, int64_t w_plane) {
  return [&gm, w, i_first, w_plane](int64_t g) {
    const scalar_t* w_g = w + g * gm.K * gm.K * w_plane;
    return [&gm, w_g, i_first, w_plane](int64_t i, acc_type<scalar_t>* dst, int64_t stride) {
      for (int64_t k = 0; k < gm.K * gm.K; ++k)
        at::vec::convert(w_g + k * w_plane + (i - i_first) * gm.Wo, dst + k * stride, gm.Wo);
    };
  };
}

// --------------------------------------------------------------------------- operators
int64_t output_extent(int64_t in, int64_t k, int64_t stride, int64_t padding, int64_t dilation) {
  return (in + 2 * padding - dilation * (k - 1) - 1) / stride + 1;
}

void check_inputs(const at::Tensor& x, const at::Tensor& w, int64_t stride, int64_t padding,
                  int64_t dilation) {
  TORCH_CHECK(x.device().is_cpu() && w.device().is_cpu(),
              "involution_d2_cpu: expected CPU tensors, got x on ", x.device(), " and weight on ",
              w.device());
  TORCH_CHECK(x.dim() == 4 && w.dim() == 6, "involution_d2_cpu: expected x (N, C, H, W) and "
              "weight (N, G, K, K, Ho, Wo), got ", x.sizes(), " and ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "involution_d2_cpu: x is ", x.scalar_type(),
              " but weight is ", w.scalar_type());
  TORCH_CHECK(stride >= 1 && padding >= 0 && dilation >= 1,
              "involution_d2_cpu: bad stride/padding/dilation ", stride, "/", padding, "/",
              dilation);
  const int64_t k = w.size(2);
  TORCH_CHECK(w.size(0) == x.size(0) && w.size(1) >= 1 && x.size(1) % w.size(1) == 0 &&
                  w.size(3) == k && k >= 1,
              "involution_d2_cpu: weight ", w.sizes(), " does not fit x ", x.sizes());
  const int64_t ho = output_extent(x.size(2), k, stride, padding, dilation);
  const int64_t wo = output_extent(x.size(3), k, stride, padding, dilation);
  TORCH_CHECK(ho >= 1 && wo >= 1 && w.size(4) == ho && w.size(5) == wo,
              "involution_d2_cpu: weight ", w.sizes(), " has the wrong output size for x ",
              x.sizes(), " (expected ", ho, "x", wo, ")");
}

template <typename scalar_t>
int64_t lanes() {
  return Vectorized<acc_type<scalar_t>>::size();
}

at::Tensor involution_forward(const at::Tensor& x_, const at::Tensor& w_, int64_t stride,
                              int64_t padding, int64_t dilation) {
  check_inputs(x_, w_, stride, padding, dilation);
  const at::Tensor x = x_.contiguous(), w = w_.contiguous();
  at::Tensor out = at::empty({x.size(0), x.size(1), w.size(4), w.size(5)}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "involution_forward", [&] {
    const Geometry gm(x, w, stride, padding, dilation, lanes<scalar_t>());
    forward_kernel<scalar_t>(x, w, out, gm);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> involution_backward(
    const at::Tensor& gout_, const at::Tensor& x_, const at::Tensor& w_, int64_t stride,
    int64_t padding, int64_t dilation, std::array<bool, 2> output_mask) {
  check_inputs(x_, w_, stride, padding, dilation);
  const at::Tensor x = x_.contiguous(), w = w_.contiguous();
  const at::Tensor gout = gout_.to(x.scalar_type()).contiguous();
  TORCH_CHECK(gout.sizes() == at::IntArrayRef({x.size(0), x.size(1), w.size(4), w.size(5)}),
              "involution_d2_cpu: grad_out ", gout.sizes(), " does not match the output size");
  at::Tensor gx = output_mask[0] ? at::empty_like(x) : at::Tensor();
  at::Tensor gw = output_mask[1] ? at::empty_like(w) : at::Tensor();
  if (output_mask[0] || output_mask[1]) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "involution_backward", [&] {
      const Geometry gm(x, w, stride, padding, dilation, lanes<scalar_t>());
      if (gw.defined()) grad_weight_kernel<scalar_t>(gout, x, gw, gm);
      if (gx.defined()) {
        const int64_t plane = gm.Ho * gm.Wo;
        for (int64_t n = 0; n < gm.N; ++n)
          grad_input_rows(gout.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(), gm,
                          n, 0, gm.H,
                          weight_rows_from(gm, w.const_data_ptr<scalar_t>() +
                                                   n * gm.G * gm.K * gm.K * plane,
                                           0, plane));
      }
    });
  }
  // Gradients not asked for are returned as empty tensors.
  if (!output_mask[0]) gx = at::empty({0}, x.options());
  if (!output_mask[1]) gw = at::empty({0}, w.options());
  return {gx, gw};
}

// Checks of the fused operator's inputs; returns (Ho, Wo).
std::pair<int64_t, int64_t> check_fused_inputs(const at::Tensor& x, const at::Tensor& r,
                                               const at::Tensor& span, int64_t groups,
                                               int64_t kernel_size, int64_t stride,
                                               int64_t padding, int64_t dilation) {
  TORCH_CHECK(x.device().is_cpu() && r.device().is_cpu() && span.device().is_cpu(),
              "involution_d2_cpu: expected CPU tensors");
  TORCH_CHECK(x.dim() == 4 && r.dim() == 4, "involution_d2_cpu: expected x (N, C, H, W) and "
              "reduced (N, Cr, Ho, Wo), got ", x.sizes(), " and ", r.sizes());
  TORCH_CHECK(x.scalar_type() == r.scalar_type() && span.scalar_type() == x.scalar_type(),
              "involution_d2_cpu: x, reduced and span weight must share a dtype, got ",
              x.scalar_type(), ", ", r.scalar_type(), ", ", span.scalar_type());
  const int64_t kk = kernel_size * kernel_size, cr = r.size(1);
  TORCH_CHECK(groups >= 1 && x.size(1) % groups == 0 && span.numel() == groups * kk * cr &&
                  span.size(0) == groups * kk && r.size(0) == x.size(0),
              "involution_d2_cpu: span weight ", span.sizes(), " does not fit x ", x.sizes(),
              ", reduced ", r.sizes(), ", groups ", groups, ", kernel size ", kernel_size);
  TORCH_CHECK(stride >= 1 && padding >= 0 && dilation >= 1 && kernel_size >= 1,
              "involution_d2_cpu: bad kernel_size/stride/padding/dilation");
  const int64_t ho = output_extent(x.size(2), kernel_size, stride, padding, dilation);
  const int64_t wo = output_extent(x.size(3), kernel_size, stride, padding, dilation);
  TORCH_CHECK(r.size(2) == ho && r.size(3) == wo, "involution_d2_cpu: reduced ", r.sizes(),
              " has the wrong output size for x ", x.sizes(), " (expected ", ho, "x", wo, ")");
  return {ho, wo};
}

// The span as a (G*K*K, Cr) matrix and the bias (or an undefined tensor), in x's dtype.
std::pair<at::Tensor, at::Tensor> span_matrix(const at::Tensor& x, const at::Tensor& span,
                                              const c10::optional<at::Tensor>& bias,
                                              int64_t gkk, int64_t cr) {
  at::Tensor b;
  if (bias.has_value() && bias->defined()) {
    TORCH_CHECK(bias->numel() == gkk, "involution_d2_cpu: span bias ", bias->sizes(),
                " does not have ", gkk, " elements");
    b = bias->to(x.scalar_type()).contiguous();
  }
  return {span.reshape({gkk, cr, 1, 1}).to(x.scalar_type()).contiguous(), b};
}

at::Tensor fused_involution_forward(const at::Tensor& x_, const at::Tensor& r_,
                                   const at::Tensor& span_,
                                   const c10::optional<at::Tensor>& bias_, int64_t groups,
                                   int64_t kernel_size, int64_t stride, int64_t padding,
                                   int64_t dilation) {
  const auto [ho, wo] = check_fused_inputs(x_, r_, span_, groups, kernel_size, stride, padding,
                                           dilation);
  const at::Tensor x = x_.contiguous(), r = r_.contiguous();
  at::Tensor out = at::empty({x.size(0), x.size(1), ho, wo}, x.options());
  if (out.numel() == 0) return out;
  const auto [span, bias] = span_matrix(x, span_, bias_, groups * kernel_size * kernel_size,
                                        r.size(1));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fused_involution_forward", [&] {
    const Geometry gm(x, groups, kernel_size, ho, wo, stride, padding, dilation,
                      lanes<scalar_t>());
    fused_forward_kernel<scalar_t>(x, r, span, bias, out, gm);
  });
  return out;
}

// The fused operator's backward.  The kernels' gradient (N, G*K*K, Ho, Wo, a transient) is
// computed by the weight-gradient pass and reduced to the gradients of reduced, span and bias
// by the span's own backward; the input gradient regenerates the kernels a block of rows at
// a time, so the kernels themselves never exist whole.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> fused_involution_backward(
    const at::Tensor& gout_, const at::Tensor& x_, const at::Tensor& r_, const at::Tensor& span_,
    const c10::optional<at::Tensor>& bias_, int64_t groups, int64_t kernel_size, int64_t stride,
    int64_t padding, int64_t dilation, std::array<bool, 4> mask) {
  const auto [ho, wo] = check_fused_inputs(x_, r_, span_, groups, kernel_size, stride, padding,
                                           dilation);
  const at::Tensor x = x_.contiguous(), r = r_.contiguous();
  const at::Tensor gout = gout_.to(x.scalar_type()).contiguous();
  TORCH_CHECK(gout.sizes() == at::IntArrayRef({x.size(0), x.size(1), ho, wo}),
              "involution_d2_cpu: grad_out ", gout.sizes(), " does not match the output size");
  const int64_t n = x.size(0), cr = r.size(1), gkk = groups * kernel_size * kernel_size;
  const bool has_bias = bias_.has_value() && bias_->defined();
  const bool need_kernels = mask[1] || mask[2] || (mask[3] && has_bias);
  at::Tensor gx = mask[0] ? at::empty_like(x) : at::empty({0}, x.options());
  at::Tensor gk = need_kernels ? at::empty({n, groups, kernel_size, kernel_size, ho, wo},
                                           x.options())
                               : at::Tensor();
  if (x.numel() > 0 && (mask[0] || need_kernels)) {
    const auto [span, bias] = span_matrix(x, span_, bias_, gkk, cr);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "fused_involution_backward", [&] {
      const Geometry gm(x, groups, kernel_size, ho, wo, stride, padding, dilation,
                        lanes<scalar_t>());
      if (need_kernels) grad_weight_kernel<scalar_t>(gout, x, gk, gm);
      if (mask[0]) {
        // Blocks of input rows whose output rows (those reaching them) fit one generated
        // block; the span's weights of those output rows are generated once per block.
        const int64_t rows = rows_per_block(gkk, wo);
        const int64_t in_rows = std::max<int64_t>(1, (rows - 1) * stride - gm.span() + 1);
        const int64_t cap = std::min(ho, (in_rows - 1 + gm.span()) / stride + 2);
        at::Tensor buf = at::empty({gkk * cap * wo}, x.options());
        for (int64_t n = 0; n < gm.N; ++n) {
          for (int64_t y0 = 0; y0 < gm.H; y0 += in_rows) {
            const int64_t y1 = std::min(gm.H, y0 + in_rows);
            const int64_t lo = std::max<int64_t>(0, ceil_div(y0 + padding - gm.span(), stride));
            const int64_t hi = std::min(ho, floor_div(y1 - 1 + padding, stride) + 1);
            const at::Tensor w = hi > lo ? generate_rows(r, span, bias, n, lo, hi, buf) : buf;
            grad_input_rows(gout.const_data_ptr<scalar_t>(), gx.mutable_data_ptr<scalar_t>(),
                            gm, n, y0, y1,
                            weight_rows_from(gm, w.const_data_ptr<scalar_t>(), lo,
                                             std::max<int64_t>(hi - lo, 0) * wo));
          }
        }
      }
    });
  }
  at::Tensor g_r = at::empty({0}, r.options()), g_span = at::empty({0}, span_.options()),
             g_bias = at::empty({0}, x.options());
  if (need_kernels && span_as_convolution(cr) && n > 0) {
    // The span convolution's own backward (oneDNN), on the kernels' gradient.
    const at::Tensor span4d = span_.reshape({gkk, cr, 1, 1}).to(x.scalar_type());
    const std::vector<int64_t> bias_sizes{gkk};
    auto [gr, gs, gb] = at::convolution_backward(
        gk.view({n, gkk, ho, wo}), r, span4d, at::OptionalIntArrayRef(bias_sizes), {1, 1},
        {0, 0}, {1, 1}, false, {0, 0}, 1, {mask[1], mask[2], mask[3] && has_bias});
    if (mask[1]) g_r = gr;
    if (mask[2]) g_span = gs.view_as(span_);
    if (mask[3] && has_bias) g_bias = gb.to(bias_->scalar_type());
  } else if (need_kernels) {
    const at::Tensor gk3 = gk.view({n, gkk, ho * wo});
    if (mask[1])
      g_r = at::matmul(span_.reshape({gkk, cr}).t(), gk3).view_as(r);
    if (mask[2])
      g_span = at::matmul(gk3, r.view({n, cr, ho * wo}).transpose(1, 2)).sum(0).view_as(span_);
    if (mask[3] && has_bias) g_bias = gk3.sum({0, 2}).to(bias_->scalar_type());
  }
  return {gx, g_r, g_span, g_bias};
}

}  // namespace

TORCH_LIBRARY(involution_d2_cpu, m) {
  m.def("forward(Tensor x, Tensor weight, int stride, int padding, int dilation) -> Tensor");
  m.def("backward(Tensor grad_out, Tensor x, Tensor weight, int stride, int padding, "
        "int dilation, bool[2] output_mask) -> (Tensor, Tensor)");
  m.def("fused_forward(Tensor x, Tensor reduced, Tensor span_weight, Tensor? span_bias, "
        "int groups, int kernel_size, int stride, int padding, int dilation) -> Tensor");
  m.def("fused_backward(Tensor grad_out, Tensor x, Tensor reduced, Tensor span_weight, "
        "Tensor? span_bias, int groups, int kernel_size, int stride, int padding, "
        "int dilation, bool[4] output_mask) -> (Tensor, Tensor, Tensor, Tensor)");
  // The vector instruction set this library was compiled for (see native.py).
  m.def("vector_width() -> int", []() -> int64_t { return VECTOR_WIDTH; });
}

TORCH_LIBRARY_IMPL(involution_d2_cpu, CPU, m) {
  m.impl("forward", &involution_forward);
  m.impl("backward", &involution_backward);
  m.impl("fused_forward", &fused_involution_forward);
  m.impl("fused_backward", &fused_involution_backward);
}

}  // namespace involution_d2
