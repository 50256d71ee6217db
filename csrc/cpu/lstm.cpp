// LSTM (and GRU) over a whole sequence, forward and backward through time (PyTorch's gate order i, f, g, o):
//   G_t = x_t·W_ihᵀ + h_{t-1}·W_hhᵀ + b_ih + b_hh (B×4H);  i, f, o = σ(G), g = tanh(G)
//   c_t = f⊙c_{t-1} + i⊙g;  h_t = o⊙tanh(c_t)
// Forward: one GEMM (cpu::gemm) projects every step's input, X (TB×I)·W_ihᵀ → G (TB×4H). Fused
// path: W_hh is packed once per call into panels of W hidden units × 4 gates (K = H rows of 4W
// lanes, W = vector width), and per step an MR×4-vector register tile accumulates h_{t-1}·panel
// (MR ≤ 6 rows on avx512's 32 registers, ≤ 3 on 16) whose epilogue adds G_t and the bias, applies
// σ/tanh (simd.h) and writes c_t, h_t and the activated gates. One OpenMP team runs the whole
// sequence: each thread owns a contiguous range of (panel, row block) tiles, so its share of W_hh
// stays in its own L2, with one barrier per step. Backward: per step dh = dy_t + dG_{t+1}·W_hh,
// fused the same way (W_hh packed in panels of 4 vectors of hidden units, K = 4H) with the gate
// gradients; then dx = dG·W_ih, dW_ih = dGᵀ·X, dW_hh = dGᵀ·[h_0 … h_{T-2}], db = Σ dG as GEMMs.
// Stepwise path (the readable reference; automatic for T = 1, e.g. LSTMCell): per step cpu::gemm
// for the recurrent product, then the same gate epilogue as a separate pass.
// GRU (gru_forward/backward): the same tiles with 3 gates (r, z, n); the recurrent part of n,
// W_hn·h + b_hn, is kept for the backward, which carries dh_{t+1}⊙z_{t+1} like the LSTM's dc.
// Cost floor: forward 2·T·B·4H·(I+H) FLOPs, backward twice that; W_hh (16H² bytes in float32) is
// streamed once per step per row block from L2 (L3 when 16H²/threads exceeds L2).
// Reference: Hochreiter & Schmidhuber 1997; Appleyard, Kočiský & Blunsom 2016 (hoisted input GEMM,
// fused gates); PyTorch nn.LSTM for the layout and semantics.
#include <xmmintrin.h>

#include <algorithm>
#include <cstring>

#include "cpu/simd.h"
#include "fastdl.h"

namespace fastdl::cpu {
namespace {

// Flush denormals to zero (FTZ) and treat denormal inputs as zero (DAZ) in the calling thread for
// the guard's lifetime: decaying cell states and tiny gate values would otherwise hit the ~100×
// slower denormal paths. MXCSR is per thread, so each thread of the team sets its own.
class DenormalGuard {
 public:
  DenormalGuard() : saved_(_mm_getcsr()) { _mm_setcsr(saved_ | 0x8040u); }
  ~DenormalGuard() { _mm_setcsr(saved_); }
  DenormalGuard(const DenormalGuard&) = delete;
  DenormalGuard& operator=(const DenormalGuard&) = delete;

 private:
  unsigned saved_;
};

// Everything a kernel of either direction needs; null pointers mean "zero" (h0, c0, biases, dy,
// dh_n, dc_n) or "not wanted" (cell in inference).
template <class S>
struct Ctx {
  index_t T, B, H;
  // forward
  const S *x, *h0, *c0;
  S *y, *gates, *cell, *c_state;  // c_state (B, H): running c when cell is null
  const S* bias;                  // (4H) b_ih + b_hh, in the panel layout of `packed` for fused
  // backward
  const S *dy, *dh_n, *saved_gates, *saved_cell, *saved_c0;
  S *dgates, *dc;                 // dc (B, H): running dc, starts as dc_n
  const S* dh_rec;                // stepwise backward: dG_{t+1}·W_hh for the current step (B, H)
  // GRU: hn (T, B, H) the n gate's recurrent part W_hn·h_{t-1} + b_hn (saved for the backward);
  // dgx/dgh (T, B, 3H) the gradients of the input and recurrent pre-activations; carry (B, H)
  // dh_{t+1}·z_{t+1}, the part of dh_t that bypasses the gates.
  S *hn, *dgx, *carry;
  const S* saved_hn;
  // fused paths: packed W_hh and the tile grid
  const S* packed;
  index_t panels, row_blocks;
  // stepwise paths: the step and row range of one call; fused paths: this thread of the team
  index_t t, begin, end;
  int thread, threads;
};

enum class Op {
  forward_thread, backward_thread, gru_forward_thread, gru_backward_thread, forward_gates, backward_gates,
  vexp, vsigmoid, vtanh
};

// Row block rb of the balanced split of B rows into `blocks` blocks (sizes differ by at most one).
inline void row_block(index_t B, index_t blocks, index_t rb, index_t* b0, index_t* rows) {
  *b0 = rb * B / blocks;
  *rows = (rb + 1) * B / blocks - *b0;
}

// Tiles [first, last) of `total` for thread `id` of `n` (contiguous, panel-major).
inline void thread_range(index_t total, int id, int n, index_t* first, index_t* last) {
  *first = total * id / n;
  *last = total * (id + 1) / n;
}

template <class V>
struct Lstm {
  using S = typename V::T;
  using reg = typename V::reg;
  static constexpr int W = V::width;
  // Rows per register tile: MR×4 accumulators + 4 weight vectors + a broadcast fit the register file.
  static constexpr int MR = sizeof(reg) == 64 ? 6 : 3;

  // Vector loads and stores of the first n ≤ W lanes (the last panel may be partial).
  static reg load_n(const S* p, index_t n) {
    if (n == W) return V::load(p);
    alignas(64) S tmp[W] = {};
    std::memcpy(tmp, p, sizeof(S) * n);
    return V::load(tmp);
  }
  static void store_n(S* p, reg v, index_t n) {
    if (n == W) return V::store(p, v);
    alignas(64) S tmp[W];
    V::store(tmp, v);
    std::memcpy(p, tmp, sizeof(S) * n);
  }

