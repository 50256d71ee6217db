// conv2d family on the CPU: convolution forward, backward-input, backward-weight; max/avg/adaptive pooling.
//   y[n,co,oh,ow] = b[co] + Σ_{ci<C_in/G, kh, kw} w[co,ci,kh,kw] · x[n, g·C_in/G + ci, oh·sh − pt + kh·dh, ow·sw − pl + kw·dw]
// Algorithm: implicit GEMM with M = the pixels of all images (N·OH·OW: small images still fill tiles,
// and the tasks are pixel blocks whatever the batch), N = C_out/G, K = C_in/G·KH·KW; im2col is never
// built. A task copies the input rows its pixel block reads into a zero-padded slab, then runs
// register tiles of the GEMM micro-kernel's kind (24 accumulators: 6×4, 12×2 or 24×1 vectors of
// pixels × channels on AVX-512) that broadcast their inputs straight from the slab through per-lane
// and per-tap offsets (indirect convolution), so nothing is packed but the weights, once per call.
// Few output channels: channels on M instead, im2col slivers packed for gemm_packed_block.
// Blocking: the tile (block pixels × C_out/G) ≤ 256 KB and the slab ≤ 384 KB stay in L2 beside the
// weights' K block; K is cut into ⌈K/KC⌉ blocks. Workspace: packed weights + a tile and a slab per
// thread, independent of N (conv2d_forward_workspace). 1×1 unpadded: a plain GEMM per image
// (subsampled when strided). C_in/G or C_out/G == 1 (depthwise): direct kernel on padded planes.
// backward-input: stride 1 → the forward engine on dy with flipped, transposed weights; else
// dcol = Wᵀ·dy per pixel block (gemm_packed_block) + col2im. backward-weight: dWᵀ += im2col·dyᵀ on the
// same tiles over a padded NHWC slab, one accumulator per thread. Cost floor: 2·N·C_out·K·OH·OW FLOPs.
// References: Chellapilla et al. 2006 (im2col GEMM); Dukhan 2019 (indirect convolution); BLIS 2015.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "cpu/simd.h"
#include "fastdl.h"

