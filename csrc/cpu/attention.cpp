// Attention: O = dropout(softmax(S))·V with S = scale·Q·Kᵀ + M per (batch, head), fused (FlashAttention-2).
// M is additive, or 0/−inf from a boolean and/or causal mask; LSE_i = log Σ_j exp S_ij. Backward:
// dV = (P⊙Z)ᵀdO, dS = (P⊙Z)⊙(dO·Vᵀ) − P·rowsum(dO⊙O), dQ = scale·dS·K, dK = scale·dSᵀQ, dM = dS
// (Z the dropout mask). Rows no key takes part in give O = 0, LSE = −inf and zero gradients.
// Forward (Dao, "FlashAttention-2", 2023): a task per (batch·head, Br query rows); per Bc-key block
// S = Q_tile·K_blkᵀ, online softmax (running max and sum, O rescaled by 2^(m_old − m_new)), O += P·V_blk;
// the Lq×Lk matrix never exists. K (transposed) and V are packed once per kv head, ≤ 8 MB at a time.
// Backward: a task per (batch·kv head, key block) owns its dK/dV rows, sweeps the query tiles of its
// query heads, recomputes P from the LSE and adds its dQ tile in key-block order (a per-tile turn
// counter: the sum, and so training, is the same bits from run to run). Causal blocks
// above the diagonal are skipped. Blocking: Br = 64 × Bc = 256 (avx2 48 × 192; Bc halved in float64 or
// for D + Dv > 256): Q, S and O tiles (≈ 100–200 KB) stay in L2; long key blocks amortise the per-row
// softmax. One register-tiled product (MR×NV vectors: avx512 8×2, avx2 6×2, portable 4×2) serves all
// seven block products; exp2 is a vectorised polynomial (≤ 2 ulp). Cost floor: forward 2·Lq·Lk·(D + Dv)
// FLOPs per head (half causal), backward 2.5×; extra memory O((Lq + Lk)·D) per head, no Lq×Lk buffer.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "cpu/simd.h"
#include "fastdl.h"

namespace fastdl::cpu {
namespace {

constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.6931471805599453094;
// Packed K/V of at most this many bytes (or one kv head) are built at a time, not all of them.
constexpr index_t kPackBytes = index_t{8} << 20;
// Below this many FLOPs per thread a second thread costs more than it saves.
constexpr double kMinFlopsPerThread = 2.0 * 64 * 64 * 64;

template <class T>
constexpr T kNegInf = -std::numeric_limits<T>::infinity();

// ---- vectorised 2^x --------------------------------------------------------------------------
// 2^x = 2^n · 2^r with n = round(x), r ∈ [−½, ½]. n is rounded by adding 1.5·2^23 (1.5·2^52): the
// sum's low mantissa bits hold n, and shifting them into the exponent field builds 2^n. x is
// clamped to [−127, 127] (double: [−1023, 1023]); at the lower end 2^n's bits are all zero, so
// −inf and anything below −126.5 (−1022.5) give exactly 0 (flush to zero, like FTZ); NaN gives NaN.
// float: Cephes exp2f minimax polynomial, ≤ 2 ulp; double: degree-13 Taylor series of e^(r·ln2).
template <int K>
constexpr double taylor_coefficient() {
  double c = 1.0;
  for (int k = 1; k <= K; ++k) c *= kLn2 / k;
  return c;
}

template <class V>
inline typename V::reg exp2_vec(typename V::reg x) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr bool f32 = sizeof(T) == 4;
  using I = std::conditional_t<f32, std::int32_t, std::int64_t>;
  typedef I ireg __attribute__((vector_size(sizeof(reg))));
  // Operand order matters: x86 max/min (and the portable a > b ? a : b) return the second operand
  // when one is NaN, so a NaN score stays NaN instead of being clamped to a finite value.
  x = V::min(V::set1(f32 ? T(127) : T(1023)), V::max(V::set1(f32 ? T(-127) : T(-1023)), x));
  const reg shifter = V::set1(f32 ? T(12582912.0) : T(6755399441055744.0));
  const reg t = V::add(x, shifter);
  const reg r = V::sub(x, V::sub(t, shifter));
  reg p;
  if constexpr (f32) {
    p = V::set1(T(1.535336188319500e-4));
    p = V::fmadd(p, r, V::set1(T(1.339887440266574e-3)));
    p = V::fmadd(p, r, V::set1(T(9.618437357674640e-3)));
    p = V::fmadd(p, r, V::set1(T(5.550332471162809e-2)));
    p = V::fmadd(p, r, V::set1(T(2.402264791363012e-1)));
    p = V::fmadd(p, r, V::set1(T(6.931472028550421e-1)));
    p = V::fmadd(p, r, V::set1(T(1)));
  } else {
    p = V::set1(taylor_coefficient<13>());
    p = V::fmadd(p, r, V::set1(taylor_coefficient<12>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<11>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<10>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<9>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<8>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<7>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<6>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<5>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<4>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<3>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<2>()));
    p = V::fmadd(p, r, V::set1(taylor_coefficient<1>()));
    p = V::fmadd(p, r, V::set1(T(1)));
  }
  const ireg bits = ((ireg)t << (f32 ? 23 : 52)) + (ireg)V::set1(T(1));
  return V::mul(p, (reg)bits);
}

template <class V>
inline typename V::T reduce_max(typename V::reg v) {
  alignas(64) typename V::T lanes[V::width];
  V::store(lanes, v);
  typename V::T m = lanes[0];
  for (int i = 1; i < V::width; ++i) m = std::max(m, lanes[i]);
  return m;
}

// ---- dropout ---------------------------------------------------------------------------------
// Z_ij is a pure function of (seed, batch·head, i, j), so the backward regenerates the forward's
// mask without storing it. Hash: lowbias32 (common.h); keep when the top 24 bits are ≥ p·2^24.

template <class T>
struct Dropout {
  bool on;
  std::uint32_t seed_lo, seed_hi, threshold;
  T keep_scale;  // 1 / (1 − p)