  // acc[r][v] = Σ_k a[r·lda + k] · w[k·ldw + v·W], k < K: R rows of A broadcast against NV vectors
  // of a packed panel. With ≤ 2 rows, two accumulator sets (even and odd k) hide FMA latency.
  template <int R, int NV>
  static void tile_product(index_t K, const S* a, index_t lda, const S* w, index_t ldw, reg (&acc)[R][NV]) {
    constexpr int KS = R <= 2 ? 2 : 1;
    reg part[KS][R][NV];
#pragma GCC unroll 2
    for (int s = 0; s < KS; ++s)
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) part[s][r][v] = V::zero();
    index_t k = 0;
    for (; k + KS <= K; k += KS) {
#pragma GCC unroll 2
      for (int s = 0; s < KS; ++s) {
        const S* wk = w + (k + s) * ldw;
        reg wv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) wv[v] = V::load(wk + v * W);
#pragma GCC unroll 6
        for (int r = 0; r < R; ++r) {
          const reg ar = V::broadcast(a + r * lda + k + s);
#pragma GCC unroll 4
          for (int v = 0; v < NV; ++v) part[s][r][v] = V::fmadd(ar, wv[v], part[s][r][v]);
        }
      }
    }
    for (; k < K; ++k) {
#pragma GCC unroll 6
      for (int r = 0; r < R; ++r) {
        const reg ar = V::broadcast(a + r * lda + k);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) part[0][r][v] = V::fmadd(ar, V::load(w + k * ldw + v * W), part[0][r][v]);
      }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = KS == 2 ? V::add(part[0][r][v], part[KS - 1][r][v]) : part[0][r][v];
  }