namespace fastdl::cpu {
namespace {

// One convolution as an engine sees it, input → output. backward-input runs the forward engine on
// dy with flipped weights, so "input" is not always the user's x; its paddings may be negative.
struct Geo {
  index_t N, C_in, H, W, C_out, KH, KW, OH, OW, sh, sw, pt, pl, dh, dw, G;
  index_t cig() const { return C_in / G; }
  index_t cog() const { return C_out / G; }
  index_t taps() const { return KH * KW; }
  index_t K() const { return cig() * KH * KW; }
  index_t P() const { return OH * OW; }
  double flops() const { return 2.0 * N * C_out * K() * P(); }
};

Geo geo_of(const Conv2dShape& s) {
  return {s.N,        s.C_in,     s.H,       s.W,        s.C_out,      s.KH,         s.KW,         s.OH,
          s.OW,       s.stride_h, s.stride_w, s.pad_top, s.pad_left, s.dilation_h, s.dilation_w, s.groups};
}

// Below this many FLOPs per thread a second thread costs more than it saves.
constexpr double kMinFlopsPerThread = 2.0 * 48 * 48 * 48;

int available_threads() { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

int team_for(index_t tasks, double flops, int threads) {
  const index_t by_work = static_cast<index_t>(std::max(1.0, flops / kMinFlopsPerThread));
  return static_cast<int>(std::max<index_t>(1, std::min<index_t>({index_t{threads}, tasks, by_work})));
}

// body(t) for t < tasks, dynamically scheduled over `team` threads (no parallel region for one).
template <class Body>
void run_tasks(index_t tasks, int team, const Body& body) {
  if (team <= 1) {
    for (index_t t = 0; t < tasks; ++t) body(t);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(team)
  for (index_t t = 0; t < tasks; ++t) body(t);
}

// run_tasks for bodies that add into per-thread accumulators: a fixed share of the tasks per
// thread, in order, so the sums (and the trained weights) are the same from run to run.
template <class Body>
void run_accumulating_tasks(index_t tasks, int team, const Body& body) {
  if (team <= 1) {
    for (index_t t = 0; t < tasks; ++t) body(t);
    return;
  }
#pragma omp parallel for schedule(static) num_threads(team)
  for (index_t t = 0; t < tasks; ++t) body(t);
}

// How many parts to cut each of `items` independent jobs into so that the tasks share evenly among
// the threads (3 images on 2 threads → 2 parts each, 6 tasks); 1 when there are plenty.
index_t parts_for_balance(index_t items, int threads, index_t max_parts) {
  if (threads <= 1 || items >= 4 * threads || items % threads == 0) return 1;
  return std::max<index_t>(1, std::min<index_t>(max_parts, threads / std::gcd<index_t>(items, threads)));
}

// First j ≥ 0 with a + j·s ≥ 0, and the end of the j with a + j·s < limit, clamped to [0, len].
inline index_t first_inside(index_t a, index_t s, index_t len) {
  return a >= 0 ? 0 : std::min(len, (-a + s - 1) / s);
}
inline index_t end_inside(index_t a, index_t s, index_t limit, index_t len) {
  return a >= limit ? 0 : std::min(len, (limit - a + s - 1) / s);
}

// ---- im2col slivers, packed on the fly --------------------------------------------------------

// A run of consecutive pixels of a sliver that stay in one output row: sliver lanes r0..r0+len.
struct Run {
  index_t r0, len, n, oh, ow;
};
constexpr int kMaxSliver = 64;

int split_runs(index_t m, index_t len, index_t OH, index_t OW, Run* runs) {
  const index_t P = OH * OW;
  index_t n = m / P, oh = (m % P) / OW, ow = m % OW;
  int count = 0;
  for (index_t r = 0; r < len;) {
    const index_t run = std::min(len - r, OW - ow);
    runs[count++] = {r, run, n, oh, ow};
    r += run;
    ow = 0;
    if (++oh == OH) oh = 0, ++n;
  }
  return count;
}

// d[j] = row[iw0 + j·s] for j < len, 0 where the column is outside [0, W).
template <class T>
inline void copy_row_clamped(T* d, const T* row, index_t iw0, index_t len, index_t s, index_t W) {
  if (s == 1) {  // no divisions on the common path
    const index_t lo = std::clamp<index_t>(-iw0, 0, len), hi = std::clamp<index_t>(W - iw0, lo, len);
    for (index_t j = 0; j < lo; ++j) d[j] = T(0);
    for (index_t j = lo; j < hi; ++j) d[j] = row[iw0 + j];
    for (index_t j = hi; j < len; ++j) d[j] = T(0);
    return;
  }
  const index_t lo = first_inside(iw0, s, len), hi = std::max(lo, end_inside(iw0, s, W, len));
  for (index_t j = 0; j < lo; ++j) d[j] = T(0);
  for (index_t j = lo; j < hi; ++j) d[j] = row[iw0 + j * s];
  for (index_t j = hi; j < len; ++j) d[j] = T(0);
}

// One R-wide sliver of the im2col matrix: dst[p·R + r] = im2col(k0 + p, m0 + r) for p < kc, r < len,
// zero for len ≤ r < R. Row k = (ci·KH + kh)·KW + kw and pixel m = (n·OH + oh)·OW + ow stand for
// x[n, ci, oh·sh − pt + kh·dh, ow·sw − pl + kw·dw] (0 outside); xg is the group's channel 0.
// General form: the pixels form runs along output rows; input rows are looked up once per (ci, kh)
// and each run is copied with its columns clamped.
template <class T>
void pack_im2col_runs(T* dst, index_t R, index_t m0, index_t len, index_t k0, index_t kc, const T* xg,
                      const Geo& g) {
  const index_t H = g.H, W = g.W, KH = g.KH, KW = g.KW, sw = g.sw, dh = g.dh, dw = g.dw, HW = H * W;
  Run runs[kMaxSliver];
  const int nrun = split_runs(m0, len, g.OH, g.OW, runs);
  // Run geometry in plain locals: the copies below cannot alias them.
  index_t r0[kMaxSliver], rl[kMaxSliver], ih0[kMaxSliver], iw0[kMaxSliver];
  const T* base[kMaxSliver];
  const T* rows[kMaxSliver];
  for (int i = 0; i < nrun; ++i) {
    r0[i] = runs[i].r0, rl[i] = runs[i].len, ih0[i] = runs[i].oh * g.sh - g.pt, iw0[i] = runs[i].ow * sw - g.pl;
    base[i] = xg + runs[i].n * g.C_in * HW;
  }
  index_t ci = k0 / (KH * KW), kh = (k0 / KW) % KH, kw = k0 % KW;
  T* d = dst;
  for (index_t p = 0; p < kc;) {
    for (int i = 0; i < nrun; ++i) {
      const index_t ih = ih0[i] + kh * dh;
      rows[i] = ih >= 0 && ih < H ? base[i] + ci * HW + ih * W : nullptr;
    }
    const index_t taps = std::min(KW - kw, kc - p);
    for (index_t j = 0; j < taps; ++j, ++kw, d += R) {
      for (int i = 0; i < nrun; ++i) {
        if (rows[i])
          copy_row_clamped(d + r0[i], rows[i], iw0[i] + kw * dw, rl[i], sw, W);
        else
          std::fill(d + r0[i], d + r0[i] + rl[i], T(0));
      }
      std::fill(d + len, d + R, T(0));
    }
    p += taps;
    kw = 0;
    if (++kh == KH) kh = 0, ++ci;
  }
}

// The same sliver when its pixels read the input at one stride from a base address: all of them in
// one output row, or, for stride 1 with OW == W ("same" padding), in consecutive rows of one image
// (the end of a row and the start of the next are adjacent in memory). Every k is then one copy of
// R elements (RC = R at compile time) followed by zeroing the lanes whose row (per kh) or column
// (per kw) falls outside the input, kept as bit masks; lanes past len are zeroed the same way.
// Returns false (nothing written) when the sliver does not qualify.
constexpr index_t kMaxMaskedTaps = 32;

template <class T, int RC>
bool pack_im2col_linear(T* dst, index_t R_runtime, index_t m0, index_t len, index_t k0, index_t kc, const T* xg,
                        const T* x_begin, const T* x_end, const Geo& g) {
  const index_t R = RC > 0 ? RC : R_runtime;
  const index_t H = g.H, W = g.W, KH = g.KH, KW = g.KW, sw = g.sw, dh = g.dh, dw = g.dw, HW = H * W, P = g.P();
  const index_t n = m0 / P, q0 = m0 % P, oh0 = q0 / g.OW, ow0 = q0 % g.OW;
  const bool one_row = ow0 + len <= g.OW, adjacent_rows = sw == 1 && g.sh == 1 && g.OW == W;
  if (R > 64 || KH > kMaxMaskedTaps || KW > kMaxMaskedTaps || q0 + len > P || !(one_row || adjacent_rows))
    return false;
  std::uint64_t row_mask[kMaxMaskedTaps], col_mask[kMaxMaskedTaps];
  const std::uint64_t tail = (R == 64 ? 0 : ~std::uint64_t{0} << R) ^ (len == 64 ? 0 : ~std::uint64_t{0} << len);
  for (index_t kh = 0; kh < KH; ++kh) row_mask[kh] = tail;
  for (index_t kw = 0; kw < KW; ++kw) col_mask[kw] = 0;
  for (index_t r = 0, oh = oh0, ow = ow0; r < len; ++r) {
    for (index_t kh = 0; kh < KH; ++kh) {
      const index_t ih = oh * g.sh - g.pt + kh * dh;
      if (ih < 0 || ih >= H) row_mask[kh] |= std::uint64_t{1} << r;
    }
    for (index_t kw = 0; kw < KW; ++kw) {
      const index_t iw = ow * sw - g.pl + kw * dw;
      if (iw < 0 || iw >= W) col_mask[kw] |= std::uint64_t{1} << r;
    }
    if (++ow == g.OW) ow = 0, ++oh;
  }
  // Lane r of tap (ci, kh, kw) reads base[ci·HW + kh·dh·W + kw·dw + r·sw].
  const std::uintptr_t lo = reinterpret_cast<std::uintptr_t>(x_begin), hi = reinterpret_cast<std::uintptr_t>(x_end);
  const std::uintptr_t base = reinterpret_cast<std::uintptr_t>(xg) +
                              ((n * g.C_in * H + oh0 * g.sh - g.pt) * W + ow0 * sw - g.pl) * sizeof(T);
  const index_t span = ((R - 1) * sw + 1) * sizeof(T);
  index_t ci = k0 / (KH * KW), kh = (k0 / KW) % KH, kw = k0 % KW;
  T* d = dst;
  for (index_t p = 0; p < kc;) {
    const std::uintptr_t row = base + (ci * HW + kh * dh * W) * sizeof(T);
    const std::uint64_t rm = row_mask[kh];
    const index_t taps = std::min(KW - kw, kc - p);
    for (index_t j = 0; j < taps; ++j, ++kw, d += R) {
      const std::uintptr_t src = row + kw * dw * sizeof(T);
      const T* s = reinterpret_cast<const T*>(src);
      std::uint64_t zero = rm | col_mask[kw];
      if (src >= lo && src + span <= hi) {
        if (sw == 1)
          std::memcpy(d, s, sizeof(T) * R);
        else
          for (index_t r = 0; r < R; ++r) d[r] = s[r * sw];
        for (; zero; zero &= zero - 1) d[__builtin_ctzll(zero)] = T(0);
      } else {  // near an end of the array, read only the lanes inside the input
        for (index_t r = 0; r < R; ++r) d[r] = zero >> r & 1 ? T(0) : s[r * sw];
      }
    }
    p += taps;
    kw = 0;
    if (++kh == KH) kh = 0, ++ci;
  }
  return true;
}

template <class T, int RC>
void pack_im2col(T* dst, index_t R, index_t m0, index_t len, index_t k0, index_t kc, const T* xg, const T* x_begin,
                 const T* x_end, const Geo& g) {
  if (!pack_im2col_linear<T, RC>(dst, R, m0, len, k0, kc, xg, x_begin, x_end, g))
    pack_im2col_runs(dst, R, m0, len, k0, kc, xg, g);
}

// Brings the input lines that im2col rows [k0, k0 + kc) of pixels [m0, m0 + pb) read into L2. The
// packer walks up to C·KH rows of the input at once, a few bytes of each per sliver: too many
// streams for the hardware prefetchers, so without this nearly every new line is a miss to L3.
template <class T>
void prefetch_block_input(const T* xg, const Geo& g, index_t m0, index_t pb, index_t k0, index_t kc) {
  constexpr index_t kLine = 64 / sizeof(T);
  const index_t P = g.P(), HW = g.H * g.W, c0 = k0 / g.taps(), c1 = (k0 + kc - 1) / g.taps() + 1;
  for (index_t m = m0; m < m0 + pb;) {  // one output row (of one image) at a time
    const index_t n = m / P, oh = (m % P) / g.OW, ow = m % g.OW, len = std::min(m0 + pb - m, g.OW - ow);
    const index_t w0 = std::max<index_t>(0, ow * g.sw - g.pl);
    const index_t w1 = std::min<index_t>(g.W, (ow + len - 1) * g.sw - g.pl + (g.KW - 1) * g.dw + 1);
    for (index_t c = c0; c < c1; ++c)
      for (index_t kh = 0; kh < g.KH; ++kh) {
        const index_t ih = oh * g.sh - g.pt + kh * g.dh;
        if (ih < 0 || ih >= g.H) continue;
        const T* row = xg + (n * g.C_in + c) * HW + ih * g.W;
        for (index_t iw = w0; iw < w1; iw += kLine) __builtin_prefetch(row + iw, 0, 2);
        __builtin_prefetch(row + w1 - 1, 0, 2);
      }
    m += len;
  }
}

template <class T>
using SliverPacker = void (*)(T*, index_t, index_t, index_t, index_t, index_t, const T*, const T*, const T*,
                              const Geo&);

template <class T>
SliverPacker<T> im2col_packer(int R) {
  switch (R) {
    case 4: return pack_im2col<T, 4>;
    case 6: return pack_im2col<T, 6>;
    case 8: return pack_im2col<T, 8>;
    case 12: return pack_im2col<T, 12>;
    case 16: return pack_im2col<T, 16>;
    case 24: return pack_im2col<T, 24>;
    case 32: return pack_im2col<T, 32>;
    default: return pack_im2col<T, 0>;
  }
}

// ---- direct kernels (C_in/G == 1 or C_out/G == 1: depthwise and single-channel convolutions) ----
// The input planes are first copied with their zero padding (and room for whole vectors), so the
// kernels run without bounds checks: outputs along a row in vectors (the last one overlapping its
// neighbour), four independent accumulators at a time.

// Geometry of a zero-padded plane: padded row r holds input row r − pt (column c: c − pl); Hp × Wp
// covers every tap of every output, with Wp rounded so that whole vectors of outputs stay inside.
struct PaddedPlane {
  index_t Hp, Wp;
};
inline PaddedPlane padded_plane(const Geo& g, index_t width) {
  const index_t ow_end = round_up(g.OW, width);  // the weight gradient reads whole vectors of dy
  return {(g.OH - 1) * g.sh + (g.KH - 1) * g.dh + 1,
          std::max((ow_end - 1) * g.sw + (g.KW - 1) * g.dw + 1, g.pl + g.W)};
}

template <class T>
void pad_plane(T* dst, const T* src, const Geo& g, const PaddedPlane& pp) {
  for (index_t r = 0; r < pp.Hp; ++r) {
    T* d = dst + r * pp.Wp;
    const index_t ih = r - g.pt;
    if (ih < 0 || ih >= g.H) {
      std::fill(d, d + pp.Wp, T(0));
      continue;
    }
    const index_t c0 = std::min(pp.Wp, std::max<index_t>(0, g.pl)), c1 = std::min(pp.Wp, g.pl + g.W);
    std::fill(d, d + c0, T(0));
    std::copy(src + ih * g.W + (c0 - g.pl), src + ih * g.W + (c1 - g.pl), d + c0);
    std::fill(d + std::max(c0, c1), d + pp.Wp, T(0));
  }
}

template <class V>
struct Direct {
  using T = typename V::T;
  using reg = typename V::reg;
  static constexpr int Wv = V::width;

  // The output plane of channel co: xp holds the group's C_in/G padded planes (plane elements
  // apart), wc = w[co].
  static void forward_plane(T* yp, const T* xp, index_t plane, const T* wc, T bias, const Geo& g, const PaddedPlane& pp) {
    const index_t Cig = g.cig(), taps = g.taps();
    if (g.sw == 1 && g.OW >= Wv) {
      const index_t vecs = ceil_div(g.OW, Wv), total = g.OH * vecs;
      for (index_t i0 = 0; i0 < total; i0 += 4) {
        const T* base[4];
        T* out[4];
        int u = 0;
        for (; u < 4 && i0 + u < total; ++u) {
          const index_t oh = (i0 + u) / vecs, ow = std::min(((i0 + u) % vecs) * Wv, g.OW - Wv);
          base[u] = xp + oh * g.sh * pp.Wp + ow;
          out[u] = yp + oh * g.OW + ow;
        }
        for (int k = u; k < 4; ++k) base[k] = base[0];
        reg acc[4] = {V::set1(bias), V::set1(bias), V::set1(bias), V::set1(bias)};
        for (index_t ci = 0; ci < Cig; ++ci)
          for (index_t kh = 0; kh < g.KH; ++kh)
            for (index_t kw = 0; kw < g.KW; ++kw) {
              const reg wv = V::set1(wc[ci * taps + kh * g.KW + kw]);
              const index_t off = ci * plane + kh * g.dh * pp.Wp + kw * g.dw;
#pragma GCC unroll 4
              for (int k = 0; k < 4; ++k) acc[k] = V::fmadd(wv, V::load(base[k] + off), acc[k]);
            }
        for (int k = 0; k < u; ++k) V::store(out[k], acc[k]);
      }
      return;
    }
    for (index_t oh = 0; oh < g.OH; ++oh)
      for (index_t ow = 0; ow < g.OW; ++ow) {
        T acc = bias;
        const T* base = xp + oh * g.sh * pp.Wp + ow * g.sw;
        for (index_t ci = 0; ci < Cig; ++ci)
          for (index_t kh = 0; kh < g.KH; ++kh)
            for (index_t kw = 0; kw < g.KW; ++kw)
              acc += wc[ci * taps + kh * g.KW + kw] * base[ci * plane + kh * g.dh * pp.Wp + kw * g.dw];
        yp[oh * g.OW + ow] = acc;
      }
  }

  // acc[kh·KW + kw] += Σ_{oh, ow} dy[oh, ow] · xp[(oh·sh + kh·dh)·Wp + ow·sw + kw·dw] for one image:
  // dyp is dy's plane with rows of OWp = round_up(OW, width) (zeros past OW), xp the padded input.
  static void weight_plane(T* acc, const T* dyp, index_t OWp, const T* xp, const Geo& g, const PaddedPlane& pp) {
    for (index_t kh = 0; kh < g.KH; ++kh)
      for (index_t kw = 0; kw < g.KW; ++kw) {
        const T* xt = xp + kh * g.dh * pp.Wp + kw * g.dw;
        T sum = 0;
        if (g.sw == 1) {
          reg a[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
          const index_t vecs = OWp / Wv, total = g.OH * vecs;
          index_t i = 0;
          for (; i + 4 <= total; i += 4)
#pragma GCC unroll 4
            for (int k = 0; k < 4; ++k) {
              const index_t oh = (i + k) / vecs, ow = ((i + k) % vecs) * Wv;
              a[k] = V::fmadd(V::load(dyp + oh * OWp + ow), V::load(xt + oh * g.sh * pp.Wp + ow), a[k]);
            }
          for (; i < total; ++i) {
            const index_t oh = i / vecs, ow = (i % vecs) * Wv;
            a[0] = V::fmadd(V::load(dyp + oh * OWp + ow), V::load(xt + oh * g.sh * pp.Wp + ow), a[0]);
          }
          sum = V::reduce_add(V::add(V::add(a[0], a[1]), V::add(a[2], a[3])));
        } else {
          for (index_t oh = 0; oh < g.OH; ++oh)
            for (index_t ow = 0; ow < g.OW; ++ow) sum += dyp[oh * OWp + ow] * xt[oh * g.sh * pp.Wp + ow * g.sw];
        }
        acc[kh * g.KW + kw] += sum;
      }
  }

  // out[c] = Σ_n Σ_p dy[n, c, p] for channels c0..c1 (the bias gradient).
  static void channel_sums(T* out, const T* dy, index_t N, index_t C, index_t P, index_t c0, index_t c1) {
    for (index_t c = c0; c < c1; ++c) {
      reg v0 = V::zero(), v1 = V::zero();
      T s = 0;
      for (index_t n = 0; n < N; ++n) {
        const T* p = dy + (n * C + c) * P;
        index_t i = 0;
        for (; i + 2 * Wv <= P; i += 2 * Wv) v0 = V::add(v0, V::load(p + i)), v1 = V::add(v1, V::load(p + i + Wv));
        for (; i < P; ++i) s += p[i];
      }
      out[c] = V::reduce_add(V::add(v0, v1)) + s;
    }
  }
};

template <class T>
struct DirectKernels {
  int width;  // vector lanes
  void (*forward_plane)(T*, const T*, index_t, const T*, T, const Geo&, const PaddedPlane&);
  void (*weight_plane)(T*, const T*, index_t, const T*, const Geo&, const PaddedPlane&);
  void (*channel_sums)(T*, const T*, index_t, index_t, index_t, index_t, index_t);
};

#define FASTDL_DIRECT_ENTRIES(NAME, V, ATTR)                                                                   \
  ATTR FASTDL_FLATTEN void NAME##_forward_plane(V::T* yp, const V::T* xp, index_t plane, const V::T* wc,      \
                                                V::T b, const Geo& g, const PaddedPlane& pp) {                \
    Direct<V>::forward_plane(yp, xp, plane, wc, b, g, pp);                                                     \
  }                                                                                                            \
  ATTR FASTDL_FLATTEN void NAME##_weight_plane(V::T* acc, const V::T* dyp, index_t OWp, const V::T* xp,       \
                                               const Geo& g, const PaddedPlane& pp) {                         \
    Direct<V>::weight_plane(acc, dyp, OWp, xp, g, pp);                                                         \
  }                                                                                                            \
  ATTR FASTDL_FLATTEN void NAME##_channel_sums(V::T* out, const V::T* dy, index_t N, index_t C, index_t P,     \
                                               index_t c0, index_t c1) {                                       \
    Direct<V>::channel_sums(out, dy, N, C, P, c0, c1);                                                         \
  }
FASTDL_DIRECT_ENTRIES(avx512_f32, simd::Avx512F32, FASTDL_TARGET_AVX512)
FASTDL_DIRECT_ENTRIES(avx512_f64, simd::Avx512F64, FASTDL_TARGET_AVX512)
FASTDL_DIRECT_ENTRIES(avx2_f32, simd::Avx2F32, FASTDL_TARGET_AVX2)
FASTDL_DIRECT_ENTRIES(avx2_f64, simd::Avx2F64, FASTDL_TARGET_AVX2)
FASTDL_DIRECT_ENTRIES(portable_f32, simd::Portable<float>, )
FASTDL_DIRECT_ENTRIES(portable_f64, simd::Portable<double>, )
#undef FASTDL_DIRECT_ENTRIES

template <class T>
DirectKernels<T> direct_kernels() {
#define FASTDL_DIRECT_TABLE(NAME, V) return {V::width, NAME##_forward_plane, NAME##_weight_plane, NAME##_channel_sums}
  if constexpr (sizeof(T) == 4) {
    switch (capability()) {
      case CpuCapability::avx512: FASTDL_DIRECT_TABLE(avx512_f32, simd::Avx512F32);
      case CpuCapability::avx2: FASTDL_DIRECT_TABLE(avx2_f32, simd::Avx2F32);
      default: FASTDL_DIRECT_TABLE(portable_f32, simd::Portable<float>);
    }
  } else {
    switch (capability()) {
      case CpuCapability::avx512: FASTDL_DIRECT_TABLE(avx512_f64, simd::Avx512F64);
      case CpuCapability::avx2: FASTDL_DIRECT_TABLE(avx2_f64, simd::Avx2F64);
      default: FASTDL_DIRECT_TABLE(portable_f64, simd::Portable<double>);
    }
  }
#undef FASTDL_DIRECT_TABLE
}

// ---- transposes ---------------------------------------------------------------------------------

// dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols. AVX2 8×8 (float) and 4×4 (double)
// register transposes where the CPU has them, a scalar 8×8-tiled loop otherwise.
template <class T>
void transpose_scalar(const T* src, index_t rows, index_t cols, index_t lds, T* dst, index_t ldd) {
  constexpr index_t B = 8;
  for (index_t r0 = 0; r0 < rows; r0 += B)
    for (index_t c0 = 0; c0 < cols; c0 += B)
      for (index_t c = c0; c < std::min(cols, c0 + B); ++c)
        for (index_t r = r0; r < std::min(rows, r0 + B); ++r) dst[c * ldd + r] = src[r * lds + c];
}

FASTDL_TARGET_AVX2 void transpose_avx2(const float* src, index_t rows, index_t cols, index_t lds, float* dst,
                                       index_t ldd) {
  index_t r0 = 0;
  for (; r0 + 8 <= rows; r0 += 8) {
    index_t c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {
      __m256 v[8], t[8];
      for (int i = 0; i < 8; ++i) v[i] = _mm256_loadu_ps(src + (r0 + i) * lds + c0);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        v[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        v[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        v[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        v[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      // v[0..3]: columns 0, 1, 2, 3 of rows 0–3 (low half) and columns 4–7 (high half); v[4..7]: rows 4–7.
      for (int i = 0; i < 4; ++i) {
        _mm256_storeu_ps(dst + (c0 + i) * ldd + r0, _mm256_permute2f128_ps(v[i], v[i + 4], 0x20));
        _mm256_storeu_ps(dst + (c0 + i + 4) * ldd + r0, _mm256_permute2f128_ps(v[i], v[i + 4], 0x31));
      }
    }
    if (c0 < cols) transpose_scalar(src + r0 * lds + c0, 8, cols - c0, lds, dst + c0 * ldd + r0, ldd);
  }
  if (r0 < rows) transpose_scalar(src + r0 * lds, rows - r0, cols, lds, dst + r0, ldd);
}

FASTDL_TARGET_AVX2 void transpose_avx2(const double* src, index_t rows, index_t cols, index_t lds, double* dst,
                                       index_t ldd) {
  index_t r0 = 0;
  for (; r0 + 4 <= rows; r0 += 4) {
    index_t c0 = 0;
    for (; c0 + 4 <= cols; c0 += 4) {
      __m256d v[4], t[4];
      for (int i = 0; i < 4; ++i) v[i] = _mm256_loadu_pd(src + (r0 + i) * lds + c0);
      t[0] = _mm256_unpacklo_pd(v[0], v[1]), t[1] = _mm256_unpackhi_pd(v[0], v[1]);
      t[2] = _mm256_unpacklo_pd(v[2], v[3]), t[3] = _mm256_unpackhi_pd(v[2], v[3]);
      _mm256_storeu_pd(dst + (c0 + 0) * ldd + r0, _mm256_permute2f128_pd(t[0], t[2], 0x20));
      _mm256_storeu_pd(dst + (c0 + 1) * ldd + r0, _mm256_permute2f128_pd(t[1], t[3], 0x20));
      _mm256_storeu_pd(dst + (c0 + 2) * ldd + r0, _mm256_permute2f128_pd(t[0], t[2], 0x31));
      _mm256_storeu_pd(dst + (c0 + 3) * ldd + r0, _mm256_permute2f128_pd(t[1], t[3], 0x31));
    }
    if (c0 < cols) transpose_scalar(src + r0 * lds + c0, 4, cols - c0, lds, dst + c0 * ldd + r0, ldd);
  }
  if (r0 < rows) transpose_scalar(src + r0 * lds, rows - r0, cols, lds, dst + r0, ldd);
}

template <class T>
void transpose(const T* src, index_t rows, index_t cols, index_t lds, T* dst, index_t ldd) {
  if (capability() >= CpuCapability::avx2)
    transpose_avx2(src, rows, cols, lds, dst, ldd);
  else
    transpose_scalar(src, rows, cols, lds, dst, ldd);
}

// ---- indirect tiles: pixels × channels straight from x ------------------------------------------

// c[r·ldc + j] += Σ_{p<kc} x[koff[p] + off[r]] · w[p·NR + j] for lanes r < MR (output pixels) and
// j < NR = NV·width (output channels): the micro-kernel's tile, with A broadcast from the input
// instead of a packed sliver (the indirect convolution of Dukhan, 2019, on NCHW). koff[p] is tap
// p's offset and off[r] lane r's tap origin, so lanes may cross row ends. Only lanes r < rows are
// stored; the others read from valid addresses and are dropped.
template <class V, int MR, int NV>
void indirect_tile(index_t kc, const typename V::T* x, const index_t* koff, const index_t* off,
                   const typename V::T* w, typename V::T* c, index_t ldc, index_t rows) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::width;
  reg acc[MR][NV];
  index_t o[MR];
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r) {
    o[r] = off[r];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  }
  for (index_t p = 0; p < kc; ++p) {
    const T* xp = x + koff[p];
    reg b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = V::load(w + (p * NV + v) * W);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      const reg a = V::broadcast(xp + o[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
    if (r < rows)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) V::store(c + r * ldc + v * W, V::add(V::load(c + r * ldc + v * W), acc[r][v]));
}

template <class T>
struct IndirectKernel {
  int MR, NR;  // lanes (pixels) and output channels of a tile
  void (*tile)(index_t, const T*, const index_t*, const index_t*, const T*, T*, index_t, index_t);
};

// Three shapes per ISA, 24 accumulators on AVX-512 (12 on AVX2, 8 portable): MR lanes × NV vectors
// with NV = 1, 2, 4. The widest that C_out/G fills reads each input the fewest times (once per
// K block for NV·width channels); narrow ones serve few channels (LeNet's 16 fill one vector).
#define FASTDL_INDIRECT_ENTRY(NAME, V, MR, NV, ATTR)                                                     \
  ATTR FASTDL_FLATTEN void NAME(index_t kc, const V::T* x, const index_t* koff, const index_t* off,      \
                                const V::T* w, V::T* c, index_t ldc, index_t rows) {                    \
    indirect_tile<V, MR, NV>(kc, x, koff, off, w, c, ldc, rows);                                       \
  }
#define FASTDL_INDIRECT_ENTRIES(NAME, V, MR1, MR2, MR4, ATTR)      \
  FASTDL_INDIRECT_ENTRY(NAME##_1, V, MR1, 1, ATTR)                 \
  FASTDL_INDIRECT_ENTRY(NAME##_2, V, MR2, 2, ATTR)                 \
  FASTDL_INDIRECT_ENTRY(NAME##_4, V, MR4, 4, ATTR)
FASTDL_INDIRECT_ENTRIES(indirect_avx512_f32, simd::Avx512F32, 24, 12, 6, FASTDL_TARGET_AVX512)
FASTDL_INDIRECT_ENTRIES(indirect_avx512_f64, simd::Avx512F64, 24, 12, 6, FASTDL_TARGET_AVX512)
FASTDL_INDIRECT_ENTRIES(indirect_avx2_f32, simd::Avx2F32, 12, 6, 3, FASTDL_TARGET_AVX2)
FASTDL_INDIRECT_ENTRIES(indirect_avx2_f64, simd::Avx2F64, 12, 6, 3, FASTDL_TARGET_AVX2)
FASTDL_INDIRECT_ENTRIES(indirect_portable_f32, simd::Portable<float>, 8, 4, 2, )
FASTDL_INDIRECT_ENTRIES(indirect_portable_f64, simd::Portable<double>, 8, 4, 2, )
#undef FASTDL_INDIRECT_ENTRIES
#undef FASTDL_INDIRECT_ENTRY

// The tile shape for `vectors` (1, 2 or 4) vectors of output channels, at a level no higher than
// the one in use.
template <class T>
IndirectKernel<T> indirect_kernel(int vectors, CpuCapability level) {
  constexpr bool f32 = sizeof(T) == 4;
  const int v = vectors >= 4 ? 2 : vectors - 1;  // index: 1 → 0, 2 → 1, 4 → 2
#define FASTDL_INDIRECT_TABLE(NAME, MR1, MR2, MR4, W)                                                          \
  {                                                                                                         \
    const IndirectKernel<T> table[3] = {{MR1, W, NAME##_1}, {MR2, 2 * W, NAME##_2}, {MR4, 4 * W, NAME##_4}}; \
    return table[v];                                                                                        \
  }
  switch (std::min(level, capability())) {
    case CpuCapability::avx512:
      if constexpr (f32) FASTDL_INDIRECT_TABLE(indirect_avx512_f32, 24, 12, 6, 16)
      else FASTDL_INDIRECT_TABLE(indirect_avx512_f64, 24, 12, 6, 8)
    case CpuCapability::avx2:
      if constexpr (f32) FASTDL_INDIRECT_TABLE(indirect_avx2_f32, 12, 6, 3, 8)
      else FASTDL_INDIRECT_TABLE(indirect_avx2_f64, 12, 6, 3, 4)
    default:
      if constexpr (f32) FASTDL_INDIRECT_TABLE(indirect_portable_f32, 8, 4, 2, 4)
      else FASTDL_INDIRECT_TABLE(indirect_portable_f64, 8, 4, 2, 2)
  }
#undef FASTDL_INDIRECT_TABLE
}

// The indirect tile for C_out/G channels: the shape (vectors, and on AVX-512 machines possibly the
// AVX2 width) that wastes the fewest lanes, the widest among equals. Half-width vectors count 1.5×:
// as fast per lane on AMD Zen 4, half as fast on Intel's two-FMA-unit cores.
struct TileChoice {
  int vectors;
  CpuCapability level;
  double waste;
};
template <class T>
TileChoice choose_tile(index_t Cog) {
  TileChoice best{0, capability(), 0};
  for (CpuCapability level : {capability(), CpuCapability::avx2}) {
    if (level > capability()) continue;
    const double width_cost = level < capability() ? 1.5 : 1.0;
    for (int v : {4, 2, 1}) {
      const double waste = double(round_up(Cog, indirect_kernel<T>(v, level).NR)) / Cog * width_cost;
      if (best.vectors == 0 || waste < best.waste) best = {v, level, waste};
    }
  }
  return best;
}

// ---- forward ----------------------------------------------------------------------------------

enum class Path { direct, gemm_1x1, implicit };

// Everything the forward engine decides before touching data; conv2d_forward_workspace reads it too.
struct ForwardPlan {
  Path path;
  bool pixels_on_m;  // implicit: tiles are pixels × channels (else channels × pixels, all packed)
  int vectors;       // pixels_on_m: vectors of output channels per indirect tile (1, 2 or 4) ...
  CpuCapability tile_level;  // ... at this level
  int R;             // lanes of a sliver: the indirect tile's MR (pixels_on_m) or the GEMM's NR
  index_t kblocks, KCb;
  index_t Cop;       // tile row length: C_out/G rounded up to whole tiles
  index_t Cog_gemm;  // channels on M: C_out/G rounded up to the GEMM's MR (packed weights)
  index_t PB, nblocks, tasks;
  int team;
};

template <class T>
ForwardPlan plan_forward(const Geo& g, int threads) {
  ForwardPlan f{};
  const index_t K = g.K(), Cog = g.cog(), NP = g.N * g.P();
  if (g.cig() == 1 || Cog == 1) {
    f.path = Path::direct;
    f.tasks = g.N * g.G;
    f.team = team_for(f.tasks, g.flops(), threads);
    return f;
  }
  if (g.KH == 1 && g.KW == 1 && g.pt == 0 && g.pl == 0 && (g.OH - 1) * g.sh < g.H && (g.OW - 1) * g.sw < g.W) {
    f.path = Path::gemm_1x1;
    f.tasks = g.N * g.G;
    f.team = team_for(f.tasks, g.flops(), threads);
    return f;
  }
  f.path = Path::implicit;
  const GemmBlocking b = gemm_blocking<T>();
  // Tile efficiency of each orientation. Pixels × channels tiles (indirect, reading x) pay a
  // transposing write-out, about one element move per K/8 multiply-adds; channels × pixels tiles
  // pack every im2col element, about one move per C_out/G/6. The widest indirect tile among the
  // least wasteful ones.
  const TileChoice tc = choose_tile<T>(Cog);
  f.vectors = tc.vectors;
  f.tile_level = tc.level;
  const double waste_n = tc.waste;
  const double waste_m = double(round_up(Cog, b.MR)) / Cog * (1.0 + 6.0 / Cog);
  f.pixels_on_m = waste_n * (1.0 + 8.0 / K) <= waste_m;
  const IndirectKernel<T> ik = indirect_kernel<T>(f.vectors, f.tile_level);
  f.R = f.pixels_on_m ? ik.MR : b.NR;
  f.kblocks = ceil_div(K, b.KC);
  f.KCb = ceil_div(K, f.kblocks);
  f.Cop = f.pixels_on_m ? round_up(Cog, ik.NR) : Cog;
  f.Cog_gemm = f.pixels_on_m ? 0 : round_up(Cog, b.MR);
  // Channels × pixels: the im2col panel of a block within 256 KB and its tile within 128 KB;
  // pixels × channels: the tile within 256 KB and the slab of input rows (about
  // C_in/G·(rows + halo)·W) within 384 KB, together in L2 next to the weights' K block.
  const index_t tile_limit = ((f.pixels_on_m ? 256 : 128) << 10) / sizeof(T) / f.Cop;
  const index_t slab_limit = (384 << 10) / sizeof(T) / g.cig() / (g.KH * g.dh + 1) * g.OW;
  const index_t panel_limit = (256 << 10) / sizeof(T) / f.KCb;
  const index_t block_limit = std::min(tile_limit, f.pixels_on_m ? slab_limit : panel_limit);
  index_t PB = std::max<index_t>(f.R, block_limit / f.R * f.R);
  // At least four blocks per thread where the pixels allow (balance under dynamic scheduling).
  PB = std::min(PB, std::max<index_t>(f.R, round_up(ceil_div(NP, 4 * index_t{threads}), f.R)));
  f.PB = PB;
  f.nblocks = ceil_div(NP, PB);
  f.tasks = g.G * f.nblocks;
  f.team = team_for(f.tasks, g.flops(), threads);
  return f;
}

template <class T>
void forward_direct(T* y, const T* x, const T* w, const T* bias, const Geo& g, const ForwardPlan& f) {
  const DirectKernels<T> dk = direct_kernels<T>();
  const index_t HW = g.H * g.W, P = g.P(), Cig = g.cig(), Cog = g.cog();
  const PaddedPlane pp = padded_plane(g, dk.width);
  const index_t plane = pp.Hp * pp.Wp;
  run_tasks(f.tasks, f.team, [&](index_t t) {  // one (image, group): its input planes padded once
    static thread_local AlignedBuffer<T> planes_buffer;
    const index_t n = t / g.G, gi = t % g.G;
    T* xp = planes_buffer.get(static_cast<std::size_t>(Cig * plane));
    for (index_t ci = 0; ci < Cig; ++ci) pad_plane(xp + ci * plane, x + (n * g.C_in + gi * Cig + ci) * HW, g, pp);
    for (index_t j = 0; j < Cog; ++j) {
      const index_t co = gi * Cog + j;
      dk.forward_plane(y + (n * g.C_out + co) * P, xp, plane, w + co * g.K(), bias ? bias[co] : T(0), g, pp);
    }
  });
}

// 1×1 unpadded: y_n = W · x_n per image and group, a plain GEMM; with a stride, x_n is first
// subsampled into a contiguous (C_in/G, OH·OW) buffer.
template <class T>
void forward_1x1(T* y, const T* x, const T* w, const T* bias, const Geo& g, const ForwardPlan& f) {
  const index_t P = g.P(), HW = g.H * g.W, Cig = g.cig(), Cog = g.cog();
  const bool dense = g.sh == 1 && g.sw == 1 && g.OH == g.H && g.OW == g.W;
  const auto image_group = [&](index_t t) {
    static thread_local AlignedBuffer<T> subsampled;
    const index_t n = t / g.G, gi = t % g.G;
    T* yn = y + (n * g.C_out + gi * Cog) * P;
    const T* xn = x + (n * g.C_in + gi * Cig) * HW;
    if (!dense) {
      T* xs = subsampled.get(static_cast<std::size_t>(Cig * P));
      for (index_t ci = 0; ci < Cig; ++ci)
        for (index_t oh = 0; oh < g.OH; ++oh) {
          const T* src = xn + ci * HW + oh * g.sh * g.W;
          T* dst = xs + ci * P + oh * g.OW;
          for (index_t ow = 0; ow < g.OW; ++ow) dst[ow] = src[ow * g.sw];
        }
      xn = xs;
    }
    if (bias)
      for (index_t co = 0; co < Cog; ++co) std::fill(yn + co * P, yn + (co + 1) * P, bias[gi * Cog + co]);
    gemm_strided<T>(Cog, P, Cig, T(1), w + gi * Cog * Cig, Cig, 1, xn, P, 1, bias ? T(1) : T(0), yn, P, 1);
  };
  // One product per thread when they share evenly; otherwise one after another, each multithreaded.
  if (f.team > 1 && (f.tasks % f.team == 0 || f.tasks >= 4 * f.team))
    run_tasks(f.tasks, f.team, image_group);
  else
    for (index_t t = 0; t < f.tasks; ++t) image_group(t);
}

// The input rows a block of output pixels [m0, m0 + pb) reads, per image: padded rows [pr0, pr1)
// (padded row = input row + pt) stacked in the slab from row `at`. Returns the slab's row count.
struct SlabSegment {
  index_t n, pr0, pr1, at;
};
index_t slab_segments(const Geo& g, index_t m0, index_t pb, std::vector<SlabSegment>* segments) {
  const index_t P = g.P();
  index_t rows = 0;
  if (segments) segments->clear();
  for (index_t m = m0; m < m0 + pb;) {
    const index_t n = m / P, q = m % P, len = std::min(m0 + pb - m, P - q);
    const index_t pr0 = (q / g.OW) * g.sh, pr1 = ((q + len - 1) / g.OW) * g.sh + (g.KH - 1) * g.dh + 1;
    if (segments) segments->push_back({n, pr0, pr1, rows});
    rows += pr1 - pr0;
    m += len;
  }
  return rows;
}

template <class T>
void forward_implicit(T* y, const T* x, const T* w, const T* bias, const Geo& g, const ForwardPlan& f) {
  const GemmBlocking b = gemm_blocking<T>();
  const index_t K = g.K(), Cog = g.cog(), P = g.P(), NP = g.N * P, HW = g.H * g.W;
  const IndirectKernel<T> ik = indirect_kernel<T>(f.vectors, f.tile_level);
  // The weights, packed once per call: in the GEMM micro-kernel's format per group and K block
  // (slivers that touch the padding, or every sliver when channels are on M), and for the indirect
  // tiles per group and NR-channel chunk as [k][NR].
  const index_t chunks = f.pixels_on_m ? f.Cop / ik.NR : 0;
  const index_t wg_block = f.Cog_gemm * b.KC;  // one K block of GEMM-packed weights (channels on M)
  AlignedBuffer<T> gemm_weights, tile_weights;
  T* Wg = f.pixels_on_m ? nullptr : gemm_weights.get(static_cast<std::size_t>(g.G * f.kblocks * wg_block));
  T* Wi = f.pixels_on_m ? tile_weights.get(static_cast<std::size_t>(g.G * K * f.Cop)) : nullptr;
  parallel_for(g.G * f.kblocks, 1, [&](index_t b0, index_t b1) {
    for (index_t blk = b0; blk < b1; ++blk) {
      const index_t gi = blk / f.kblocks, pc = (blk % f.kblocks) * f.KCb, kc = std::min(f.KCb, K - pc);
      const T* src = w + gi * Cog * K + pc;
      if (!f.pixels_on_m) gemm_pack_a<T>(Cog, kc, src, K, 1, Wg + blk * wg_block);
      for (index_t ch = 0; ch < chunks; ++ch) {
        const index_t c0 = ch * ik.NR, nr = std::min<index_t>(ik.NR, Cog - c0);
        T* d = Wi + ((gi * chunks + ch) * K + pc) * ik.NR;
        transpose(src + c0 * K, nr, kc, K, d, ik.NR);
        if (nr < ik.NR)
          for (index_t p = 0; p < kc; ++p) std::fill(d + p * ik.NR + nr, d + (p + 1) * ik.NR, T(0));
      }
    }
  });
  const SliverPacker<T> pack = im2col_packer<T>(f.R);
  // Offset of tap (kh, kw) from a lane's tap origin in a slab row of Wp columns.
  const index_t Wp = std::max(g.pl + g.W, (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1);
  std::vector<index_t> tap_off(static_cast<std::size_t>(g.taps()));
  for (index_t t = 0; t < g.taps(); ++t) tap_off[t] = (t / g.KW) * g.dh * Wp + (t % g.KW) * g.dw;
  const T* x_end = x + g.N * g.C_in * HW;
  run_tasks(f.tasks, f.team, [&](index_t t) {
    static thread_local AlignedBuffer<T> sliver_buffer, tile_buffer;
    static thread_local AlignedBuffer<index_t> lane_buffer, koff_buffer;
    // Offset of tap k = (ci·KH + kh)·KW + kw from a lane's tap origin in the slab.
    const auto koff_buffer_for = [&](index_t n) { return koff_buffer.get(static_cast<std::size_t>(n)); };
    const index_t gi = t / f.nblocks, m0 = (t % f.nblocks) * f.PB, pb = std::min(f.PB, NP - m0);
    T* tile = tile_buffer.get(static_cast<std::size_t>(f.PB * f.Cop));
    const T* xg = x + gi * g.cig() * HW;
    const T* bg = bias ? bias + gi * Cog : nullptr;
    if (!f.pixels_on_m) {
      // Channels × pixels: every sliver of im2col packed into L1 and multiplied at once.
      T* sliver = sliver_buffer.get(static_cast<std::size_t>(f.R * (f.KCb + 1)));
      for (index_t kb = 0; kb < f.kblocks; ++kb) {
        const index_t pc = kb * f.KCb, kc = std::min(f.KCb, K - pc);
        const T* wp = Wg + (gi * f.kblocks + kb) * wg_block;
        prefetch_block_input(xg, g, m0, pb, pc, kc);
        for (index_t s = 0; s < pb; s += f.R) {
          const index_t len = std::min<index_t>(f.R, pb - s);
          pack(sliver, f.R, m0 + s, len, pc, kc, xg, x, x_end, g);
          gemm_packed_block<T>(Cog, len, kc, T(1), wp, sliver, kb == 0 ? T(0) : T(1), tile + s, pb, 1);
        }
      }
      for (index_t r = 0; r < pb;) {  // tile[co·pb + r] → y rows, one image at a time
        const index_t m = m0 + r, n = m / P, q = m % P, len = std::min(pb - r, P - q);
        T* yb = y + (n * g.C_out + gi * Cog) * P + q;
        for (index_t co = 0; co < Cog; ++co) {
          const T* src = tile + co * pb + r;
          const T bv = bg ? bg[co] : T(0);
          T* yr = yb + co * P;
          for (index_t j = 0; j < len; ++j) yr[j] = src[j] + bv;
        }
        r += len;
      }
      return;
    }
    // Pixels × channels: the tile starts as the bias and every K block adds to it.
    for (index_t r = 0; r < pb; ++r) {
      T* row = tile + r * f.Cop;
      if (bg)
        std::copy(bg, bg + Cog, row);
      else
        std::fill(row, row + Cog, T(0));
    }
    // The input rows the block reads, zero-padded, as a small NCHW slab [ci][row][Wp]: the rows of
    // each image the block touches, one image after the other. Every lane then reads its taps from
    // the slab without a bounds check, row ends and padding included.
    static thread_local std::vector<SlabSegment> segments;
    const index_t rows = slab_segments(g, m0, pb, &segments);
    const index_t plane = rows * Wp;
    static thread_local AlignedBuffer<T> slab_buffer;
    T* slab = slab_buffer.get(static_cast<std::size_t>(g.cig() * plane + 1));
    for (index_t ci = 0; ci < g.cig(); ++ci)
      for (const SlabSegment& sg : segments)
        for (index_t pr = sg.pr0; pr < sg.pr1; ++pr) {
          T* __restrict dst = slab + ci * plane + (sg.at + pr - sg.pr0) * Wp;
          const index_t ih = pr - g.pt;
          if (ih < 0 || ih >= g.H) {
            std::fill(dst, dst + Wp, T(0));
            continue;
          }
          const T* __restrict src = xg + (sg.n * g.C_in + ci) * HW + ih * g.W - g.pl;
          const index_t c0 = std::max<index_t>(0, g.pl), c1 = std::min(Wp, g.pl + g.W);  // columns from x
          for (index_t c = 0; c < c0; ++c) dst[c] = T(0);
          for (index_t c = c0; c < c1; ++c) dst[c] = src[c];  // short rows: inline, not a memmove call
          for (index_t c = c1; c < Wp; ++c) dst[c] = T(0);
        }
    index_t* koff = koff_buffer_for(K);
    for (index_t ci = 0, k = 0; ci < g.cig(); ++ci)
      for (index_t t = 0; t < g.taps(); ++t, ++k) koff[k] = ci * plane + tap_off[t];
    // Lane offsets of each sliver, walking the block's pixels (lanes past it repeat its last pixel).
    const index_t slivers = ceil_div(pb, f.R);
    index_t* lanes = lane_buffer.get(static_cast<std::size_t>(slivers * f.R));
    {
      std::size_t seg = 0;
      index_t oh = (m0 % P) / g.OW, ow = m0 % g.OW;
      for (index_t i = 0; i < pb; ++i) {
        const SlabSegment& sg = segments[seg];
        lanes[i] = (sg.at + oh * g.sh - sg.pr0) * Wp + ow * g.sw;
        if (++ow == g.OW && ++oh == g.OH) oh = 0, ++seg;
        if (ow == g.OW) ow = 0;
      }
      for (index_t i = pb; i < slivers * f.R; ++i) lanes[i] = lanes[pb - 1];
    }
    for (index_t kb = 0; kb < f.kblocks; ++kb) {
      const index_t pc = kb * f.KCb, kc = std::min(f.KCb, K - pc);
      for (index_t s = 0; s < slivers; ++s) {
        const index_t r0 = s * f.R, len = std::min<index_t>(f.R, pb - r0);
        for (index_t ch = 0; ch < chunks; ++ch)
          ik.tile(kc, slab, koff + pc, lanes + s * f.R, Wi + ((gi * chunks + ch) * K + pc) * ik.NR,
                  tile + r0 * f.Cop + ch * ik.NR, f.Cop, len);
      }
    }
    for (index_t r = 0; r < pb;) {  // tile[r·Cop + co] → y (transposed), one image at a time
      const index_t m = m0 + r, n = m / P, q = m % P, len = std::min(pb - r, P - q);
      transpose(tile + r * f.Cop, len, Cog, f.Cop, y + (n * g.C_out + gi * Cog) * P + q, P);
      r += len;
    }
  });
}

template <class T>
void forward_any(T* y, const T* x, const T* w, const T* bias, const Geo& g) {
  if (g.N == 0) return;
  const ForwardPlan f = plan_forward<T>(g, available_threads());
  switch (f.path) {
    case Path::direct: forward_direct(y, x, w, bias, g, f); break;
    case Path::gemm_1x1: forward_1x1(y, x, w, bias, g, f); break;
    case Path::implicit: forward_implicit(y, x, w, bias, g, f); break;
  }
}

// ---- backward-input ---------------------------------------------------------------------------

// Stride 1: dx is the convolution of dy with w flipped in space and transposed in channels,
// wf[g·C_in/G + ci, co, kh, kw] = w[g·C_out/G + co, ci, KH−1−kh, KW−1−kw], padded by d·(K−1) − p.
template <class T>
void backward_input_flipped(T* dx, const T* dy, const T* w, const Geo& g) {
  const index_t Cig = g.cig(), Cog = g.cog(), taps = g.taps();
  AlignedBuffer<T> flipped_buffer;
  T* wf = flipped_buffer.get(static_cast<std::size_t>(g.C_out * g.K()));
  for (index_t gi = 0; gi < g.G; ++gi)
    for (index_t co = 0; co < Cog; ++co)
      for (index_t ci = 0; ci < Cig; ++ci) {
        const T* src = w + ((gi * Cog + co) * Cig + ci) * taps;
        T* dst = wf + ((gi * Cig + ci) * Cog + co) * taps;
        for (index_t t = 0; t < taps; ++t) dst[t] = src[taps - 1 - t];
      }
  const Geo f{g.N,  g.C_out, g.OH, g.OW, g.C_in, g.KH, g.KW, g.H, g.W, 1, 1, g.dh * (g.KH - 1) - g.pt,
              g.dw * (g.KW - 1) - g.pl, g.dh, g.dw, g.G};
  forward_any(dx, dy, wf, static_cast<const T*>(nullptr), f);
}

// dx[n, ci, ih, iw] += v for every tap (kh, kw) that output pixel (oh, ow..ow+len) of row k reads.
template <class T>
inline void scatter_row(T* dxc, const T* v, index_t len, index_t oh, index_t ow, index_t kh, index_t kw,
                        const Geo& g) {
  const index_t ih = oh * g.sh - g.pt + kh * g.dh;
  if (ih < 0 || ih >= g.H) return;
  const index_t iw0 = ow * g.sw - g.pl + kw * g.dw;
  const index_t lo = first_inside(iw0, g.sw, len), hi = end_inside(iw0, g.sw, g.W, len);
  T* row = dxc + ih * g.W + iw0;
  if (g.sw == 1) {
    for (index_t j = lo; j < hi; ++j) row[j] += v[j];
  } else {
    for (index_t j = lo; j < hi; ++j) row[j * g.sw] += v[j];
  }
}

// C_in/G and C_out/G ≥ 2 (stride > 1, or stride 1 where the flipped convolution would waste more):
// per pixel block dcol (rows k of a channel range × pixels) = Wᵀ · dy, then col2im adds each row
// into dx. Tasks own (image, group, channel range), so no two
// threads add into the same dx element.
template <class T>
void backward_input_col2im(T* dx, const T* dy, const T* w, const Geo& g) {
  const GemmBlocking b = gemm_blocking<T>();
  const index_t Cig = g.cig(), Cog = g.cog(), K = g.K(), taps = g.taps(), P = g.P(), HW = g.H * g.W;
  const int threads = available_threads();
  const index_t parts = parts_for_balance(g.N * g.G, threads, Cig);
  const index_t tasks = g.N * g.G * parts;
  const index_t kblocks = ceil_div(Cog, b.KC), KCb = ceil_div(Cog, kblocks);
  const index_t rows_max = ceil_div(Cig, parts) * taps;
  const index_t PB = std::max<index_t>(b.NR, (256 << 10) / sizeof(T) / rows_max / b.NR * b.NR);
  run_tasks(tasks, team_for(tasks, g.flops(), threads), [&](index_t t) {
    static thread_local AlignedBuffer<T> a_buffer, b_buffer, col_buffer;
    static thread_local std::vector<Run> run_buffer;
    const index_t n = t / (g.G * parts), gi = (t / parts) % g.G, part = t % parts;
    const index_t c0 = std::min(Cig, part * ceil_div(Cig, parts)), c1 = std::min(Cig, c0 + ceil_div(Cig, parts));
    if (c0 >= c1) return;
    const index_t rows = (c1 - c0) * taps;
    T* dxg = dx + (n * g.C_in + gi * Cig) * HW;
    std::fill(dxg + c0 * HW, dxg + c1 * HW, T(0));
    const index_t a_block = round_up(rows, b.MR) * b.KC;  // one K block of packed Wᵀ rows
    T* Ap = a_buffer.get(static_cast<std::size_t>(kblocks * a_block));
    T* Bp = b_buffer.get(static_cast<std::size_t>(round_up(PB, b.NR) * KCb));
    T* col = col_buffer.get(static_cast<std::size_t>(rows * PB));
    run_buffer.resize(static_cast<std::size_t>(std::min(PB, P) + 2));
    Run* runs = run_buffer.data();
    const T* wg = w + gi * Cog * K;
    for (index_t kb = 0; kb < kblocks; ++kb) {
      const index_t pc = kb * KCb, kc = std::min(KCb, Cog - pc);
      gemm_pack_a<T>(rows, kc, wg + pc * K + c0 * taps, 1, K, Ap + kb * a_block);
    }
    const T* dyg = dy + (n * g.C_out + gi * Cog) * P;
    for (index_t q0 = 0; q0 < P; q0 += PB) {
      const index_t pb = std::min(PB, P - q0);
      for (index_t kb = 0; kb < kblocks; ++kb) {
        const index_t pc = kb * KCb, kc = std::min(KCb, Cog - pc);
        gemm_pack_b<T>(kc, pb, dyg + pc * P + q0, P, 1, Bp);
        gemm_packed_block<T>(rows, pb, kc, T(1), Ap + kb * a_block, Bp, kb == 0 ? T(0) : T(1), col, pb, 1);
      }
      // The block's pixels as runs along output rows, then every row k of dcol added into dx.
      index_t nruns = 0;
      for (index_t r = 0, oh = q0 / g.OW, ow = q0 % g.OW; r < pb; ++oh, ow = 0) {
        const index_t len = std::min(pb - r, g.OW - ow);
        runs[nruns++] = {r, len, 0, oh, ow};
        r += len;
      }
      for (index_t k = 0, ci = c0, kh = 0, kw = 0; k < rows; ++k) {
        T* dxc = dxg + ci * HW;
        const T* v = col + k * pb;
        for (index_t i = 0; i < nruns; ++i) {
          const Run& run = runs[i];
          const index_t ih = run.oh * g.sh - g.pt + kh * g.dh;
          if (ih < 0 || ih >= g.H) continue;
          const index_t iw0 = run.ow * g.sw - g.pl + kw * g.dw;
          if (g.sw == 1) {
            const index_t lo = std::clamp<index_t>(-iw0, 0, run.len), hi = std::clamp<index_t>(g.W - iw0, lo, run.len);
            T* __restrict row = dxc + ih * g.W + iw0;
            const T* __restrict src = v + run.r0;
            for (index_t j = lo; j < hi; ++j) row[j] += src[j];
          } else {
            scatter_row(dxc, v + run.r0, run.len, run.oh, run.ow, kh, kw, g);
          }
        }
        if (++kw == g.KW) {
          kw = 0;
          if (++kh == g.KH) kh = 0, ++ci;
        }
      }
    }
  });
}

// Stride > 1 with C_in/G == 1 or C_out/G == 1: the scatter form directly; tasks own (image, group).
template <class T>
void backward_input_direct(T* dx, const T* dy, const T* w, const Geo& g) {
  const index_t Cig = g.cig(), Cog = g.cog(), taps = g.taps(), P = g.P(), HW = g.H * g.W;
  const index_t tasks = g.N * g.G;
  run_tasks(tasks, team_for(tasks, g.flops(), available_threads()), [&](index_t t) {
    const index_t n = t / g.G, gi = t % g.G;
    T* dxg = dx + (n * g.C_in + gi * Cig) * HW;
    std::fill(dxg, dxg + Cig * HW, T(0));
    for (index_t co = 0; co < Cog; ++co) {
      const T* dyp = dy + (n * g.C_out + gi * Cog + co) * P;
      for (index_t ci = 0; ci < Cig; ++ci) {
        const T* wc = w + ((gi * Cog + co) * Cig + ci) * taps;
        for (index_t oh = 0; oh < g.OH; ++oh)
          for (index_t kh = 0; kh < g.KH; ++kh) {
            const index_t ih = oh * g.sh - g.pt + kh * g.dh;
            if (ih < 0 || ih >= g.H) continue;
            T* row = dxg + ci * HW + ih * g.W;
            const T* dyr = dyp + oh * g.OW;
            for (index_t kw = 0; kw < g.KW; ++kw) {
              const T wv = wc[kh * g.KW + kw];
              const index_t a = kw * g.dw - g.pl;
              const index_t lo = first_inside(a, g.sw, g.OW), hi = end_inside(a, g.sw, g.W, g.OW);
              for (index_t ow = lo; ow < hi; ++ow) row[ow * g.sw + a] += wv * dyr[ow];
            }
          }
      }
    }
  });
}

template <class T>
void backward_input_any(T* dx, const T* dy, const T* w, const Geo& g) {
  if (g.N == 0) return;
  const bool thin = g.cig() == 1 || g.cog() == 1;
  if (g.sh == 1 && g.sw == 1 && !thin) {
    // The flipped convolution computes every tap of every dx pixel, the useful ones being about
    // OH·OW/(H·W) of them (a 'valid' 5×5 on 14×14 does twice the work), on tiles of C_in/G
    // channels; col2im does exactly the useful work in a GEMM with K = C_out/G but then adds each
    // product into dx, about two cycles an element against C_out/G/16 for its multiply-adds.
    const double useful = double(g.OH * g.OW) / double(g.H * g.W);
    const double flipped = choose_tile<T>(g.cig()).waste / std::min(1.0, useful);
    const double col2im = 1.0 + 32.0 / g.cog();
    if (flipped <= col2im)
      backward_input_flipped(dx, dy, w, g);
    else
      backward_input_col2im(dx, dy, w, g);
  } else if (g.sh == 1 && g.sw == 1) {
    backward_input_flipped(dx, dy, w, g);  // the direct kernel, on the flipped weights
  } else if (thin) {
    backward_input_direct(dx, dy, w, g);
  } else {
    backward_input_col2im(dx, dy, w, g);
  }
}

// ---- backward-weight --------------------------------------------------------------------------

// dWᵀ (K' = KH·KW·C_in/G rows in (kh, kw, ci) order × C_out/G) += im2col · dyᵀ over the pixels of
// each task (image, group, band of output rows), with the indirect tiles: the lanes are rows k'
// (offsets into a zero-padded NHWC slab of the band's input rows), the reduction runs over the
// pixels (their tap origins in the slab) and the channels come from dy transposed into [pixel][NR]
// slivers. One accumulator per thread, summed at the end into dw's (C_out, C_in/G, KH, KW) order.
template <class T>
void backward_weight_gemm(T* dw, const T* dy, const T* x, const Geo& g) {
  const GemmBlocking b = gemm_blocking<T>();
  const index_t C = g.cig(), Cog = g.cog(), K = g.K(), P = g.P(), HW = g.H * g.W;
  const TileChoice tc = choose_tile<T>(Cog);
  const IndirectKernel<T> ik = indirect_kernel<T>(tc.vectors, tc.level);
  const index_t Cop = round_up(Cog, ik.NR), chunks = Cop / ik.NR, slivers = ceil_div(K, ik.MR);
  const index_t Wp = std::max(g.pl + g.W, (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1);
  // Lane offsets of the rows k' in the slab, relative to a pixel's tap origin (padded to whole slivers).
  AlignedBuffer<index_t> row_buffer;
  index_t* row_off = row_buffer.get(static_cast<std::size_t>(slivers * ik.MR));
  for (index_t k = 0; k < slivers * ik.MR; ++k) {
    const index_t kk = std::min(k, K - 1), tap = kk / C, ci = kk % C;
    row_off[k] = ((tap / g.KW) * g.dh * Wp + (tap % g.KW) * g.dw) * C + ci;
  }
  const int threads = available_threads();
  const index_t bands = parts_for_balance(g.N * g.G, threads, g.OH);
  const index_t tasks = g.N * g.G * bands;
  const int team = team_for(tasks, g.flops(), threads);
  const index_t KCp = b.KC;  // pixels per reduction block
  const std::size_t per_thread = static_cast<std::size_t>(g.G * K * Cop);
  AlignedBuffer<T> acc_buffer;
  T* acc = acc_buffer.get(per_thread * team);
  std::fill(acc, acc + per_thread * team, T(0));
  const index_t band_rows = ceil_div(g.OH, bands);
  run_accumulating_tasks(tasks, team, [&](index_t t) {
    static thread_local AlignedBuffer<T> slab_buffer, b_buffer;
    static thread_local AlignedBuffer<index_t> pixel_buffer;
    const index_t n = t / (g.G * bands), gi = (t / bands) % g.G, band = t % bands;
    const index_t oh0 = std::min(g.OH, band * band_rows), oh1 = std::min(g.OH, oh0 + band_rows);
    if (oh0 >= oh1) return;
    T* Cacc = acc + per_thread * (team > 1 ? omp_get_thread_num() : 0) + gi * K * Cop;
    // The padded input rows [pr0, pr1) the band reads (padded row = input row + pt), as NHWC.
    const index_t pr0 = oh0 * g.sh, pr1 = (oh1 - 1) * g.sh + (g.KH - 1) * g.dh + 1;
    const index_t rowlen = Wp * C;
    T* slab = slab_buffer.get(static_cast<std::size_t>((pr1 - pr0) * rowlen));
    const T* xg = x + (n * g.C_in + gi * C) * HW;
    for (index_t pr = pr0; pr < pr1; ++pr) {
      T* row = slab + (pr - pr0) * rowlen;
      const index_t ih = pr - g.pt;
      if (ih < 0 || ih >= g.H) {
        std::fill(row, row + rowlen, T(0));
        continue;
      }
      const index_t c0 = std::max<index_t>(0, g.pl), c1 = std::min(Wp, g.pl + g.W);  // columns from x
      std::fill(row, row + c0 * C, T(0));
      transpose(xg + ih * g.W + (c0 - g.pl), C, c1 - c0, HW, row + c0 * C, C);  // (C, W) → (W, C)
      std::fill(row + c1 * C, row + rowlen, T(0));
    }
    T* Bp = b_buffer.get(static_cast<std::size_t>(KCp * Cop));
    index_t* pix = pixel_buffer.get(static_cast<std::size_t>(KCp));
    const T* dyg = dy + (n * g.C_out + gi * Cog) * P;
    for (index_t q0 = oh0 * g.OW; q0 < oh1 * g.OW; q0 += KCp) {
      const index_t kc = std::min(KCp, oh1 * g.OW - q0);
      for (index_t p = 0; p < kc; ++p) {
        const index_t q = q0 + p;
        pix[p] = ((q / g.OW) * g.sh - pr0) * rowlen + (q % g.OW) * g.sw * C;
      }
      // dy (channels × pixels) → [pixel][NR] per chunk of NR channels, zero-padded.
      for (index_t ch = 0; ch < chunks; ++ch) {
        const index_t c0 = ch * ik.NR, nr = std::min<index_t>(ik.NR, Cog - c0);
        T* sliver = Bp + ch * kc * ik.NR;
        transpose(dyg + c0 * P + q0, nr, kc, P, sliver, ik.NR);
        if (nr < ik.NR)
          for (index_t p = 0; p < kc; ++p) std::fill(sliver + p * ik.NR + nr, sliver + (p + 1) * ik.NR, T(0));
      }
      for (index_t s = 0; s < slivers; ++s)
        for (index_t ch = 0; ch < chunks; ++ch)
          ik.tile(kc, slab, pix, row_off + s * ik.MR, Bp + ch * kc * ik.NR, Cacc + s * ik.MR * Cop + ch * ik.NR,
                  Cop, std::min<index_t>(ik.MR, K - s * ik.MR));
    }
  });
  parallel_for(g.C_out, 1, [&](index_t c0, index_t c1) {
    for (index_t co = c0; co < c1; ++co) {
      const index_t gi = co / Cog, j = co % Cog;
      for (index_t ci = 0; ci < C; ++ci)
        for (index_t tap = 0; tap < g.taps(); ++tap) {
          const std::size_t at = static_cast<std::size_t>(gi * K * Cop + (tap * C + ci) * Cop + j);
          T sum = 0;
          for (int th = 0; th < team; ++th) sum += acc[per_thread * th + at];
          dw[(co * C + ci) * g.taps() + tap] = sum;
        }
    }
  });
}

template <class T>
void backward_weight_direct(T* dw, const T* dy, const T* x, const Geo& g) {
  const DirectKernels<T> dk = direct_kernels<T>();
  const index_t Cig = g.cig(), HW = g.H * g.W, P = g.P(), tasks = g.C_out * Cig;
  const PaddedPlane pp = padded_plane(g, dk.width);
  const index_t OWp = round_up(g.OW, dk.width);
  run_tasks(tasks, team_for(tasks, g.flops(), available_threads()), [&](index_t t) {  // one (co, ci) pair
    static thread_local AlignedBuffer<T> x_buffer, dy_buffer;
    const index_t co = t / Cig, ci = t % Cig, gi = co / g.cog();
    T* xp = x_buffer.get(static_cast<std::size_t>(pp.Hp * pp.Wp));
    T* dyp = dy_buffer.get(static_cast<std::size_t>(g.OH * OWp));
    T* acc = dw + t * g.taps();
    std::fill(acc, acc + g.taps(), T(0));
    for (index_t n = 0; n < g.N; ++n) {
      pad_plane(xp, x + (n * g.C_in + gi * Cig + ci) * HW, g, pp);
      const T* src = dy + (n * g.C_out + co) * P;
      for (index_t oh = 0; oh < g.OH; ++oh) {
        std::copy(src + oh * g.OW, src + (oh + 1) * g.OW, dyp + oh * OWp);
        std::fill(dyp + oh * OWp + g.OW, dyp + (oh + 1) * OWp, T(0));
      }
      dk.weight_plane(acc, dyp, OWp, xp, g, pp);
    }
  });
}

// ---- checks -----------------------------------------------------------------------------------

index_t conv_out_size(index_t in, index_t pad_sum, index_t dilation, index_t kernel, index_t stride) {
  const index_t span = in + pad_sum - dilation * (kernel - 1) - 1;
  return span < 0 ? 0 : span / stride + 1;
}

// The shape is checked before any memory is touched; `exact_input`: H, W must give exactly OH, OW
// (forward), else at least (the backward passes, which conv_transpose2d with output_padding runs
// on inputs one row or column longer than the outputs need).
void check_conv(const Conv2dShape& s, const char* op, bool exact_input) {
  const auto describe = [&] {
    std::ostringstream os;
    os << "input (" << s.N << ", " << s.C_in << ", " << s.H << ", " << s.W << "), weight (" << s.C_out << ", "
       << (s.groups > 0 ? s.C_in / s.groups : 0) << ", " << s.KH << ", " << s.KW << "), output (" << s.N << ", "
       << s.C_out << ", " << s.OH << ", " << s.OW << "), stride (" << s.stride_h << ", " << s.stride_w
       << "), padding (" << s.pad_top << ", " << s.pad_left << ", " << s.pad_bottom << ", " << s.pad_right
       << "), dilation (" << s.dilation_h << ", " << s.dilation_w << "), groups " << s.groups;
    return os.str();
  };
  FASTDL_CHECK(s.N >= 0 && s.C_in >= 1 && s.H >= 1 && s.W >= 1 && s.C_out >= 1 && s.KH >= 1 && s.KW >= 1 &&
                   s.OH >= 1 && s.OW >= 1,
               op, ": sizes must be positive: ", describe());
  FASTDL_CHECK(s.stride_h >= 1 && s.stride_w >= 1 && s.dilation_h >= 1 && s.dilation_w >= 1, op,
               ": stride and dilation must be >= 1: ", describe());
  FASTDL_CHECK(s.pad_top >= 0 && s.pad_left >= 0 && s.pad_bottom >= 0 && s.pad_right >= 0, op,
               ": padding must be >= 0: ", describe());
  FASTDL_CHECK(s.groups >= 1 && s.C_in % s.groups == 0 && s.C_out % s.groups == 0, op,
               ": groups must divide the input and output channels: ", describe());
  const index_t oh = conv_out_size(s.H, s.pad_top + s.pad_bottom, s.dilation_h, s.KH, s.stride_h);
  const index_t ow = conv_out_size(s.W, s.pad_left + s.pad_right, s.dilation_w, s.KW, s.stride_w);
  FASTDL_CHECK(oh >= 1 && ow >= 1, op, ": the kernel is larger than the padded input: ", describe());
  if (exact_input)
    FASTDL_CHECK(oh == s.OH && ow == s.OW, op, ": output must be (", oh, ", ", ow, ") for ", describe());
  else
    FASTDL_CHECK(oh >= s.OH && ow >= s.OW, op, ": input (", s.H, ", ", s.W, ") is too small for ", describe());
}

// ---- pooling ----------------------------------------------------------------------------------

index_t pool_out_size(index_t in, index_t pad, index_t dilation, index_t kernel, index_t stride, bool ceil_mode) {
  const index_t span = in + 2 * pad - dilation * (kernel - 1) - 1;
  if (span < 0) return 0;
  index_t out = (span + (ceil_mode ? stride - 1 : 0)) / stride + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) --out;  // the last window must start inside
  return out;
}

void check_pool(const Pool2dShape& s, const char* op) {
  const auto describe = [&] {
    std::ostringstream os;
    os << "input (" << s.N << ", " << s.C << ", " << s.H << ", " << s.W << "), output (" << s.OH << ", " << s.OW
       << "), kernel (" << s.KH << ", " << s.KW << "), stride (" << s.stride_h << ", " << s.stride_w
       << "), padding (" << s.pad_h << ", " << s.pad_w << "), dilation (" << s.dilation_h << ", " << s.dilation_w
       << ")";
    return os.str();
  };
  FASTDL_CHECK(s.N >= 0 && s.C >= 1 && s.H >= 1 && s.W >= 1 && s.KH >= 1 && s.KW >= 1 && s.OH >= 1 && s.OW >= 1,
               op, ": sizes must be positive: ", describe());
  FASTDL_CHECK(s.stride_h >= 1 && s.stride_w >= 1 && s.dilation_h >= 1 && s.dilation_w >= 1, op,
               ": stride and dilation must be >= 1: ", describe());
  FASTDL_CHECK(s.pad_h >= 0 && s.pad_w >= 0 && 2 * s.pad_h <= s.dilation_h * (s.KH - 1) + 1 &&
                   2 * s.pad_w <= s.dilation_w * (s.KW - 1) + 1,
               op, ": padding must be between 0 and half the (dilated) kernel: ", describe());
  bool ok = false;
  for (bool ceil_mode : {false, true})
    ok = ok || (pool_out_size(s.H, s.pad_h, s.dilation_h, s.KH, s.stride_h, ceil_mode) == s.OH &&
                pool_out_size(s.W, s.pad_w, s.dilation_w, s.KW, s.stride_w, ceil_mode) == s.OW);
  FASTDL_CHECK(ok, op, ": output size does not follow from ", describe());
}

// Window of output (oh, ow) of avg_pool2d, clipped as PyTorch clips it, and its divisor.
struct AvgWindow {
  index_t h0, h1, w0, w1;
  index_t divisor;
};
inline AvgWindow avg_window(const Pool2dShape& s, index_t oh, index_t ow, bool count_include_pad, index_t divisor) {
  index_t h0 = oh * s.stride_h - s.pad_h, w0 = ow * s.stride_w - s.pad_w;
  index_t h1 = std::min(h0 + s.KH, s.H + s.pad_h), w1 = std::min(w0 + s.KW, s.W + s.pad_w);
  const index_t padded = (h1 - h0) * (w1 - w0);
  h0 = std::max<index_t>(h0, 0), w0 = std::max<index_t>(w0, 0);
  h1 = std::min(h1, s.H), w1 = std::min(w1, s.W);
  const index_t inside = std::max<index_t>(0, h1 - h0) * std::max<index_t>(0, w1 - w0);
  return {h0, h1, w0, w1, divisor > 0 ? divisor : count_include_pad ? padded : inside};
}

inline index_t adaptive_start(index_t i, index_t in, index_t out) { return (i * in) / out; }
inline index_t adaptive_end(index_t i, index_t in, index_t out) { return ((i + 1) * in + out - 1) / out; }

void check_adaptive(index_t N, index_t C, index_t H, index_t W, index_t OH, index_t OW, const char* op) {
  FASTDL_CHECK(N >= 0 && C >= 1 && H >= 1 && W >= 1 && OH >= 1 && OW >= 1, op,
               ": sizes must be positive: input (", N, ", ", C, ", ", H, ", ", W, "), output (", OH, ", ", OW, ")");
}

// Pooling work is a few operations per element: a thread per ~64 K of them.
constexpr index_t kPoolGrain = 1 << 16;

index_t planes_grain(index_t plane_elements) { return std::max<index_t>(1, kPoolGrain / std::max<index_t>(1, plane_elements)); }

}  // namespace

// ---- entry points -----------------------------------------------------------------------------

template <class T>
void conv2d_forward(T* y, const T* x, const T* w, const T* bias, const Conv2dShape& s) {
  check_conv(s, "conv2d", true);
  forward_any(y, x, w, bias, geo_of(s));
}

template <class T>
void conv2d_backward_input(T* dx, const T* dy, const T* w, const Conv2dShape& s) {
  check_conv(s, "conv2d_backward_input", false);
  backward_input_any(dx, dy, w, geo_of(s));
}

template <class T>
void conv2d_backward_weight(T* dw, T* dbias, const T* dy, const T* x, const Conv2dShape& s) {
  check_conv(s, "conv2d_backward_weight", false);
  const Geo g = geo_of(s);
  if (g.N == 0) {
    std::fill(dw, dw + g.C_out * g.K(), T(0));
    if (dbias) std::fill(dbias, dbias + g.C_out, T(0));
    return;
  }
  if (g.cig() == 1 || g.cog() == 1)
    backward_weight_direct(dw, dy, x, g);
  else
    backward_weight_gemm(dw, dy, x, g);
  if (dbias) {
    const DirectKernels<T> dk = direct_kernels<T>();
    parallel_for(g.C_out, planes_grain(g.N * g.P()),
                 [&](index_t c0, index_t c1) { dk.channel_sums(dbias, dy, g.N, g.C_out, g.P(), c0, c1); });
  }
}

template <class T>
std::size_t conv2d_forward_workspace(const Conv2dShape& s, int threads) {
  check_conv(s, "conv2d", true);
  FASTDL_CHECK(threads >= 1, "conv2d: threads must be >= 1, got ", threads);
  const Geo g = geo_of(s);
  const ForwardPlan f = plan_forward<T>(g, threads);
  if (f.path != Path::implicit) return 0;
  const index_t NP = g.N * g.P();
  if (!f.pixels_on_m) {
    const std::size_t weights = static_cast<std::size_t>(g.G * f.kblocks * f.Cog_gemm * gemm_blocking<T>().KC);
    const std::size_t per_thread = static_cast<std::size_t>(f.R * (f.KCb + 1) + f.PB * f.Cop);
    return (weights + per_thread * f.team) * sizeof(T);
  }
  // The largest slab of any block (blocks differ only in where they start in the images).
  index_t rows = 0;
  for (index_t m0 = 0; m0 < NP && m0 < f.PB * std::max<index_t>(1, g.P()); m0 += f.PB)
    rows = std::max(rows, slab_segments(g, m0, std::min(f.PB, NP - m0), nullptr));
  const index_t Wp = std::max(g.pl + g.W, (g.OW - 1) * g.sw + (g.KW - 1) * g.dw + 1);
  const std::size_t weights = static_cast<std::size_t>(g.G * g.K() * f.Cop) * sizeof(T);
  const std::size_t per_thread = static_cast<std::size_t>(f.PB * f.Cop + g.cig() * rows * Wp + 1) * sizeof(T) +
                                 static_cast<std::size_t>(ceil_div(f.PB, f.R) * f.R + g.K()) * sizeof(index_t);
  return weights + per_thread * f.team + static_cast<std::size_t>(g.taps()) * sizeof(index_t);
}

template <class T>
void max_pool2d_forward(T* y, std::int64_t* indices, const T* x, const Pool2dShape& s) {
  check_pool(s, "max_pool2d");
  const index_t HW = s.H * s.W, OP = s.OH * s.OW;
  // Every window inside the plane (no padding, and ceil_mode adding no partial window: the usual
  // case): one pass per tap over a whole output row, with no bound checks and no branches, so the
  // compiler if-converts and vectorises it (as branches, the data-dependent comparisons mispredict
  // about every other time: 700 µs instead of 90 for LeNet's first pooling at batch 32).
  const bool inside = s.pad_h == 0 && s.pad_w == 0 && (s.OH - 1) * s.stride_h + (s.KH - 1) * s.dilation_h < s.H &&
                      (s.OW - 1) * s.stride_w + (s.KW - 1) * s.dilation_w < s.W;
  if (inside && HW < (index_t{1} << 31)) {
    parallel_for(s.N * s.C, planes_grain(OP * s.KH * s.KW), [&](index_t p0, index_t p1) {
      static thread_local AlignedBuffer<std::int32_t> at_buffer;
      std::int32_t* at = at_buffer.get(static_cast<std::size_t>(s.OW));
      const index_t sw = s.stride_w, OW = s.OW;
      for (index_t p = p0; p < p1; ++p) {
        const T* xp = x + p * HW;
        for (index_t oh = 0; oh < s.OH; ++oh) {
          T* best = y + p * OP + oh * OW;
          for (index_t kh = 0; kh < s.KH; ++kh)
            for (index_t kw = 0; kw < s.KW; ++kw) {
              const auto first = static_cast<std::int32_t>((oh * s.stride_h + kh * s.dilation_h) * s.W + kw * s.dilation_w);
              const T* src = xp + first;
              if (kh == 0 && kw == 0) {
                for (index_t ow = 0; ow < OW; ++ow) best[ow] = src[ow * sw], at[ow] = first + static_cast<std::int32_t>(ow * sw);
                continue;
              }
              for (index_t ow = 0; ow < OW; ++ow) {
                const T v = src[ow * sw];
                const bool take = v > best[ow] || v != v;  // NaN wins, as in PyTorch
                best[ow] = take ? v : best[ow];
                at[ow] = take ? first + static_cast<std::int32_t>(ow * sw) : at[ow];
              }
            }
          if (indices)
            for (index_t ow = 0; ow < OW; ++ow) indices[p * OP + oh * OW + ow] = at[ow];
        }
      }
    });
    return;
  }
  parallel_for(s.N * s.C, planes_grain(OP * s.KH * s.KW), [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      const T* xp = x + p * HW;
      for (index_t oh = 0; oh < s.OH; ++oh)
        for (index_t ow = 0; ow < s.OW; ++ow) {
          const index_t h0 = oh * s.stride_h - s.pad_h, w0 = ow * s.stride_w - s.pad_w;
          T best = -std::numeric_limits<T>::infinity();
          index_t at = -1;
          for (index_t kh = 0; kh < s.KH; ++kh) {
            const index_t ih = h0 + kh * s.dilation_h;
            if (ih < 0 || ih >= s.H) continue;
            for (index_t kw = 0; kw < s.KW; ++kw) {
              const index_t iw = w0 + kw * s.dilation_w;
              if (iw < 0 || iw >= s.W) continue;
              const T v = xp[ih * s.W + iw];
              if (v > best || std::isnan(v) || at < 0) best = v, at = ih * s.W + iw;
            }
          }
          y[p * OP + oh * s.OW + ow] = best;
          if (indices) indices[p * OP + oh * s.OW + ow] = at;
        }
    }
  });
}

template <class T>
void max_pool2d_backward(T* dx, const T* dy, const std::int64_t* indices, const Pool2dShape& s) {
  check_pool(s, "max_pool2d_backward");
  const index_t HW = s.H * s.W, OP = s.OH * s.OW, total = s.N * s.C * OP;
  index_t bad = -1;
  for (index_t i = 0; i < total && bad < 0; ++i)
    if (indices[i] < 0 || indices[i] >= HW) bad = i;
  FASTDL_CHECK(bad < 0, "max_pool2d_backward: index ", bad < 0 ? 0 : indices[bad], " at position ", bad,
               " is outside the input plane (", s.H, ", ", s.W, ")");
  parallel_for(s.N * s.C, planes_grain(HW + OP), [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      T* dxp = dx + p * HW;
      std::fill(dxp, dxp + HW, T(0));
      for (index_t o = 0; o < OP; ++o) dxp[indices[p * OP + o]] += dy[p * OP + o];
    }
  });
}

template <class T>
void avg_pool2d_forward(T* y, const T* x, const Pool2dShape& s, bool count_include_pad, index_t divisor) {
  check_pool(s, "avg_pool2d");
  FASTDL_CHECK(s.dilation_h == 1 && s.dilation_w == 1 && divisor >= 0, "avg_pool2d: dilation must be 1 and divisor >= 0");
  const index_t HW = s.H * s.W, OP = s.OH * s.OW;
  parallel_for(s.N * s.C, planes_grain(OP * s.KH * s.KW), [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      const T* xp = x + p * HW;
      for (index_t oh = 0; oh < s.OH; ++oh)
        for (index_t ow = 0; ow < s.OW; ++ow) {
          const AvgWindow a = avg_window(s, oh, ow, count_include_pad, divisor);
          T sum = 0;
          for (index_t ih = a.h0; ih < a.h1; ++ih)
            for (index_t iw = a.w0; iw < a.w1; ++iw) sum += xp[ih * s.W + iw];
          y[p * OP + oh * s.OW + ow] = a.divisor > 0 ? sum / static_cast<T>(a.divisor) : T(0);
        }
    }
  });
}

template <class T>
void avg_pool2d_backward(T* dx, const T* dy, const Pool2dShape& s, bool count_include_pad, index_t divisor) {
  check_pool(s, "avg_pool2d_backward");
  FASTDL_CHECK(s.dilation_h == 1 && s.dilation_w == 1 && divisor >= 0,
               "avg_pool2d_backward: dilation must be 1 and divisor >= 0");
  const index_t HW = s.H * s.W, OP = s.OH * s.OW;
  parallel_for(s.N * s.C, planes_grain(OP * s.KH * s.KW), [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      T* dxp = dx + p * HW;
      std::fill(dxp, dxp + HW, T(0));
      for (index_t oh = 0; oh < s.OH; ++oh)
        for (index_t ow = 0; ow < s.OW; ++ow) {
          const AvgWindow a = avg_window(s, oh, ow, count_include_pad, divisor);
          if (a.divisor <= 0) continue;
          const T v = dy[p * OP + oh * s.OW + ow] / static_cast<T>(a.divisor);
          for (index_t ih = a.h0; ih < a.h1; ++ih)
            for (index_t iw = a.w0; iw < a.w1; ++iw) dxp[ih * s.W + iw] += v;
        }
    }
  });
}

template <class T>
void adaptive_avg_pool2d_forward(T* y, const T* x, index_t N, index_t C, index_t H, index_t W, index_t OH,
                                 index_t OW) {
  check_adaptive(N, C, H, W, OH, OW, "adaptive_avg_pool2d");
  const index_t HW = H * W, OP = OH * OW;
  parallel_for(N * C, planes_grain(HW + OP), [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p)
      for (index_t oh = 0; oh < OH; ++oh) {
        const index_t h0 = adaptive_start(oh, H, OH), h1 = adaptive_end(oh, H, OH);
        for (index_t ow = 0; ow < OW; ++ow) {
          const index_t w0 = adaptive_start(ow, W, OW), w1 = adaptive_end(ow, W, OW);
          T sum = 0;
          for (index_t ih = h0; ih < h1; ++ih)
            for (index_t iw = w0; iw < w1; ++iw) sum += x[p * HW + ih * W + iw];
          y[p * OP + oh * OW + ow] = sum / static_cast<T>((h1 - h0) * (w1 - w0));
        }
      }
  });
}

template <class T>
void adaptive_avg_pool2d_backward(T* dx, const T* dy, index_t N, index_t C, index_t H, index_t W, index_t OH,
                                  index_t OW) {
  check_adaptive(N, C, H, W, OH, OW, "adaptive_avg_pool2d_backward");
  const index_t HW = H * W, OP = OH * OW;
  parallel_for(N * C, planes_grain(HW + OP), [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      T* dxp = dx + p * HW;
      std::fill(dxp, dxp + HW, T(0));
      for (index_t oh = 0; oh < OH; ++oh) {
        const index_t h0 = adaptive_start(oh, H, OH), h1 = adaptive_end(oh, H, OH);
        for (index_t ow = 0; ow < OW; ++ow) {
          const index_t w0 = adaptive_start(ow, W, OW), w1 = adaptive_end(ow, W, OW);
          const T v = dy[p * OP + oh * OW + ow] / static_cast<T>((h1 - h0) * (w1 - w0));
          for (index_t ih = h0; ih < h1; ++ih)
            for (index_t iw = w0; iw < w1; ++iw) dxp[ih * W + iw] += v;
        }
      }
    }
  });
}

#define FASTDL_INSTANTIATE_CONV2D(T)                                                                      \
  template void conv2d_forward<T>(T*, const T*, const T*, const T*, const Conv2dShape&);                 \
  template void conv2d_backward_input<T>(T*, const T*, const T*, const Conv2dShape&);                    \
  template void conv2d_backward_weight<T>(T*, T*, const T*, const T*, const Conv2dShape&);               \
  template std::size_t conv2d_forward_workspace<T>(const Conv2dShape&, int);                             \
  template void max_pool2d_forward<T>(T*, std::int64_t*, const T*, const Pool2dShape&);                  \
  template void max_pool2d_backward<T>(T*, const T*, const std::int64_t*, const Pool2dShape&);           \
  template void avg_pool2d_forward<T>(T*, const T*, const Pool2dShape&, bool, index_t);                  \
  template void avg_pool2d_backward<T>(T*, const T*, const Pool2dShape&, bool, index_t);                 \
  template void adaptive_avg_pool2d_forward<T>(T*, const T*, index_t, index_t, index_t, index_t, index_t, \
                                               index_t);                                                 \
  template void adaptive_avg_pool2d_backward<T>(T*, const T*, index_t, index_t, index_t, index_t, index_t, \
                                                index_t);
FASTDL_INSTANTIATE_CONV2D(float)
FASTDL_INSTANTIATE_CONV2D(double)
#undef FASTDL_INSTANTIATE_CONV2D

}  // namespace fastdl::cpu