  Dropout(double p, std::uint64_t seed)
      : on(p > 0),
        seed_lo(static_cast<std::uint32_t>(seed)),
        seed_hi(static_cast<std::uint32_t>(seed >> 32)),
        threshold(static_cast<std::uint32_t>(std::llround(p * 16777216.0))),
        keep_scale(static_cast<T>(1.0 / (1.0 - p))) {}

  std::uint32_t row_key(index_t bh, index_t i) const {
    return lowbias32(lowbias32(seed_lo ^ lowbias32(static_cast<std::uint32_t>(bh))) + static_cast<std::uint32_t>(i));
  }
  // dst[j] = src[j] · Z(row, j0 + j) for j < n.
  void apply(std::uint32_t key, index_t j0, index_t n, const T* src, T* dst) const {
    const std::uint32_t base = static_cast<std::uint32_t>(j0) + seed_hi;
    for (index_t j = 0; j < n; ++j) {
      const std::uint32_t h = lowbias32(key ^ lowbias32(base + static_cast<std::uint32_t>(j)));
      dst[j] = (h >> 8) >= threshold ? src[j] * keep_scale : T(0);
    }
  }
};

// ---- register-tiled products -----------------------------------------------------------------
// C[r][c] (+)= Σ_k A(r, k) · B[k·ldb + c] for r < MR, c < NV·W, with A(r, k) = a[r·lda + k]
// (A_ROWS: row-major A) or a[k·lda + r] (A stored transposed).
template <class V, int MR, int NV, bool A_ROWS>
inline void micro_kernel(index_t K, const typename V::T* __restrict a, index_t lda, const typename V::T* __restrict b,
                         index_t ldb, typename V::T* __restrict c, index_t ldc, bool accumulate) {
  using reg = typename V::reg;
  constexpr int W = V::width;
  reg acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? V::load(c + r * ldc + v * W) : V::zero();
  for (index_t k = 0; k < K; ++k) {
    reg bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + k * ldb + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const reg ar = V::broadcast(A_ROWS ? a + r * lda + k : a + k * lda + r);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(ar, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) V::store(c + r * ldc + v * W, acc[r][v]);
}

// C (M×N) (+)= A (M×K) · B (K×N) on tile buffers: M a multiple of MR, N a multiple of W (callers
// pad rows and columns); columns go NV vectors at a time, the rest one vector at a time.
template <class V, int MR, int NV, bool A_ROWS>
inline void tile_gemm(index_t M, index_t N, index_t K, const typename V::T* a, index_t lda, const typename V::T* b,
                      index_t ldb, typename V::T* c, index_t ldc, bool accumulate) {
  constexpr int W = V::width, NR = NV * W;
  for (index_t i = 0; i < M; i += MR) {
    const typename V::T* ai = A_ROWS ? a + i * lda : a + i;
    index_t j = 0;
    for (; j + NR <= N; j += NR)
      micro_kernel<V, MR, NV, A_ROWS>(K, ai, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
    for (; j < N; j += W) micro_kernel<V, MR, 1, A_ROWS>(K, ai, lda, b + j, ldb, c + i * ldc + j, ldc, accumulate);
  }
}

// ---- scores of one row of one key block --------------------------------------------------------
// The Q tile is packed pre-multiplied by scale·log2(e), so S already holds base-2 logits; this adds
// log2(e)·M_ij for j < valid (−inf where a boolean mask is false) and sets −inf for valid ≤ j < n.
template <class T>
inline void mask_row(const AttentionProblem<T>& p, index_t b, index_t h, index_t i, index_t j0, index_t valid,
                     index_t n, T* __restrict s) {
  const index_t off = b * p.mask_strides[0] + h * p.mask_strides[1] + i * p.mask_strides[2] + j0 * p.mask_strides[3];
  const index_t cs = p.mask_strides[3];
  if (p.mask_kind == AttentionMask::additive) {
    const T* m = static_cast<const T*>(p.mask) + off;
    const T l2e = static_cast<T>(kLog2e);
    if (cs == 1)
      for (index_t j = 0; j < valid; ++j) s[j] += m[j] * l2e;
    else
      for (index_t j = 0; j < valid; ++j) s[j] += m[j * cs] * l2e;
  } else if (p.mask_kind == AttentionMask::boolean) {
    const std::uint8_t* m = static_cast<const std::uint8_t*>(p.mask) + off;
    if (cs == 1)
      for (index_t j = 0; j < valid; ++j) s[j] = m[j] ? s[j] : kNegInf<T>;
    else
      for (index_t j = 0; j < valid; ++j) s[j] = m[j * cs] ? s[j] : kNegInf<T>;
  }
  for (index_t j = std::max<index_t>(valid, 0); j < n; ++j) s[j] = kNegInf<T>;
}

// Keys of block [j0, j0 + nk) that row i may see: all, or with a causal mask those j ≤ i.
inline index_t visible_keys(bool causal, index_t i, index_t j0, index_t nk) {
  return causal ? std::clamp<index_t>(i - j0 + 1, 0, nk) : nk;
}

template <class T>
struct ForwardTile {
  const AttentionProblem<T>* p;
  const T* KT;  // this kv head's K, transposed per key block: block kb is D × Bc, keys padded with 0
  const T* Vp;  // this kv head's V: (blocks·Bc) × Dvp rows, padded with 0
  index_t b, h, i0;
  index_t Br, Bc;
  T* O;    // (B, NH, Lq, Dv)
  T* LSE;  // (B, NH, Lq)
  T* ws;   // forward_workspace() elements
};

template <class T>
struct BackwardTask {
  const AttentionProblem<T>* p;
  const T* O;    // (B, NH, Lq, Dv)
  const T* dO;   // (B, NH, Lq, Dv)
  const T* LSE;  // (B, NH, Lq)
  const T* Di;   // (B, NH, Lq): rowsum(dO ⊙ O)
  T* dQ;         // (B, NH, Lq, D), zeroed; tiles added in key-block order
  T* dK;         // (B, NHK, Lk, D)
  T* dV;         // (B, NHK, Lk, Dv)
  T* dM;         // (B, NH, Lq, Lk) or null, zeroed
  // One per (b, h, query tile): the key block whose dQ part is added next. The blocks that reach a
  // tile are 0, 1, … (causal skipping drops a tail, never a middle one), and tasks are handed out in
  // key-block order, so a waiting task only waits for an earlier, running one.
  std::atomic<index_t>* turns;
  index_t b, g, kb;
  index_t Br, Bc;
  T* ws;  // backward_workspace() elements
};

constexpr index_t pad16(index_t n) { return round_up(n, 16); }

index_t forward_workspace(index_t Br, index_t Bc, index_t D, index_t Dvp) {
  return pad16(D * Br) + pad16(Br * Bc) + pad16(Br * Dvp) + pad16(Br) + pad16(Br * 16);
}

index_t backward_workspace(index_t Br, index_t Bc, index_t D, index_t Dp, index_t Dv, index_t Dvp) {
  return pad16(D * Bc) + pad16(Bc * Dp) + pad16(Dv * Bc) + pad16(Bc * Dp) + pad16(Bc * Dvp) + pad16(Br * Dp) +
         pad16(Br * Dvp) + 3 * pad16(Br * Bc) + pad16(Br * Dp);
}

// The kernels of one (ISA, dtype): V the vector type, MR × NV the micro-tile.
template <class V, int MR, int NV>
struct Attention {
  using T = typename V::T;
  using reg = typename V::reg;
  static constexpr int W = V::width;

  static void forward(const ForwardTile<T>& t) {
    const AttentionProblem<T>& p = *t.p;
    const index_t Br = t.Br, Bc = t.Bc, D = p.D, Dv = p.Dv, Dvp = round_up(Dv, W);
    const index_t rows = std::min(Br, p.Lq - t.i0), Mr = round_up(rows, MR);
    const index_t bh = t.b * p.NH + t.h;
    T* Qs = t.ws;                     // Br × D: c·(Q tile), rows ≥ `rows` zero
    T* S = Qs + pad16(Br * D);        // Br × Bc: base-2 logits, then probabilities
    T* Oacc = S + pad16(Br * Bc);     // Br × Dvp: unnormalised output
    T* m = Oacc + pad16(Br * Dvp);    // Br: running max of the logits
    T* l = m + pad16(Br);             // Br × W: running sums, one vector per row

    const T c = static_cast<T>(p.scale * kLog2e);
    const T* Q = p.Q + t.b * p.q_strides[0] + t.h * p.q_strides[1] + t.i0 * p.q_strides[2];
    const index_t rsq = p.q_strides[2], csq = p.q_strides[3];
    for (index_t i = 0; i < rows; ++i) {
      T* dst = Qs + i * D;
      const T* src = Q + i * rsq;
      if (csq == 1)
        for (index_t d = 0; d < D; ++d) dst[d] = c * src[d];
      else
        for (index_t d = 0; d < D; ++d) dst[d] = c * src[d * csq];
    }
    std::fill(Qs + rows * D, Qs + Mr * D, T(0));
    std::fill(Oacc, Oacc + Mr * Dvp, T(0));
    std::fill(m, m + Mr, kNegInf<T>);
    std::fill(l, l + Mr * W, T(0));

    const Dropout<T> drop(p.dropout_p, p.seed);
    const bool masked = p.mask_kind != AttentionMask::none;
    index_t nkb = ceil_div(p.Lk, Bc);
    if (p.causal) nkb = std::min(nkb, ceil_div(t.i0 + rows, Bc));
    for (index_t kb = 0; kb < nkb; ++kb) {
      const index_t j0 = kb * Bc;
      // With a causal mask the tile sees no key past its last row: trim the block there.
      const index_t nk = std::min(p.causal ? t.i0 + rows - j0 : Bc, std::min(Bc, p.Lk - j0)), Nk = round_up(nk, W);
      tile_gemm<V, MR, NV, true>(Mr, Nk, D, Qs, D, t.KT + kb * D * Bc, Bc, S, Bc, false);
      for (index_t i = 0; i < rows; ++i) {
        T* s = S + i * Bc;
        const index_t gi = t.i0 + i, valid = visible_keys(p.causal, gi, j0, nk);
        if (masked || valid < Nk) mask_row(p, t.b, t.h, gi, j0, valid, Nk, s);
        reg mx = V::load(s);
        for (index_t j = W; j < Nk; j += W) mx = V::max(mx, V::load(s + j));
        const T m_old = m[i], m_new = std::max(m_old, reduce_max<V>(mx));
        if (m_new == kNegInf<T>) {  // no key of this row takes part so far, or its scores are NaN
          if (std::any_of(s, s + Nk, [](T x) { return x != x; }))
            V::store(l + i * W, V::set1(std::numeric_limits<T>::quiet_NaN()));
          std::fill(s, s + Nk, T(0));
          continue;
        }
        const reg mv = V::set1(m_new);
        reg sum = V::zero();
        for (index_t j = 0; j < Nk; j += W) {
          const reg e = exp2_vec<V>(V::sub(V::load(s + j), mv));
          V::store(s + j, e);
          sum = V::add(sum, e);
        }
        if (drop.on) drop.apply(drop.row_key(bh, gi), j0, valid, s, s);
        if (m_new == m_old) {
          V::store(l + i * W, V::add(V::load(l + i * W), sum));
          continue;
        }
        const T alpha = std::exp2(m_old - m_new);  // 0 while the row was empty
        const reg av = V::set1(alpha);
        V::store(l + i * W, V::fmadd(V::load(l + i * W), av, sum));
        m[i] = m_new;
        T* o = Oacc + i * Dvp;
        for (index_t d = 0; d < Dvp; d += W) V::store(o + d, V::mul(av, V::load(o + d)));
      }
      tile_gemm<V, MR, NV, true>(Mr, Dvp, nk, S, Bc, t.Vp + j0 * Dvp, Dvp, Oacc, Dvp, true);
    }

    T* O = t.O + (bh * p.Lq + t.i0) * Dv;
    T* LSE = t.LSE + bh * p.Lq + t.i0;
    for (index_t i = 0; i < rows; ++i) {
      const T li = V::reduce_add(V::load(l + i * W));
      const bool empty = li == T(0);  // no key took part (NaN scores leave li NaN, and NaN results)
      const T inv = empty ? T(0) : T(1) / li;
      for (index_t d = 0; d < Dv; ++d) O[i * Dv + d] = Oacc[i * Dvp + d] * inv;
      LSE[i] = empty ? kNegInf<T> : static_cast<T>((m[i] + std::log2(li)) * kLn2);
    }
  }

  static void backward(const BackwardTask<T>& t) {
    const AttentionProblem<T>& p = *t.p;
    const index_t Br = t.Br, Bc = t.Bc, D = p.D, Dv = p.Dv, Dp = round_up(D, W), Dvp = round_up(Dv, W);
    const index_t j0 = t.kb * Bc, nk = std::min(Bc, p.Lk - j0);
    const index_t group = p.NH / p.NHK, nqt = ceil_div(p.Lq, Br);
    T* KT = t.ws;                      // D × Bc: the K block transposed
    T* Kr = KT + pad16(D * Bc);        // Bc × Dp: the K block
    T* VT = Kr + pad16(Bc * Dp);       // Dv × Bc: the V block transposed
    T* dKacc = VT + pad16(Dv * Bc);    // Bc × Dp
    T* dVacc = dKacc + pad16(Bc * Dp); // Bc × Dvp
    T* Qr = dVacc + pad16(Bc * Dvp);   // Br × Dp: c·(a Q tile)
    T* dOr = Qr + pad16(Br * Dp);      // Br × Dvp: its dO tile
    T* P = dOr + pad16(Br * Dvp);      // Br × Bc: scores, then P
    T* Pd = P + pad16(Br * Bc);        // Br × Bc: P ⊙ Z (P itself without dropout)
    T* dS = Pd + pad16(Br * Bc);       // Br × Bc: dP, then dS
    T* dQt = dS + pad16(Br * Bc);      // Br × Dp: this block's part of the dQ tile
    if (!(p.dropout_p > 0)) Pd = P;

    const T* K = p.K + t.b * p.k_strides[0] + t.g * p.k_strides[1] + j0 * p.k_strides[2];
    const T* Vb = p.V + t.b * p.v_strides[0] + t.g * p.v_strides[1] + j0 * p.v_strides[2];
    std::fill(KT, KT + D * Bc, T(0));
    std::fill(Kr, Kr + Bc * Dp, T(0));
    std::fill(VT, VT + Dv * Bc, T(0));
    for (index_t j = 0; j < nk; ++j) {
      for (index_t d = 0; d < D; ++d) {
        const T x = K[j * p.k_strides[2] + d * p.k_strides[3]];
        KT[d * Bc + j] = x;
        Kr[j * Dp + d] = x;
      }
      for (index_t d = 0; d < Dv; ++d) VT[d * Bc + j] = Vb[j * p.v_strides[2] + d * p.v_strides[3]];
    }
    std::fill(dKacc, dKacc + Bc * Dp, T(0));
    std::fill(dVacc, dVacc + Bc * Dvp, T(0));

    const Dropout<T> drop(p.dropout_p, p.seed);
    const T c = static_cast<T>(p.scale * kLog2e), l2e = static_cast<T>(kLog2e), scale = static_cast<T>(p.scale);
    const bool masked = p.mask_kind != AttentionMask::none;
    const index_t qt_begin = p.causal ? j0 / Br : 0;
    for (index_t h = t.g * group; h < (t.g + 1) * group; ++h) {
      const index_t bh = t.b * p.NH + h;
      for (index_t qt = qt_begin; qt < nqt; ++qt) {
        const index_t i0 = qt * Br, rows = std::min(Br, p.Lq - i0), Mr = round_up(rows, MR);
        // Keys of the block this tile sees (causal: none past its last row). Nk covers Mk, so every
        // column the dKᵀ/dVᵀ products read is recomputed for this tile.
        const index_t nkt = p.causal ? std::min(nk, i0 + rows - j0) : nk;
        if (nkt <= 0) continue;
        const index_t Mk = round_up(nkt, MR), Nk = round_up(Mk, W);
        const T* Q = p.Q + t.b * p.q_strides[0] + h * p.q_strides[1] + i0 * p.q_strides[2];
        const T* dO = t.dO + (bh * p.Lq + i0) * Dv;
        for (index_t i = 0; i < Mr; ++i) {
          T* q = Qr + i * Dp;
          T* g = dOr + i * Dvp;
          if (i < rows) {
            for (index_t d = 0; d < D; ++d) q[d] = c * Q[i * p.q_strides[2] + d * p.q_strides[3]];
            std::copy(dO + i * Dv, dO + (i + 1) * Dv, g);
            std::fill(q + D, q + Dp, T(0));
            std::fill(g + Dv, g + Dvp, T(0));
          } else {
            std::fill(q, q + Dp, T(0));
            std::fill(g, g + Dvp, T(0));
          }
        }
        const T* lse = t.LSE + bh * p.Lq + i0;
        const T* Di = t.Di + bh * p.Lq + i0;

        // P = 2^(s − LSE·log2 e), recomputed from the saved row log-sum-exp.
        tile_gemm<V, MR, NV, true>(Mr, Nk, D, Qr, Dp, KT, Bc, P, Bc, false);
        for (index_t i = 0; i < Mr; ++i) {
          T* s = P + i * Bc;
          const index_t gi = i0 + i, valid = i < rows ? visible_keys(p.causal, gi, j0, nkt) : 0;
          if (valid == 0 || lse[i] == kNegInf<T>) {
            std::fill(s, s + Nk, T(0));
            if (Pd != P) std::fill(Pd + i * Bc, Pd + i * Bc + Nk, T(0));
            continue;
          }
          if (masked || valid < Nk) mask_row(p, t.b, h, gi, j0, valid, Nk, s);
          const reg lv = V::set1(lse[i] * l2e);
          for (index_t j = 0; j < Nk; j += W) V::store(s + j, exp2_vec<V>(V::sub(V::load(s + j), lv)));
          if (Pd != P) {
            drop.apply(drop.row_key(bh, gi), j0, valid, s, Pd + i * Bc);
            std::fill(Pd + i * Bc + valid, Pd + i * Bc + Nk, T(0));
          }
        }
        tile_gemm<V, MR, NV, false>(Mk, Dvp, Mr, Pd, Bc, dOr, Dvp, dVacc, Dvp, true);    // dV += Pdᵀ dO
        tile_gemm<V, MR, NV, true>(Mr, Nk, Dv, dOr, Dvp, VT, Bc, dS, Bc, false);         // dP = dO Vᵀ
        for (index_t i = 0; i < Mr; ++i) {                                                // dS = Pd⊙dP − P·Di
          T* ds = dS + i * Bc;
          if (i >= rows) {
            std::fill(ds, ds + Nk, T(0));
            continue;
          }
          const T* pr = P + i * Bc;
          const T* pd = Pd + i * Bc;
          const reg di = V::set1(Di[i]);
          for (index_t j = 0; j < Nk; j += W)
            V::store(ds + j, V::sub(V::mul(V::load(pd + j), V::load(ds + j)), V::mul(V::load(pr + j), di)));
          if (t.dM) std::copy(ds, ds + nkt, t.dM + (bh * p.Lq + i0 + i) * p.Lk + j0);
        }
        tile_gemm<V, MR, NV, false>(Mk, Dp, Mr, dS, Bc, Qr, Dp, dKacc, Dp, true);  // dK += dSᵀ Q
        tile_gemm<V, MR, NV, true>(Mr, Dp, nkt, dS, Bc, Kr, Dp, dQt, Dp, false);    // dQ tile = dS K

        std::atomic<index_t>& turn = t.turns[bh * nqt + qt];
        while (turn.load(std::memory_order_acquire) != t.kb) _mm_pause();
        T* dQ = t.dQ + (bh * p.Lq + i0) * D;
        for (index_t i = 0; i < rows; ++i)
          for (index_t d = 0; d < D; ++d) dQ[i * D + d] += scale * dQt[i * Dp + d];
        turn.store(t.kb + 1, std::memory_order_release);
      }
    }

    T* dK = t.dK + ((t.b * p.NHK + t.g) * p.Lk + j0) * D;
    T* dV = t.dV + ((t.b * p.NHK + t.g) * p.Lk + j0) * Dv;
    for (index_t j = 0; j < nk; ++j) {
      for (index_t d = 0; d < D; ++d) dK[j * D + d] = T(kLn2) * dKacc[j * Dp + d];  // Qr holds c·Q, scale/c = ln 2
      std::copy(dVacc + j * Dvp, dVacc + j * Dvp + Dv, dV + j * Dv);
    }
  }

  static void exp2(const T* x, T* y, index_t n) {
    alignas(64) T tmp[W];
    for (index_t i = 0; i < n; i += W) {
      const index_t m = std::min<index_t>(W, n - i);
      std::fill(tmp, tmp + W, T(0));
      std::copy(x + i, x + i + m, tmp);
      V::store(tmp, exp2_vec<V>(V::load(tmp)));
      std::copy(tmp, tmp + m, y + i);
    }
  }
};

using Avx512F32 = Attention<simd::Avx512F32, 8, 2>;
using Avx512F64 = Attention<simd::Avx512F64, 8, 2>;
using Avx2F32 = Attention<simd::Avx2F32, 6, 2>;
using Avx2F64 = Attention<simd::Avx2F64, 6, 2>;
using PortableF32 = Attention<simd::Portable<float>, 4, 2>;
using PortableF64 = Attention<simd::Portable<double>, 4, 2>;

FASTDL_TARGET_AVX512 FASTDL_FLATTEN void forward_avx512_f32(const ForwardTile<float>& t) { Avx512F32::forward(t); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void forward_avx512_f64(const ForwardTile<double>& t) { Avx512F64::forward(t); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void forward_avx2_f32(const ForwardTile<float>& t) { Avx2F32::forward(t); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void forward_avx2_f64(const ForwardTile<double>& t) { Avx2F64::forward(t); }
FASTDL_FLATTEN void forward_portable_f32(const ForwardTile<float>& t) { PortableF32::forward(t); }
FASTDL_FLATTEN void forward_portable_f64(const ForwardTile<double>& t) { PortableF64::forward(t); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void backward_avx512_f32(const BackwardTask<float>& t) { Avx512F32::backward(t); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void backward_avx512_f64(const BackwardTask<double>& t) { Avx512F64::backward(t); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void backward_avx2_f32(const BackwardTask<float>& t) { Avx2F32::backward(t); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void backward_avx2_f64(const BackwardTask<double>& t) { Avx2F64::backward(t); }
FASTDL_FLATTEN void backward_portable_f32(const BackwardTask<float>& t) { PortableF32::backward(t); }
FASTDL_FLATTEN void backward_portable_f64(const BackwardTask<double>& t) { PortableF64::backward(t); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void exp2_avx512_f32(const float* x, float* y, index_t n) {
  Avx512F32::exp2(x, y, n);
}
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void exp2_avx512_f64(const double* x, double* y, index_t n) {
  Avx512F64::exp2(x, y, n);
}
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void exp2_avx2_f32(const float* x, float* y, index_t n) { Avx2F32::exp2(x, y, n); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void exp2_avx2_f64(const double* x, double* y, index_t n) { Avx2F64::exp2(x, y, n); }
FASTDL_FLATTEN void exp2_portable_f32(const float* x, float* y, index_t n) { PortableF32::exp2(x, y, n); }
FASTDL_FLATTEN void exp2_portable_f64(const double* x, double* y, index_t n) { PortableF64::exp2(x, y, n); }

template <class T>
struct Config {
  int MR, W;
  index_t Br, Bc;  // Br a multiple of MR; Bc a multiple of MR and W
  void (*forward)(const ForwardTile<T>&);
  void (*backward)(const BackwardTask<T>&);
  void (*exp2)(const T*, T*, index_t);
};

// Tile sizes per level and dtype, all in one place (see the header for the cache budget). Key
// blocks are long (Bc = 4·Br) so the per-row softmax work is amortised over many keys; they are
// halved when D + Dv > 256 (or in float64) so one K/V block and the dK/dV accumulators stay in L2.
template <class T>
Config<T> config_for(CpuCapability level, index_t D, index_t Dv) {
  Config<T> c;
  if constexpr (sizeof(T) == 4) {
    switch (level) {
      case CpuCapability::avx512: c = {8, 16, 64, 256, forward_avx512_f32, backward_avx512_f32, exp2_avx512_f32}; break;
      case CpuCapability::avx2: c = {6, 8, 48, 192, forward_avx2_f32, backward_avx2_f32, exp2_avx2_f32}; break;
      default: c = {4, 4, 64, 256, forward_portable_f32, backward_portable_f32, exp2_portable_f32}; break;
    }
  } else {
    switch (level) {
      case CpuCapability::avx512: c = {8, 8, 64, 128, forward_avx512_f64, backward_avx512_f64, exp2_avx512_f64}; break;
      case CpuCapability::avx2: c = {6, 4, 48, 96, forward_avx2_f64, backward_avx2_f64, exp2_avx2_f64}; break;
      default: c = {4, 2, 64, 128, forward_portable_f64, backward_portable_f64, exp2_portable_f64}; break;
    }
  }
  if (D + Dv > 256) c.Bc /= 2;
  return c;
}

template <class T>
void check_problem(const AttentionProblem<T>& p, const char* op) {
  FASTDL_CHECK(p.B >= 0 && p.NH >= 0 && p.NHK >= 0 && p.Lq >= 0 && p.Lk >= 0 && p.D >= 0 && p.Dv >= 0, op,
               ": negative size B=", p.B, " NH=", p.NH, " NHK=", p.NHK, " Lq=", p.Lq, " Lk=", p.Lk, " D=", p.D,
               " Dv=", p.Dv);
  FASTDL_CHECK(p.NH == 0 || (p.NHK > 0 && p.NH % p.NHK == 0), op, ": ", p.NH,
               " query heads are not a multiple of ", p.NHK, " key/value heads");
  FASTDL_CHECK(p.dropout_p >= 0 && p.dropout_p < 1, op, ": dropout_p must be in [0, 1), got ", p.dropout_p);
  FASTDL_CHECK(p.mask_kind == AttentionMask::none || p.mask != nullptr, op, ": mask kind set but no mask given");
}

int threads_for(double flops) {
  const int max_threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  return static_cast<int>(std::min<double>(max_threads, std::max(1.0, flops / kMinFlopsPerThread)));
}

// K (transposed per Bc block) and V (rows padded to Dvp) of kv head (b, g), padded with zeros.
template <class T>
void pack_kv(const AttentionProblem<T>& p, index_t b, index_t g, index_t Bc, index_t Dvp, T* KT, T* Vp) {
  const index_t nkb = ceil_div(p.Lk, Bc);
  const T* K = p.K + b * p.k_strides[0] + g * p.k_strides[1];
  const T* V = p.V + b * p.v_strides[0] + g * p.v_strides[1];
  for (index_t kb = 0; kb < nkb; ++kb) {
    T* dst = KT + kb * p.D * Bc;
    const index_t nk = std::min(Bc, p.Lk - kb * Bc);
    for (index_t d = 0; d < p.D; ++d) {
      const T* src = K + kb * Bc * p.k_strides[2] + d * p.k_strides[3];
      for (index_t j = 0; j < nk; ++j) dst[d * Bc + j] = src[j * p.k_strides[2]];
      std::fill(dst + d * Bc + nk, dst + (d + 1) * Bc, T(0));
    }
  }
  for (index_t j = 0; j < nkb * Bc; ++j) {
    T* dst = Vp + j * Dvp;
    index_t d = 0;
    if (j < p.Lk)
      for (; d < p.Dv; ++d) dst[d] = V[j * p.v_strides[2] + d * p.v_strides[3]];
    std::fill(dst + d, dst + Dvp, T(0));
  }
}

template <class T>
void fill_parallel(T* x, index_t n) {
  parallel_for(n, index_t{1} << 16, [&](index_t begin, index_t end) { std::fill(x + begin, x + end, T(0)); });
}

}  // namespace

template <class T>
void attention_forward(const AttentionProblem<T>& p, T* O, T* LSE) {
  check_problem(p, "attention_forward");
  if (p.B == 0 || p.NH == 0 || p.Lq == 0) return;
  const Config<T> cfg = config_for<T>(capability(), p.D, p.Dv);
  const index_t Br = cfg.Br, Bc = cfg.Bc, group = p.NH / p.NHK;
  const index_t nqt = ceil_div(p.Lq, Br), nkb = ceil_div(p.Lk, Bc), Dvp = round_up(p.Dv, cfg.W);
  const index_t kt_size = pad16(nkb * Bc * p.D), per_kv = kt_size + pad16(nkb * Bc * Dvp);
  const index_t kv_heads = p.B * p.NHK;
  const index_t per_kv_bytes = std::max<index_t>(1, per_kv * index_t(sizeof(T)));
  const index_t chunk = std::clamp<index_t>(kPackBytes / per_kv_bytes, 1, kv_heads);
  AlignedBuffer<T> packed;
  T* pk = packed.get(static_cast<std::size_t>(std::max<index_t>(1, chunk * per_kv)));
  const index_t ws_size = forward_workspace(Br, Bc, p.D, Dvp);
  const int threads = threads_for(2.0 * p.B * p.NH * p.Lq * std::max<index_t>(p.Lk, 1) * (p.D + p.Dv + 8));

  for (index_t c0 = 0; c0 < kv_heads; c0 += chunk) {
    const index_t nc = std::min(chunk, kv_heads - c0), tasks = nc * group * nqt;
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
      for (index_t x = 0; x < nc; ++x)
        pack_kv(p, (c0 + x) / p.NHK, (c0 + x) % p.NHK, Bc, Dvp, pk + x * per_kv, pk + x * per_kv + kt_size);
      static thread_local AlignedBuffer<T> ws_buffer;
      T* ws = ws_buffer.get(static_cast<std::size_t>(ws_size));
      // Causal tiles further down cost more: hand them out first.
#pragma omp for schedule(dynamic, 1)
      for (index_t task = 0; task < tasks; ++task) {
        const index_t x = task / (group * nqt), hh = (task / nqt) % group, qt = nqt - 1 - task % nqt;
        const index_t kvh = c0 + x, b = kvh / p.NHK, g = kvh % p.NHK;
        cfg.forward({&p, pk + x * per_kv, pk + x * per_kv + kt_size, b, g * group + hh, qt * Br, Br, Bc, O, LSE, ws});
      }
    }
  }
}

template <class T>
void attention_backward(const AttentionProblem<T>& p, const T* O, const T* dO, const T* LSE, T* dQ, T* dK, T* dV,
                        T* dM) {
  check_problem(p, "attention_backward");
  const Config<T> cfg = config_for<T>(capability(), p.D, p.Dv);
  const index_t Br = cfg.Br, Bc = cfg.Bc;
  const index_t nqt = ceil_div(p.Lq, Br), nkb = ceil_div(p.Lk, Bc);
  fill_parallel(dQ, p.B * p.NH * p.Lq * p.D);
  if (dM) fill_parallel(dM, p.B * p.NH * p.Lq * p.Lk);
  if (p.B == 0 || p.NHK == 0 || p.Lk == 0) return;

  const index_t rows = p.B * p.NH * p.Lq;
  std::vector<T> Di(static_cast<std::size_t>(std::max<index_t>(rows, 1)));
  parallel_for(rows, 256, [&](index_t begin, index_t end) {
    for (index_t r = begin; r < end; ++r) {
      T s = 0;
      for (index_t d = 0; d < p.Dv; ++d) s += dO[r * p.Dv + d] * O[r * p.Dv + d];
      Di[r] = s;
    }
  });
  const index_t n_turns = std::max<index_t>(1, p.B * p.NH * nqt);
  std::unique_ptr<std::atomic<index_t>[]> turns(new std::atomic<index_t>[n_turns]);
  for (index_t i = 0; i < n_turns; ++i) turns[i].store(0, std::memory_order_relaxed);

  const index_t Dp = round_up(p.D, cfg.W), Dvp = round_up(p.Dv, cfg.W);
  const index_t ws_size = backward_workspace(Br, Bc, p.D, Dp, p.Dv, Dvp);
  const index_t kv_heads = p.B * p.NHK, tasks = kv_heads * nkb;
  const int threads = threads_for(5.0 * p.B * p.NH * std::max<index_t>(p.Lq, 1) * p.Lk * (p.D + p.Dv + 8));
  // Task order: key block outermost, so with a causal mask the heaviest (first) blocks go first.
#pragma omp parallel num_threads(threads)
  {
    static thread_local AlignedBuffer<T> ws_buffer;
    T* ws = ws_buffer.get(static_cast<std::size_t>(ws_size));
#pragma omp for schedule(dynamic, 1)
    for (index_t task = 0; task < tasks; ++task) {
      const index_t kb = task / kv_heads, kvh = task % kv_heads;
      cfg.backward({&p, O, dO, LSE, Di.data(), dQ, dK, dV, dM, turns.get(), kvh / p.NHK, kvh % p.NHK, kb, Br, Bc, ws});
    }
  }
}

template <class T>
void attention_exp2(const T* x, T* y, index_t n) {
  FASTDL_CHECK(n >= 0, "attention_exp2: negative size ", n);
  config_for<T>(capability(), 0, 0).exp2(x, y, n);
}

template <class T>
AttentionBlocking attention_blocking(index_t D, index_t Dv) {
  const Config<T> cfg = config_for<T>(capability(), D, Dv);
  return {cfg.MR, cfg.W, cfg.Br, cfg.Bc};
}

#define FASTDL_INSTANTIATE_ATTENTION(T)                                                                   \
  template void attention_forward<T>(const AttentionProblem<T>&, T*, T*);                               \
  template void attention_backward<T>(const AttentionProblem<T>&, const T*, const T*, const T*, T*, T*, T*, \
                                      T*);                                                              \
  template void attention_exp2<T>(const T*, T*, index_t);                                               \
  template AttentionBlocking attention_blocking<T>(index_t, index_t);
FASTDL_INSTANTIATE_ATTENTION(float)
FASTDL_INSTANTIATE_ATTENTION(double)
#undef FASTDL_INSTANTIATE_ATTENTION

}  // namespace fastdl::cpu