  // The gate epilogue for rows b0 … b0+R-1 and W units starting at u0 (n valid): pre = rec + G_t
  // (+ bias), then the activations, c_t and h_t. Writes the activated gates over G_t when the
  // backward needs them (cell != null). The R rows are computed side by side: 4R independent
  // activations give the out-of-order core work to overlap their latency chains.
  template <int R>
  static void gates_epilogue(const Ctx<S>& c, index_t t, index_t b0, index_t u0, index_t n, const reg (&rec)[R][4],
                             const S* bias) {
    const index_t H = c.H;
    S* g = c.gates + (t * c.B + b0) * 4 * H + u0;
    reg act[R][4], ct[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int q = 0; q < 4; ++q) {
        reg pre = V::add(rec[r][q], load_n(g + (r * 4 + q) * H, n));
        if (bias) pre = V::add(pre, V::load(bias + q * W));
        act[r][q] = q == 2 ? simd::vtanh<V>(pre) : simd::vsigmoid<V>(pre);
      }
    const S* c_prev = c.cell ? (t > 0 ? c.cell + (t - 1) * c.B * H : c.c0) : c.c_state;
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const reg cp = c_prev ? load_n(c_prev + (b0 + r) * H + u0, n) : V::zero();
      ct[r] = V::fmadd(act[r][1], cp, V::mul(act[r][0], act[r][2]));
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const index_t row = t * c.B + b0 + r;
      store_n(c.y + row * H + u0, V::mul(act[r][3], simd::vtanh<V>(ct[r])), n);
      if (c.cell) {
        store_n(c.cell + row * H + u0, ct[r], n);
#pragma GCC unroll 4
        for (int q = 0; q < 4; ++q) store_n(g + (r * 4 + q) * H, act[r][q], n);
      } else {
        store_n(c.c_state + (b0 + r) * H + u0, ct[r], n);
      }
    }
  }

  // The gate-gradient epilogue for one row b and W units at u0 (n valid), given dh_t from the
  // recurrence (without dy_t): writes dG_t and updates the running dc to dc_{t-1}.
  static void grads_epilogue(const Ctx<S>& c, index_t t, index_t b, index_t u0, index_t n, reg dh) {
    const index_t H = c.H, row = t * c.B + b;
    if (c.dy) dh = V::add(dh, load_n(c.dy + row * H + u0, n));
    const S* g = c.saved_gates + row * 4 * H;
    const reg i = load_n(g + u0, n), f = load_n(g + H + u0, n), gg = load_n(g + 2 * H + u0, n),
              o = load_n(g + 3 * H + u0, n);
    const reg ct = load_n(c.saved_cell + row * H + u0, n);
    const S* c_prev = t > 0 ? c.saved_cell + (row - c.B) * H : c.saved_c0 ? c.saved_c0 + b * H : nullptr;
    const reg cp = c_prev ? load_n(c_prev + u0, n) : V::zero();
    const reg one = V::set1(S(1)), tc = simd::vtanh<V>(ct);
    S* dc_ptr = c.dc + b * H + u0;
    const reg dct = V::fmadd(V::mul(dh, o), V::sub(one, V::mul(tc, tc)), load_n(dc_ptr, n));
    S* dg = c.dgates + row * 4 * H;
    store_n(dg + u0, V::mul(V::mul(dct, gg), V::mul(i, V::sub(one, i))), n);
    store_n(dg + H + u0, V::mul(V::mul(dct, cp), V::mul(f, V::sub(one, f))), n);
    store_n(dg + 2 * H + u0, V::mul(V::mul(dct, i), V::sub(one, V::mul(gg, gg))), n);
    store_n(dg + 3 * H + u0, V::mul(V::mul(dh, tc), V::mul(o, V::sub(one, o))), n);
    store_n(dc_ptr, V::mul(dct, f), n);
  }

  // ---- GRU epilogues (gate order r, z, n) ----------------------------------------------------
  // Forward for rows b0 … b0+R-1 and W units at u0: gh = rec + b_hh, gx = G_t + b_ih;
  // r = σ(gx_r + gh_r), z = σ(gx_z + gh_z), n = tanh(gx_n + r⊙gh_n), h = n + z⊙(h_{t-1} − n).
  // With a backward to follow (hn != null) r, z, n overwrite G_t and gh_n goes to hn.
  template <int R>
  static void gru_epilogue(const Ctx<S>& c, index_t t, index_t b0, index_t u0, index_t n, const reg (&rec)[R][3],
                           const S* bias) {
    const index_t H = c.H;
    S* g = c.gates + (t * c.B + b0) * 3 * H + u0;
    const S* h_prev = t > 0 ? c.y + (t - 1) * c.B * H : c.h0;
    reg act[R][3], ghn[R];
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      reg gx[3], gh[3];
#pragma GCC unroll 3
      for (int q = 0; q < 3; ++q) {
        gx[q] = load_n(g + (r * 3 + q) * H, n);
        gh[q] = rec[r][q];
        if (bias) {
          gx[q] = V::add(gx[q], V::load(bias + q * W));
          gh[q] = V::add(gh[q], V::load(bias + (3 + q) * W));
        }
      }
      act[r][0] = simd::vsigmoid<V>(V::add(gx[0], gh[0]));
      act[r][1] = simd::vsigmoid<V>(V::add(gx[1], gh[1]));
      act[r][2] = simd::vtanh<V>(V::fmadd(act[r][0], gh[2], gx[2]));
      ghn[r] = gh[2];
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const index_t row = t * c.B + b0 + r;
      const reg hp = h_prev ? load_n(h_prev + (b0 + r) * H + u0, n) : V::zero();
      store_n(c.y + row * H + u0, V::fmadd(act[r][1], V::sub(hp, act[r][2]), act[r][2]), n);
      if (c.hn) {
        store_n(c.hn + row * H + u0, ghn[r], n);
#pragma GCC unroll 3
        for (int q = 0; q < 3; ++q) store_n(g + (r * 3 + q) * H, act[r][q], n);
      }
    }
  }

  // Backward for one row b and W units at u0, given the recurrent part of dh_t: adds dy_t and
  // the carried dh_{t+1}⊙z_{t+1}, writes dgx_t = (dr, dz, dn) and dgh_t = (dr, dz, dn⊙r) (the
  // pre-activation gradients) and carries dh_t⊙z_t to step t-1.
  static void gru_grads_epilogue(const Ctx<S>& c, index_t t, index_t b, index_t u0, index_t n, reg dh) {
    const index_t H = c.H, row = t * c.B + b;
    if (c.dy) dh = V::add(dh, load_n(c.dy + row * H + u0, n));
    S* carry = c.carry + b * H + u0;
    dh = V::add(dh, load_n(carry, n));
    const S* g = c.saved_gates + row * 3 * H;
    const reg r = load_n(g + u0, n), z = load_n(g + H + u0, n), nn = load_n(g + 2 * H + u0, n);
    const reg ghn = load_n(c.saved_hn + row * H + u0, n);
    const S* h_prev = t > 0 ? c.y + (row - c.B) * H : c.h0 ? c.h0 + b * H : nullptr;
    const reg hp = h_prev ? load_n(h_prev + u0, n) : V::zero();
    const reg one = V::set1(S(1));
    const reg dn = V::mul(V::mul(dh, V::sub(one, z)), V::sub(one, V::mul(nn, nn)));
    const reg dr = V::mul(V::mul(dn, ghn), V::mul(r, V::sub(one, r)));
    const reg dz = V::mul(V::mul(dh, V::sub(hp, nn)), V::mul(z, V::sub(one, z)));
    store_n(carry, V::mul(dh, z), n);
    S* dgx = c.dgx + row * 3 * H;
    S* dgh = c.dgates + row * 3 * H;
    store_n(dgx + u0, dr, n);
    store_n(dgh + u0, dr, n);
    store_n(dgx + H + u0, dz, n);
    store_n(dgh + H + u0, dz, n);
    store_n(dgx + 2 * H + u0, dn, n);
    store_n(dgh + 2 * H + u0, V::mul(dn, r), n);
  }

  // ---- fused paths ---------------------------------------------------------------------------

  template <int R>
  static void forward_tile(const Ctx<S>& c, index_t t, index_t p, index_t b0) {
    const index_t H = c.H;
    reg acc[R][4];
    const S* h_prev = t > 0 ? c.y + (t - 1) * c.B * H : c.h0;
    // The epilogue's reads of G_t lie in a buffer far larger than the caches, in 4·R short runs
    // that the hardware prefetchers do not follow: ask for them before the product.
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < 4; ++q) {
        const char* run = reinterpret_cast<const char*>(c.gates + ((t * c.B + b0 + r) * 4 + q) * H + p * W);
        for (index_t off = 0; off < static_cast<index_t>(W * sizeof(S)); off += 64) __builtin_prefetch(run + off, 1);
      }
    if (h_prev) {
      tile_product<R, 4>(H, h_prev + b0 * H, H, c.packed + p * H * 4 * W, 4 * W, acc);
    } else {
      for (auto& row : acc)
        for (auto& a : row) a = V::zero();
    }
    const index_t u0 = p * W, n = std::min<index_t>(W, H - u0);
    gates_epilogue<R>(c, t, b0, u0, n, acc, c.bias ? c.bias + p * 4 * W : nullptr);
  }

  // NV of the panel's 4 vectors of units hold units below H (fewer only in the last panel).
  template <int R, int NV>
  static void backward_tile(const Ctx<S>& c, index_t t, index_t p, index_t b0) {
    const index_t H = c.H, units = 4 * W;
    reg acc[R][NV];
    if (t + 1 < c.T) {
      tile_product<R, NV>(4 * H, c.dgates + ((t + 1) * c.B + b0) * 4 * H, 4 * H, c.packed + p * 4 * H * units, units,
                          acc);
    } else {
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
          const index_t u0 = p * units + v * W;
          acc[r][v] = c.dh_n ? load_n(c.dh_n + (b0 + r) * H + u0, std::min<index_t>(W, H - u0)) : V::zero();
        }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        const index_t u0 = p * units + v * W;
        grads_epilogue(c, t, b0 + r, u0, std::min<index_t>(W, H - u0), acc[r][v]);
      }
  }

  template <int R>
  static void gru_forward_tile(const Ctx<S>& c, index_t t, index_t p, index_t b0) {
    const index_t H = c.H;
    reg acc[R][3];
    const S* h_prev = t > 0 ? c.y + (t - 1) * c.B * H : c.h0;
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < 3; ++q) {
        const char* run = reinterpret_cast<const char*>(c.gates + ((t * c.B + b0 + r) * 3 + q) * H + p * W);
        for (index_t off = 0; off < static_cast<index_t>(W * sizeof(S)); off += 64) __builtin_prefetch(run + off, 1);
      }
    if (h_prev) {
      tile_product<R, 3>(H, h_prev + b0 * H, H, c.packed + p * H * 3 * W, 3 * W, acc);
    } else {
      for (auto& row : acc)
        for (auto& a : row) a = V::zero();
    }
    const index_t u0 = p * W;
    gru_epilogue<R>(c, t, b0, u0, std::min<index_t>(W, H - u0), acc, c.bias ? c.bias + p * 6 * W : nullptr);
  }

  template <int R, int NV>
  static void gru_backward_tile(const Ctx<S>& c, index_t t, index_t p, index_t b0) {
    const index_t H = c.H, units = 4 * W;
    reg acc[R][NV];
    if (t + 1 < c.T) {
      tile_product<R, NV>(3 * H, c.dgates + ((t + 1) * c.B + b0) * 3 * H, 3 * H, c.packed + p * 3 * H * units, units,
                          acc);
    } else {
      for (int r = 0; r < R; ++r)
        for (int v = 0; v < NV; ++v) {
          const index_t u0 = p * units + v * W;
          acc[r][v] = c.dh_n ? load_n(c.dh_n + (b0 + r) * H + u0, std::min<index_t>(W, H - u0)) : V::zero();
        }
    }
    for (int r = 0; r < R; ++r)
      for (int v = 0; v < NV; ++v) {
        const index_t u0 = p * units + v * W;
        gru_grads_epilogue(c, t, b0 + r, u0, std::min<index_t>(W, H - u0), acc[r][v]);
      }
  }

  // Each kind of sequence is its own instantiation: one tile kernel per loop keeps its
  // accumulators in registers (a loop that can reach every kind spills them).
  template <Op K, int R>
  static void tile(const Ctx<S>& c, index_t t, index_t p, index_t b0) {
    if constexpr (K == Op::forward_thread) {
      forward_tile<R>(c, t, p, b0);
    } else if constexpr (K == Op::gru_forward_thread) {
      gru_forward_tile<R>(c, t, p, b0);
    } else {
      constexpr bool gru = K == Op::gru_backward_thread;
      switch (std::min<index_t>(4, ceil_div(c.H - p * 4 * W, W))) {
        case 1: return gru ? gru_backward_tile<R, 1>(c, t, p, b0) : backward_tile<R, 1>(c, t, p, b0);
        case 2: return gru ? gru_backward_tile<R, 2>(c, t, p, b0) : backward_tile<R, 2>(c, t, p, b0);
        case 3: return gru ? gru_backward_tile<R, 3>(c, t, p, b0) : backward_tile<R, 3>(c, t, p, b0);
        default: return gru ? gru_backward_tile<R, 4>(c, t, p, b0) : backward_tile<R, 4>(c, t, p, b0);
      }
    }
  }

  template <Op K>
  static void run_tile(const Ctx<S>& c, index_t t, index_t p, index_t b0, index_t rows) {
    switch (rows) {
      case 1: return tile<K, 1>(c, t, p, b0);
      case 2: return tile<K, 2>(c, t, p, b0);
      case 3: return tile<K, 3>(c, t, p, b0);
      default: break;
    }
    if constexpr (MR > 3) {
      switch (rows) {
        case 4: return tile<K, 4>(c, t, p, b0);
        case 5: return tile<K, 5>(c, t, p, b0);
        case 6: return tile<K, 6>(c, t, p, b0);
        default: break;
      }
    }
  }

  // One thread's part of the whole sequence: its tiles of every step, a barrier between steps.
  template <Op K>
  static void sequence_thread(const Ctx<S>& c) {
    const DenormalGuard guard;
    constexpr bool forward = K == Op::forward_thread || K == Op::gru_forward_thread;
    index_t first, last;
    thread_range(c.panels * c.row_blocks, c.thread, c.threads, &first, &last);
    for (index_t s = 0; s < c.T; ++s) {
      const index_t t = forward ? s : c.T - 1 - s;
      for (index_t item = first; item < last; ++item) {
        index_t b0, rows;
        row_block(c.B, c.row_blocks, item % c.row_blocks, &b0, &rows);
        run_tile<K>(c, t, item / c.row_blocks, b0, rows);
      }
      if (c.threads > 1) {
#pragma omp barrier
      }
    }
  }

  // ---- stepwise paths: rows [begin, end) of step t, G_t already holding the full pre-activation

  static void forward_gates(const Ctx<S>& c) {
    const DenormalGuard guard;
    const reg zero[1][4] = {{V::zero(), V::zero(), V::zero(), V::zero()}};
    for (index_t b = c.begin; b < c.end; ++b)
      for (index_t u0 = 0; u0 < c.H; u0 += W)
        gates_epilogue<1>(c, c.t, b, u0, std::min<index_t>(W, c.H - u0), zero, nullptr);
  }

  static void backward_gates(const Ctx<S>& c) {
    const DenormalGuard guard;
    for (index_t b = c.begin; b < c.end; ++b)
      for (index_t u0 = 0; u0 < c.H; u0 += W) {
        const index_t n = std::min<index_t>(W, c.H - u0);
        grads_epilogue(c, c.t, b, u0, n, c.dh_rec ? load_n(c.dh_rec + b * c.H + u0, n) : V::zero());
      }
  }

  // Elementwise maths over c.x[begin:end) → c.y (the accuracy tests' entry).
  template <Op F>
  static void math(const Ctx<S>& c) {
    for (index_t i = c.begin; i < c.end; i += W) {
      const index_t n = std::min<index_t>(W, c.end - i);
      const reg v = load_n(c.x + i, n);
      const reg r = F == Op::vexp ? simd::vexp<V>(v) : F == Op::vsigmoid ? simd::vsigmoid<V>(v) : simd::vtanh<V>(v);
      store_n(c.y + i, r, n);
    }
  }

  template <Op K>
  static void run(const Ctx<S>& c) {
    if constexpr (K == Op::forward_gates) {
      forward_gates(c);
    } else if constexpr (K == Op::backward_gates) {
      backward_gates(c);
    } else if constexpr (K == Op::vexp || K == Op::vsigmoid || K == Op::vtanh) {
      math<K>(c);
    } else {
      sequence_thread<K>(c);
    }
  }
};

// Entry functions: one per (ISA, dtype, op), each the generic code above compiled for that ISA.
// One function per op keeps each flattened body small enough for the register allocator to hold
// the tile accumulators in registers (a single function for every op spilled them).
struct EntryAvx512F32 {
  template <Op K>
  FASTDL_TARGET_AVX512 FASTDL_FLATTEN static void run(const Ctx<float>& c) {
    Lstm<simd::Avx512F32>::run<K>(c);
  }
};
struct EntryAvx512F64 {
  template <Op K>
  FASTDL_TARGET_AVX512 FASTDL_FLATTEN static void run(const Ctx<double>& c) {
    Lstm<simd::Avx512F64>::run<K>(c);
  }
};
struct EntryAvx2F32 {
  template <Op K>
  FASTDL_TARGET_AVX2 FASTDL_FLATTEN static void run(const Ctx<float>& c) {
    Lstm<simd::Avx2F32>::run<K>(c);
  }
};
struct EntryAvx2F64 {
  template <Op K>
  FASTDL_TARGET_AVX2 FASTDL_FLATTEN static void run(const Ctx<double>& c) {
    Lstm<simd::Avx2F64>::run<K>(c);
  }
};
struct EntryPortableF32 {
  template <Op K>
  FASTDL_FLATTEN static void run(const Ctx<float>& c) {
    Lstm<simd::Portable<float>>::run<K>(c);
  }
};
struct EntryPortableF64 {
  template <Op K>
  FASTDL_FLATTEN static void run(const Ctx<double>& c) {
    Lstm<simd::Portable<double>>::run<K>(c);
  }
};

template <class E, class S>
void dispatch(Op op, const Ctx<S>& c) {
  switch (op) {
    case Op::forward_thread: return E::template run<Op::forward_thread>(c);
    case Op::backward_thread: return E::template run<Op::backward_thread>(c);
    case Op::gru_forward_thread: return E::template run<Op::gru_forward_thread>(c);
    case Op::gru_backward_thread: return E::template run<Op::gru_backward_thread>(c);
    case Op::forward_gates: return E::template run<Op::forward_gates>(c);
    case Op::backward_gates: return E::template run<Op::backward_gates>(c);
    case Op::vexp: return E::template run<Op::vexp>(c);
    case Op::vsigmoid: return E::template run<Op::vsigmoid>(c);
    case Op::vtanh: return E::template run<Op::vtanh>(c);
  }
}

// The vector width and rows per tile at a level, and its entry function.
template <class S>
struct Isa {
  int W, MR;
  void (*run)(Op, const Ctx<S>&);
};

template <class V, class E>
Isa<typename V::T> isa() {
  return {Lstm<V>::W, Lstm<V>::MR, dispatch<E, typename V::T>};
}

template <class S>
Isa<S> isa_for(CpuCapability level) {
  if constexpr (sizeof(S) == 4) {
    switch (level) {
      case CpuCapability::avx512: return isa<simd::Avx512F32, EntryAvx512F32>();
      case CpuCapability::avx2: return isa<simd::Avx2F32, EntryAvx2F32>();
      default: return isa<simd::Portable<float>, EntryPortableF32>();
    }
  } else {
    switch (level) {
      case CpuCapability::avx512: return isa<simd::Avx512F64, EntryAvx512F64>();
      case CpuCapability::avx2: return isa<simd::Avx2F64, EntryAvx2F64>();
      default: return isa<simd::Portable<double>, EntryPortableF64>();
    }
  }
}

// Runs `op` once per thread of one team over the whole sequence (fused paths).
template <class S>
void run_team(const Isa<S>& isa, Op op, const Ctx<S>& c) {
  const index_t tiles = c.panels * c.row_blocks;
  const int threads = static_cast<int>(std::min<index_t>(omp_in_parallel() ? 1 : omp_get_max_threads(), tiles));
  if (threads <= 1) {
    Ctx<S> one = c;
    one.thread = 0, one.threads = 1;
    isa.run(op, one);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    Ctx<S> mine = c;
    mine.thread = omp_get_thread_num(), mine.threads = omp_get_num_threads();
    isa.run(op, mine);
  }
}

// Runs a stepwise gate pass of step t over row ranges in parallel.
template <class S>
void run_rows(const Isa<S>& isa, Op op, Ctx<S> c, index_t t) {
  c.t = t;
  parallel_for(c.B, std::max<index_t>(1, 2048 / c.H), [&](index_t begin, index_t end) {
    Ctx<S> part = c;
    part.begin = begin, part.end = end;
    isa.run(op, part);
  });
}

// ---- packing W_hh for the fused forward --------------------------------------------------------
// Panel p holds, for k < H, the 4W lanes W_hh[q·H + p·W + l, k] (gate q, lane l; zero past H): a
// transpose of W_hh's rows. On avx2/avx512 it runs as 8×8 (float) / 4×4 (double) register
// transposes, about 4× faster than element by element, which matters when T·B is small.

// dst[k·ldd + r] = src[r·lds + k] for r < R (8 floats or 4 doubles), k < R.
FASTDL_TARGET_AVX2 void transpose_block(const float* src, index_t lds, float* dst, index_t ldd) {
  __m256 r[8], t[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + i * lds);
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    _mm256_storeu_ps(dst + i * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
    _mm256_storeu_ps(dst + (i + 4) * ldd, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
  }
}

FASTDL_TARGET_AVX2 void transpose_block(const double* src, index_t lds, double* dst, index_t ldd) {
  const __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + lds), r2 = _mm256_loadu_pd(src + 2 * lds),
                r3 = _mm256_loadu_pd(src + 3 * lds);
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1), t2 = _mm256_unpacklo_pd(r2, r3),
                t3 = _mm256_unpackhi_pd(r2, r3);
  _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
  _mm256_storeu_pd(dst + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
  _mm256_storeu_pd(dst + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
  _mm256_storeu_pd(dst + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
}

// Panel p of the forward layout (see above) for lane width W and `gates` gates (4 for the LSTM, 3
// for the GRU); `blocks` uses transpose_block.
template <class S>
void pack_forward_panel(S* dst, const S* w_hh, index_t H, index_t W, index_t p, int gates, bool blocks) {
  constexpr index_t R = 32 / sizeof(S);  // rows per register transpose
  const index_t n = std::min(W, H - p * W), ld = gates * W;
  for (int q = 0; q < gates; ++q) {
    const S* rows = w_hh + (q * H + p * W) * H;
    S* out = dst + q * W;
    index_t l = 0;
    if (blocks) {
      for (; l + R <= n; l += R) {
        index_t k = 0;
        for (; k + R <= H; k += R) transpose_block(rows + l * H + k, H, out + k * ld + l, ld);
        for (; k < H; ++k)
          for (index_t r = l; r < l + R; ++r) out[k * ld + r] = rows[r * H + k];
      }
    }
    if (l == W) continue;
    for (index_t k = 0; k < H; ++k) {
      for (index_t r = l; r < n; ++r) out[k * ld + r] = rows[r * H + k];
      for (index_t r = n; r < W; ++r) out[k * ld + r] = S(0);
    }
  }
}

// The backward layout: panel p holds, for k < G (the gate rows), the `units` lanes
// W_hh[k, p·units + l] (zero past H): rows of W_hh cut into column panels.
template <class S>
void pack_backward(S* packed, const S* w_hh, index_t G, index_t H, index_t units) {
  parallel_for(ceil_div(H, units), 1, [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      const index_t u0 = p * units, n = std::min(units, H - u0);
      S* dst = packed + p * G * units;
      for (index_t k = 0; k < G; ++k) {
        std::memcpy(dst + k * units, w_hh + k * H + u0, sizeof(S) * n);
        std::fill(dst + k * units + n, dst + (k + 1) * units, S(0));
      }
    }
  });
}

// sums[j] = Σ_r d[r·cols + j]: the bias gradients.
template <class S>
void column_sums(S* sums, const S* d, index_t rows, index_t cols) {
  parallel_for(cols, 64, [&](index_t j0, index_t j1) {
    std::fill(sums + j0, sums + j1, S(0));
    for (index_t r = 0; r < rows; ++r)
      for (index_t j = j0; j < j1; ++j) sums[j] += d[r * cols + j];
  });
}

template <class S>
void check_sizes(const char* op, index_t T, index_t B, index_t I, index_t H) {
  FASTDL_CHECK(T >= 1 && B >= 1 && I >= 1 && H >= 1, op, ": sizes must be positive, got T=", T, " B=", B, " I=", I,
               " H=", H);
}

}  // namespace

template <class S>
void lstm_forward(S* y, S* h_n, S* c_n, S* gates, S* cell, const S* x, const S* h0, const S* c0, const S* w_ih,
                  const S* w_hh, const S* b_ih, const S* b_hh, index_t T, index_t B, index_t I, index_t H,
                  LstmPath path) {
  check_sizes<S>("lstm_forward", T, B, I, H);
  FASTDL_CHECK(y && h_n && c_n && gates && x && w_ih && w_hh, "lstm_forward: a required array is missing");
  const Isa<S> isa = isa_for<S>(capability());
  const bool fused = path == LstmPath::fused || (path == LstmPath::automatic && T > 1);
  const index_t W = isa.W, G = 4 * H;

  // Every step's input projection in one GEMM; the bias joins in the gate epilogue (fused) or
  // here (stepwise).
  gemm<S>(false, true, T * B, G, I, S(1), x, I, w_ih, I, S(0), gates, G);

  Ctx<S> c{};
  c.T = T, c.B = B, c.H = H;
  c.h0 = h0, c.c0 = c0;
  c.y = y, c.gates = gates, c.cell = cell, c.c_state = c_n;
  if (!cell) {
    if (c0)
      std::memcpy(c_n, c0, sizeof(S) * B * H);
    else
      std::fill(c_n, c_n + B * H, S(0));
  }
  const bool has_bias = b_ih || b_hh;
  const auto bias_at = [&](index_t j) { return (b_ih ? b_ih[j] : S(0)) + (b_hh ? b_hh[j] : S(0)); };

  if (fused) {
    const index_t panels = ceil_div(H, W);
    static thread_local AlignedBuffer<S> packed_buffer, bias_buffer;
    S* packed = packed_buffer.get(static_cast<std::size_t>(panels * H * 4 * W));
    S* bias = has_bias ? bias_buffer.get(static_cast<std::size_t>(panels * 4 * W)) : nullptr;
    const bool blocks = capability() != CpuCapability::portable;
    parallel_for(panels, 1, [&](index_t p0, index_t p1) {
      for (index_t p = p0; p < p1; ++p) {
        pack_forward_panel(packed + p * H * 4 * W, w_hh, H, W, p, 4, blocks);
        if (bias)
          for (int q = 0; q < 4; ++q)
            for (index_t l = 0; l < W; ++l)
              bias[p * 4 * W + q * W + l] = p * W + l < H ? bias_at(q * H + p * W + l) : S(0);
      }
    });
    c.packed = packed, c.bias = bias;
    c.panels = panels, c.row_blocks = ceil_div(B, isa.MR);
    run_team(isa, Op::forward_thread, c);
  } else {
    if (has_bias) {
      parallel_for(T * B, 64, [&](index_t r0, index_t r1) {
        for (index_t r = r0; r < r1; ++r)
          for (index_t j = 0; j < G; ++j) gates[r * G + j] += bias_at(j);
      });
    }
    for (index_t t = 0; t < T; ++t) {
      const S* h_prev = t > 0 ? y + (t - 1) * B * H : h0;
      if (h_prev) gemm<S>(false, true, B, G, H, S(1), h_prev, H, w_hh, H, S(1), gates + t * B * G, G);
      run_rows(isa, Op::forward_gates, c, t);
    }
  }
  if (h_n != y + (T - 1) * B * H) std::memcpy(h_n, y + (T - 1) * B * H, sizeof(S) * B * H);
  if (cell) std::memcpy(c_n, cell + (T - 1) * B * H, sizeof(S) * B * H);
}

template <class S>
void lstm_backward(S* dx, S* dh0, S* dc0, S* dw_ih, S* dw_hh, S* db, S* dgates, const S* dy, const S* dh_n,
                   const S* dc_n, const S* x, const S* h0, const S* c0, const S* w_ih, const S* w_hh, const S* y,
                   const S* gates, const S* cell, index_t T, index_t B, index_t I, index_t H, LstmPath path) {
  check_sizes<S>("lstm_backward", T, B, I, H);
  FASTDL_CHECK(dgates && x && w_ih && w_hh && y && gates && cell, "lstm_backward: a required array is missing");
  const Isa<S> isa = isa_for<S>(capability());
  const bool fused = path == LstmPath::fused || (path == LstmPath::automatic && T > 1);
  const index_t W = isa.W, G = 4 * H;

  static thread_local AlignedBuffer<S> dc_buffer, dh_buffer, packed_buffer;
  S* dc = dc0 ? dc0 : dc_buffer.get(static_cast<std::size_t>(B * H));
  if (dc_n)
    std::memcpy(dc, dc_n, sizeof(S) * B * H);
  else
    std::fill(dc, dc + B * H, S(0));

  Ctx<S> c{};
  c.T = T, c.B = B, c.H = H;
  c.dy = dy, c.dh_n = dh_n, c.saved_gates = gates, c.saved_cell = cell, c.saved_c0 = c0;
  c.dgates = dgates, c.dc = dc;

  if (fused) {
    const index_t panels = ceil_div(H, 4 * W);
    S* packed = packed_buffer.get(static_cast<std::size_t>(panels * G * 4 * W));
    pack_backward(packed, w_hh, G, H, 4 * W);
    c.packed = packed, c.panels = panels, c.row_blocks = ceil_div(B, isa.MR);
    run_team(isa, Op::backward_thread, c);
  } else {
    S* dh_rec = dh_buffer.get(static_cast<std::size_t>(B * H));
    for (index_t t = T - 1; t >= 0; --t) {
      if (t + 1 < T) {
        gemm<S>(false, false, B, H, G, S(1), dgates + (t + 1) * B * G, G, w_hh, H, S(0), dh_rec, H);
        c.dh_rec = dh_rec;
      } else {
        c.dh_rec = dh_n;
      }
      run_rows(isa, Op::backward_gates, c, t);
    }
  }

  // Whole-sequence products of dG (TB×4H).
  if (dh0) gemm<S>(false, false, B, H, G, S(1), dgates, G, w_hh, H, S(0), dh0, H);
  if (dx) gemm<S>(false, false, T * B, I, G, S(1), dgates, G, w_ih, I, S(0), dx, I);
  if (dw_ih) gemm<S>(true, false, G, I, T * B, S(1), dgates, G, x, I, S(0), dw_ih, I);
  if (dw_hh) {
    // h_{t-1} for t ≥ 1 is y_{t-1}: one product over T-1 steps, plus h0's step when given.
    gemm<S>(true, false, G, H, (T - 1) * B, S(1), dgates + B * G, G, y, H, S(0), dw_hh, H);
    if (h0) gemm<S>(true, false, G, H, B, S(1), dgates, G, h0, H, S(1), dw_hh, H);
  }
  if (db) column_sums(db, dgates, T * B, G);
}

template <class S>
void gru_forward(S* y, S* h_n, S* gates, S* hn, const S* x, const S* h0, const S* w_ih, const S* w_hh, const S* b_ih,
                 const S* b_hh, index_t T, index_t B, index_t I, index_t H) {
  check_sizes<S>("gru_forward", T, B, I, H);
  FASTDL_CHECK(y && h_n && gates && x && w_ih && w_hh, "gru_forward: a required array is missing");
  const Isa<S> isa = isa_for<S>(capability());
  const index_t W = isa.W, panels = ceil_div(H, W);

  // Every step's input projection in one GEMM; both biases join in the epilogue.
  gemm<S>(false, true, T * B, 3 * H, I, S(1), x, I, w_ih, I, S(0), gates, 3 * H);

  // Panel p: W_hh's rows of the 3 gates for units p·W … p·W+W-1, transposed (as the LSTM's);
  // its bias block holds b_ih then b_hh in the same lanes.
  static thread_local AlignedBuffer<S> packed_buffer, bias_buffer;
  S* packed = packed_buffer.get(static_cast<std::size_t>(panels * H * 3 * W));
  S* bias = b_ih || b_hh ? bias_buffer.get(static_cast<std::size_t>(panels * 6 * W)) : nullptr;
  const bool blocks = capability() != CpuCapability::portable;
  parallel_for(panels, 1, [&](index_t p0, index_t p1) {
    for (index_t p = p0; p < p1; ++p) {
      pack_forward_panel(packed + p * H * 3 * W, w_hh, H, W, p, 3, blocks);
      if (bias)
        for (int q = 0; q < 3; ++q)
          for (index_t l = 0; l < W; ++l) {
            const index_t j = q * H + p * W + l;
            const bool unit = p * W + l < H;
            bias[p * 6 * W + q * W + l] = unit && b_ih ? b_ih[j] : S(0);
            bias[p * 6 * W + (3 + q) * W + l] = unit && b_hh ? b_hh[j] : S(0);
          }
    }
  });
  Ctx<S> c{};
  c.T = T, c.B = B, c.H = H;
  c.h0 = h0, c.y = y, c.gates = gates, c.hn = hn;
  c.packed = packed, c.bias = bias;
  c.panels = panels, c.row_blocks = ceil_div(B, isa.MR);
  run_team(isa, Op::gru_forward_thread, c);
  if (h_n != y + (T - 1) * B * H) std::memcpy(h_n, y + (T - 1) * B * H, sizeof(S) * B * H);
}

template <class S>
void gru_backward(S* dx, S* dh0, S* dw_ih, S* dw_hh, S* db_ih, S* db_hh, S* dgx, S* dgh, const S* dy, const S* dh_n,
                  const S* x, const S* h0, const S* w_ih, const S* w_hh, const S* y, const S* gates, const S* hn,
                  index_t T, index_t B, index_t I, index_t H) {
  check_sizes<S>("gru_backward", T, B, I, H);
  FASTDL_CHECK(dgx && dgh && x && w_ih && w_hh && y && gates && hn, "gru_backward: a required array is missing");
  const Isa<S> isa = isa_for<S>(capability());
  const index_t W = isa.W, G = 3 * H, panels = ceil_div(H, 4 * W);

  static thread_local AlignedBuffer<S> carry_buffer, packed_buffer;
  S* carry = carry_buffer.get(static_cast<std::size_t>(B * H));
  std::fill(carry, carry + B * H, S(0));
  S* packed = packed_buffer.get(static_cast<std::size_t>(panels * G * 4 * W));
  pack_backward(packed, w_hh, G, H, 4 * W);

  Ctx<S> c{};
  c.T = T, c.B = B, c.H = H;
  c.dy = dy, c.dh_n = dh_n, c.h0 = h0, c.y = const_cast<S*>(y), c.saved_gates = gates, c.saved_hn = hn;
  c.dgates = dgh, c.dgx = dgx, c.carry = carry;
  c.packed = packed, c.panels = panels, c.row_blocks = ceil_div(B, isa.MR);
  run_team(isa, Op::gru_backward_thread, c);

  // dh0 = carry + dgh_0·W_hh; then the whole-sequence products, as for the LSTM.
  if (dh0) {
    std::memcpy(dh0, carry, sizeof(S) * B * H);
    gemm<S>(false, false, B, H, G, S(1), dgh, G, w_hh, H, S(1), dh0, H);
  }
  if (dx) gemm<S>(false, false, T * B, I, G, S(1), dgx, G, w_ih, I, S(0), dx, I);
  if (dw_ih) gemm<S>(true, false, G, I, T * B, S(1), dgx, G, x, I, S(0), dw_ih, I);
  if (dw_hh) {
    gemm<S>(true, false, G, H, (T - 1) * B, S(1), dgh + B * G, G, y, H, S(0), dw_hh, H);
    if (h0) gemm<S>(true, false, G, H, B, S(1), dgh, G, h0, H, S(1), dw_hh, H);
  }
  if (db_ih) column_sums(db_ih, dgx, T * B, G);
  if (db_hh) column_sums(db_hh, dgh, T * B, G);
}

template <class S>
void lstm_vector_math(const std::string& fn, const S* x, S* y, index_t n) {
  FASTDL_CHECK(n >= 0, "lstm_vector_math: negative size ", n);
  const Op op = fn == "exp" ? Op::vexp : fn == "sigmoid" ? Op::vsigmoid : fn == "tanh" ? Op::vtanh : Op::forward_thread;
  FASTDL_CHECK(op != Op::forward_thread, "lstm_vector_math: fn must be 'exp', 'sigmoid' or 'tanh', got '", fn, "'");
  Ctx<S> c{};
  c.x = x, c.y = y, c.begin = 0, c.end = n;
  isa_for<S>(capability()).run(op, c);
}

#define FASTDL_INSTANTIATE_LSTM(S)                                                                            \
  template void lstm_forward<S>(S*, S*, S*, S*, S*, const S*, const S*, const S*, const S*, const S*, const S*, \
                                const S*, index_t, index_t, index_t, index_t, LstmPath);                     \
  template void lstm_backward<S>(S*, S*, S*, S*, S*, S*, S*, const S*, const S*, const S*, const S*, const S*,   \
                                 const S*, const S*, const S*, const S*, const S*, const S*, index_t, index_t,  \
                                 index_t, index_t, LstmPath);                                                \
  template void lstm_vector_math<S>(const std::string&, const S*, S*, index_t);                            \
  template void gru_forward<S>(S*, S*, S*, S*, const S*, const S*, const S*, const S*, const S*, const S*,      \
                               index_t, index_t, index_t, index_t);                                          \
  template void gru_backward<S>(S*, S*, S*, S*, S*, S*, S*, S*, const S*, const S*, const S*, const S*,         \
                                const S*, const S*, const S*, const S*, const S*, index_t, index_t, index_t,  \
                                index_t);
FASTDL_INSTANTIATE_LSTM(float)
FASTDL_INSTANTIATE_LSTM(double)
#undef FASTDL_INSTANTIATE_LSTM

}  // namespace fastdl::cpu
