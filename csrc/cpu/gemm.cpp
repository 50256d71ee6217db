// GEMM: C (M×N) = alpha · op(A) (M×K) · op(B) (K×N) + beta · C, on general strides.
//
// Algorithm: the BLIS five loops (Van Zee & van de Geijn, "BLIS", TOMS 2015; BLISlab). Around a
// register-blocked micro-kernel that computes an MR×NR tile of C from packed panels:
//   loop ic (MC rows of A)   pack A[ic:ic+MC, pc:pc+KC] into MR-row slivers   → L3 (shared by threads)
//    loop pc (KC of K)
//     loop jc (NC cols of B) pack B[pc:pc+KC, jc:jc+NC] into NR-col slivers   → L2 (one per thread)
//      loop ir (MR rows)      the A sliver (MR×KC) stays in L1 ...
//       loop jr (NR cols)     ... while B slivers (KC×NR) stream from L2 into the micro-kernel.
// The micro-kernel keeps MR×NR accumulators in registers: per k it loads NR/width vectors of B,
// broadcasts MR scalars of A and issues MR·NR/width FMAs. Vectors run along N, so C tiles of a
// row-major C are stored with plain vector stores.
//   portable: 4×8 f32, 4×4 f64 (GCC vector extensions, SSE2)   avx2: 6×16 f32, 6×8 f64 (12 of 16 ymm accumulate)
//   avx512:  12×32 f32, 12×16 f64 (24 of 32 zmm accumulate)
// Blocking (one place, `blocking_for` below): KC·MR·sizeof(T) (A sliver) ≈ 9–18 KB of the 32–48 KB
// L1; KC·NC·sizeof(T) (B block) ≈ 0.4–0.8 MB of the 1 MB L2 of Zen 4/Zen 5 (512 KB on Zen 2: the
// avx2 B block is ≈ 0.4 MB); MC·KC·sizeof(T) (A block) a few MB of the shared L3.
// Packing reads any strides (transposed, sliced, broadcast views cost no copy) and zero-pads edge
// slivers, so the micro-kernel always runs full tiles; edge tiles of C go through a small buffer.
// Threads (OpenMP): the A block is packed cooperatively, then (jc block × ir range) tasks run in
// parallel, each thread with its own B block in its own L2.
// Cost floor: 2·M·N·K FLOPs at the FMA peak of the ISA (`fastdl bench gemm` measures it); memory
// traffic is (M·K·N/NC + K·N·M/MC + 2·M·N·K/KC) elements, far below the FLOP time for N ≥ 128.
#include <algorithm>
#include <cstring>

#include "cpu/simd.h"
#include "fastdl.h"

namespace fastdl::cpu {
namespace {

// Below this many FLOPs a second thread costs more than it saves.
constexpr double kMinFlopsPerThread = 2.0 * 48 * 48 * 48;

// Everything the ISA-specific block routine needs for one (ic, pc, jc) block.
template <class T>
struct BlockArgs {
  index_t mc, nc, kc;   // sizes of this block
  index_t ir_begin, ir_end;  // MR-sliver range of the A block this task covers (in rows)
  const T* Ap;          // packed A slivers from row ir_begin on, MR·KC elements apart
  bool a_rows;          // sliver layout: true = row-major MR×KC (element (r, p) at r·KC + p),
                        //                false = k-major (element (r, p) at p·MR + r)
  const T* Bp;          // packed B block: ceil(nc/NR) slivers of kc×NR
  T* C;                 // C at (ic, jc)
  index_t rsc, csc;
  T alpha, beta;
};

template <class T>
struct Kernel {
  int MR, NR;
  index_t MC, KC, NC;
  void (*block)(const BlockArgs<T>&);
};

// acc = Σ_k A(r, k) · Bp[k·NR + c] for an MR×NR tile; C = alpha·acc + beta·C (beta == 0: no read
// of C). C is row-major with unit column stride here. A(r, k) is a[r·A_ROW + k·A_STEP]: both
// compile-time constants, so each broadcast is one load with a fixed displacement.
template <class V, int MR, int NV, int A_ROW, int A_STEP>
inline void micro_kernel(index_t kc, const typename V::T* __restrict a, const typename V::T* __restrict b,
                         typename V::T* __restrict c, index_t rsc, typename V::T alpha, typename V::T beta) {
  using T = typename V::T;
  using reg = typename V::reg;
  constexpr int W = V::width;
  reg acc[MR][NV];
#pragma GCC unroll 32
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = V::zero();
  for (index_t p = 0; p < kc; ++p) {
    reg bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = V::load(b + v * W);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r) {
      const reg ar = V::broadcast(a + r * A_ROW);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = V::fmadd(ar, bv[v], acc[r][v]);
    }
    a += A_STEP;
    b += NV * W;
  }
  const reg va = V::set1(alpha);
  if (beta == T(0)) {
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) V::store(c + r * rsc + v * W, V::mul(va, acc[r][v]));
  } else {
    const reg vb = V::set1(beta);
#pragma GCC unroll 32
    for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        T* cp = c + r * rsc + v * W;
        V::store(cp, V::fmadd(va, acc[r][v], V::mul(vb, V::load(cp))));
      }
  }
}

// The two innermost loops over one packed block. Full tiles of a unit-column-stride C are written
// in place; edge tiles (or strided C) are computed into `tile` and merged element by element.
template <class V, int MR, int NV, int KC, int A_ROW, int A_STEP>
inline void block_loops_layout(const BlockArgs<typename V::T>& g) {
  using T = typename V::T;
  constexpr int NR = NV * V::width;
  alignas(64) T tile[MR * NR];
  for (index_t ir = g.ir_begin; ir < g.ir_end; ir += MR) {
    const index_t mr = std::min<index_t>(MR, g.mc - ir);
    const T* a = g.Ap + (ir - g.ir_begin) * KC;
    for (index_t jr = 0; jr < g.nc; jr += NR) {
      const index_t nr = std::min<index_t>(NR, g.nc - jr);
      const T* b = g.Bp + jr * g.kc;
      T* c = g.C + ir * g.rsc + jr * g.csc;
      if (mr == MR && nr == NR && g.csc == 1) {
        micro_kernel<V, MR, NV, A_ROW, A_STEP>(g.kc, a, b, c, g.rsc, g.alpha, g.beta);
        continue;
      }
      micro_kernel<V, MR, NV, A_ROW, A_STEP>(g.kc, a, b, tile, NR, T(1), T(0));
      for (index_t r = 0; r < mr; ++r)
        for (index_t j = 0; j < nr; ++j) {
          T& out = c[r * g.rsc + j * g.csc];
          out = g.beta == T(0) ? g.alpha * tile[r * NR + j] : g.alpha * tile[r * NR + j] + g.beta * out;
        }
    }
  }
}

template <class V, int MR, int NV, int KC>
inline void block_loops(const BlockArgs<typename V::T>& g) {
  if (g.a_rows)
    block_loops_layout<V, MR, NV, KC, KC, 1>(g);
  else
    block_loops_layout<V, MR, NV, KC, 1, MR>(g);
}

// One entry function per (ISA, dtype): the loops and the micro-kernel compiled for that ISA.
// Micro<V, MR, NV, KC>: an MR × (NV·width) micro-kernel with k blocks of at most KC.
template <class V, int MR, int NV, int KC>
struct Micro {
  static constexpr int mr = MR, nr = NV * V::width, kc = KC;
  static void run(const BlockArgs<typename V::T>& g) { block_loops<V, MR, NV, KC>(g); }
};
using Avx512F32 = Micro<simd::Avx512F32, 12, 2, 384>;
using Avx512F64 = Micro<simd::Avx512F64, 12, 2, 256>;
using Avx2F32 = Micro<simd::Avx2F32, 6, 2, 256>;
using Avx2F64 = Micro<simd::Avx2F64, 6, 2, 256>;
using PortableF32 = Micro<simd::Portable<float>, 4, 2, 256>;
using PortableF64 = Micro<simd::Portable<double>, 4, 2, 256>;
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void block_avx512_f32(const BlockArgs<float>& g) { Avx512F32::run(g); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void block_avx512_f64(const BlockArgs<double>& g) { Avx512F64::run(g); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void block_avx2_f32(const BlockArgs<float>& g) { Avx2F32::run(g); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void block_avx2_f64(const BlockArgs<double>& g) { Avx2F64::run(g); }
FASTDL_FLATTEN void block_portable_f32(const BlockArgs<float>& g) { PortableF32::run(g); }
FASTDL_FLATTEN void block_portable_f64(const BlockArgs<double>& g) { PortableF64::run(g); }

template <class M, class T>
Kernel<T> kernel(index_t MC, index_t NC, void (*block)(const BlockArgs<T>&)) {
  return {M::mr, M::nr, MC, M::kc, NC, block};
}

// Block sizes per level and dtype, all in one place (see the header for the cache budget).
template <class T>
Kernel<T> kernel_for(CpuCapability level) {
  if constexpr (sizeof(T) == 4) {
    switch (level) {
      case CpuCapability::avx512: return kernel<Avx512F32>(3072, 512, block_avx512_f32);
      case CpuCapability::avx2: return kernel<Avx2F32>(3072, 384, block_avx2_f32);
      default: return kernel<PortableF32>(2048, 256, block_portable_f32);
    }
  } else {
    switch (level) {
      case CpuCapability::avx512: return kernel<Avx512F64>(3072, 384, block_avx512_f64);
      case CpuCapability::avx2: return kernel<Avx2F64>(3072, 192, block_avx2_f64);
      default: return kernel<PortableF64>(2048, 256, block_portable_f64);
    }
  }
}

// ---- Matrix-vector products (M == 1 or N == 1) -------------------------------------------------
// Each matrix element is used once, so packing would cost as much as the product: stream the
// matrix once instead, at memory bandwidth (the floor: K·N·sizeof(T) bytes).
//   dot form:  y[i] = Σ_k X[i·rsx + k] · v[k]     (rows of X contiguous in k), 4 rows at a time
//   axpy form: y[j] = Σ_k v[k] · X[k·rsx + j]     (rows of X contiguous in j), y block kept in L1
template <class V>
inline void rows_dot(index_t rows, index_t K, const typename V::T* X, index_t rsx, const typename V::T* v,
                     typename V::T* y) {
  using T = typename V::T;
  constexpr int W = V::width;
  index_t i = 0;
  for (; i + 4 <= rows; i += 4) {
    typename V::reg acc[4] = {V::zero(), V::zero(), V::zero(), V::zero()};
    index_t k = 0;
    for (; k + W <= K; k += W) {
      const auto vk = V::load(v + k);
#pragma GCC unroll 4
      for (int r = 0; r < 4; ++r) acc[r] = V::fmadd(V::load(X + (i + r) * rsx + k), vk, acc[r]);
    }
    for (int r = 0; r < 4; ++r) {
      T sum = V::reduce_add(acc[r]);
      for (index_t kk = k; kk < K; ++kk) sum += X[(i + r) * rsx + kk] * v[kk];
      y[i + r] = sum;
    }
  }
  for (; i < rows; ++i) {
    typename V::reg acc = V::zero();
    index_t k = 0;
    for (; k + W <= K; k += W) acc = V::fmadd(V::load(X + i * rsx + k), V::load(v + k), acc);
    T sum = V::reduce_add(acc);
    for (; k < K; ++k) sum += X[i * rsx + k] * v[k];
    y[i] = sum;
  }
}

template <class V>
inline void rows_axpy(index_t K, index_t cols, const typename V::T* X, index_t rsx, const typename V::T* v,
                      typename V::T* y) {
  using T = typename V::T;
  constexpr int W = V::width;
  for (index_t j = 0; j < cols; ++j) y[j] = T(0);
  index_t k = 0;
  // Four rows of X per pass: one load and store of y per four FMAs, four memory streams.
  for (; k + 4 <= K; k += 4) {
    const auto v0 = V::set1(v[k]), v1 = V::set1(v[k + 1]), v2 = V::set1(v[k + 2]), v3 = V::set1(v[k + 3]);
    const T *x0 = X + k * rsx, *x1 = x0 + rsx, *x2 = x1 + rsx, *x3 = x2 + rsx;
    index_t j = 0;
    for (; j + W <= cols; j += W) {
      auto acc = V::fmadd(v0, V::load(x0 + j), V::load(y + j));
      acc = V::fmadd(v1, V::load(x1 + j), acc);
      acc = V::fmadd(v2, V::load(x2 + j), acc);
      V::store(y + j, V::fmadd(v3, V::load(x3 + j), acc));
    }
    for (; j < cols; ++j) y[j] += v[k] * x0[j] + v[k + 1] * x1[j] + v[k + 2] * x2[j] + v[k + 3] * x3[j];
  }
  for (; k < K; ++k) {
    const auto vk = V::set1(v[k]);
    const T* x = X + k * rsx;
    index_t j = 0;
    for (; j + W <= cols; j += W) V::store(y + j, V::fmadd(vk, V::load(x + j), V::load(y + j)));
    for (; j < cols; ++j) y[j] += v[k] * x[j];
  }
}

template <class V>
struct MatrixVector {
  static void dot(index_t rows, index_t K, const typename V::T* X, index_t rsx, const typename V::T* v,
                  typename V::T* y) {
    rows_dot<V>(rows, K, X, rsx, v, y);
  }
  static void axpy(index_t K, index_t cols, const typename V::T* X, index_t rsx, const typename V::T* v,
                   typename V::T* y) {
    rows_axpy<V>(K, cols, X, rsx, v, y);
  }
};

template <class T>
struct MatrixVectorKernels {
  void (*dot)(index_t, index_t, const T*, index_t, const T*, T*);
  void (*axpy)(index_t, index_t, const T*, index_t, const T*, T*);
};

FASTDL_TARGET_AVX512 FASTDL_FLATTEN void dot_avx512_f32(index_t r, index_t k, const float* x, index_t s, const float* v, float* y) { MatrixVector<simd::Avx512F32>::dot(r, k, x, s, v, y); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void axpy_avx512_f32(index_t k, index_t c, const float* x, index_t s, const float* v, float* y) { MatrixVector<simd::Avx512F32>::axpy(k, c, x, s, v, y); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void dot_avx512_f64(index_t r, index_t k, const double* x, index_t s, const double* v, double* y) { MatrixVector<simd::Avx512F64>::dot(r, k, x, s, v, y); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void axpy_avx512_f64(index_t k, index_t c, const double* x, index_t s, const double* v, double* y) { MatrixVector<simd::Avx512F64>::axpy(k, c, x, s, v, y); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void dot_avx2_f32(index_t r, index_t k, const float* x, index_t s, const float* v, float* y) { MatrixVector<simd::Avx2F32>::dot(r, k, x, s, v, y); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void axpy_avx2_f32(index_t k, index_t c, const float* x, index_t s, const float* v, float* y) { MatrixVector<simd::Avx2F32>::axpy(k, c, x, s, v, y); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void dot_avx2_f64(index_t r, index_t k, const double* x, index_t s, const double* v, double* y) { MatrixVector<simd::Avx2F64>::dot(r, k, x, s, v, y); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void axpy_avx2_f64(index_t k, index_t c, const double* x, index_t s, const double* v, double* y) { MatrixVector<simd::Avx2F64>::axpy(k, c, x, s, v, y); }
FASTDL_FLATTEN void dot_portable_f32(index_t r, index_t k, const float* x, index_t s, const float* v, float* y) { MatrixVector<simd::Portable<float>>::dot(r, k, x, s, v, y); }
FASTDL_FLATTEN void axpy_portable_f32(index_t k, index_t c, const float* x, index_t s, const float* v, float* y) { MatrixVector<simd::Portable<float>>::axpy(k, c, x, s, v, y); }
FASTDL_FLATTEN void dot_portable_f64(index_t r, index_t k, const double* x, index_t s, const double* v, double* y) { MatrixVector<simd::Portable<double>>::dot(r, k, x, s, v, y); }
FASTDL_FLATTEN void axpy_portable_f64(index_t k, index_t c, const double* x, index_t s, const double* v, double* y) { MatrixVector<simd::Portable<double>>::axpy(k, c, x, s, v, y); }

template <class T>
MatrixVectorKernels<T> matrix_vector_for(CpuCapability level) {
  if constexpr (sizeof(T) == 4) {
    switch (level) {
      case CpuCapability::avx512: return {dot_avx512_f32, axpy_avx512_f32};
      case CpuCapability::avx2: return {dot_avx2_f32, axpy_avx2_f32};
      default: return {dot_portable_f32, axpy_portable_f32};
    }
  } else {
    switch (level) {
      case CpuCapability::avx512: return {dot_avx512_f64, axpy_avx512_f64};
      case CpuCapability::avx2: return {dot_avx2_f64, axpy_avx2_f64};
      default: return {dot_portable_f64, axpy_portable_f64};
    }
  }
}

// y (length L, stride ys) = alpha · op(X)·v + beta · y for the M == 1 and N == 1 cases; returns
// false when the matrix has no unit stride (the general path handles it).
template <class T>
bool matrix_vector(index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa, const T* B,
                   index_t rsb, index_t csb, T beta, T* C, index_t rsc, index_t csc, int max_threads) {
  bool dot_form;
  const T *X, *v;
  index_t rsx, vs, L, ys;
  if (M == 1 && (csb == 1 || rsb == 1)) {
    dot_form = csb != 1, X = B, rsx = dot_form ? csb : rsb, v = A, vs = csa, L = N, ys = csc;
  } else if (N == 1 && (csa == 1 || rsa == 1)) {
    dot_form = csa == 1, X = A, rsx = dot_form ? rsa : csa, v = B, vs = rsb, L = M, ys = rsc;
  } else {
    return false;
  }
  static thread_local AlignedBuffer<T> v_buffer, y_buffer;
  if (vs != 1) {
    T* packed = v_buffer.get(static_cast<std::size_t>(K));
    for (index_t k = 0; k < K; ++k) packed[k] = v[k * vs];
    v = packed;
  }
  T* y = y_buffer.get(static_cast<std::size_t>(L));
  const MatrixVectorKernels<T> mv = matrix_vector_for<T>(capability());
  constexpr index_t kColumnBlock = 2048 / sizeof(T) * 4;  // 8 KB of y: stays in L1
  const index_t grain = std::max<index_t>(64, static_cast<index_t>(kMinFlopsPerThread / (2.0 * std::max<index_t>(K, 1))));
  const auto body = [&](index_t begin, index_t end) {
    if (dot_form) {
      mv.dot(end - begin, K, X + begin * rsx, rsx, v, y + begin);
    } else {
      for (index_t j = begin; j < end; j += kColumnBlock)
        mv.axpy(K, std::min(kColumnBlock, end - j), X + j, rsx, v, y + j);
    }
  };
  if (max_threads > 1 && L >= 2 * grain) {
    const int team = static_cast<int>(std::min<index_t>(max_threads, L / grain));
#pragma omp parallel num_threads(team)
    {
      const index_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const index_t chunk = round_up(ceil_div(L, nt), 16);
      const index_t begin = std::min(L, t * chunk), end = std::min(L, begin + chunk);
      if (begin < end) body(begin, end);
    }
  } else {
    body(0, L);
  }
  for (index_t i = 0; i < L; ++i) {
    T& out = C[i * ys];
    out = beta == T(0) ? alpha * y[i] : alpha * y[i] + beta * out;
  }
  return true;
}

// A[i0:i0+mr, p0:p0+kc] (op(A) coordinates) → one sliver, zero rows past mr. Rows contiguous in
// k (csa == 1, a row-major A): row-major layout, one memcpy per row, dst[r·KC + p]. Otherwise the
// k-major layout dst[p·MR + r] (one memcpy per k when A is transposed, rsa == 1).
inline bool a_sliver_rows(index_t csa) { return csa == 1; }

template <class T>
void pack_a_sliver(int MR, index_t KC, index_t mr, index_t kc, const T* A, index_t rsa, index_t csa, T* dst) {
  if (a_sliver_rows(csa)) {
    for (index_t r = 0; r < mr; ++r) std::memcpy(dst + r * KC, A + r * rsa, sizeof(T) * kc);
    for (index_t r = mr; r < MR; ++r) std::fill(dst + r * KC, dst + r * KC + kc, T(0));
    return;
  }
  if (rsa == 1 && mr == MR) {
    for (index_t p = 0; p < kc; ++p) std::memcpy(dst + p * MR, A + p * csa, sizeof(T) * MR);
    return;
  }
  for (index_t p = 0; p < kc; ++p) {
    for (index_t r = 0; r < mr; ++r) dst[p * MR + r] = A[r * rsa + p * csa];
    for (index_t r = mr; r < MR; ++r) dst[p * MR + r] = T(0);
  }
}

// B[p0:p0+kc, j0:j0+nr] → dst[p·NR + c], zero columns past nr.
template <class T>
void pack_b_sliver(int NR, index_t nr, index_t kc, const T* B, index_t rsb, index_t csb, T* dst) {
  if (csb == 1) {
    for (index_t p = 0; p < kc; ++p) {
      std::memcpy(dst + p * NR, B + p * rsb, sizeof(T) * nr);
      if (nr < NR) std::fill(dst + p * NR + nr, dst + (p + 1) * NR, T(0));
    }
    return;
  }
  if (rsb == 1) {
    // A transpose (B = Wᵀ in linear): 4×4 tiles read along B's columns and written along the
    // sliver's rows keep both sides contiguous (a third off small products, where packing rivals
    // the arithmetic).
    index_t c = 0;
    for (; c + 4 <= nr; c += 4) {
      const T* s0 = B + c * csb;
      index_t p = 0;
      for (; p + 4 <= kc; p += 4) {
        T t[4][4];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j) t[i][j] = s0[i * csb + p + j];
        for (int j = 0; j < 4; ++j)
          for (int i = 0; i < 4; ++i) dst[(p + j) * NR + c + i] = t[i][j];
      }
      for (; p < kc; ++p)
        for (int i = 0; i < 4; ++i) dst[p * NR + c + i] = s0[i * csb + p];
    }
    for (; c < nr; ++c) {
      const T* src = B + c * csb;
      for (index_t p = 0; p < kc; ++p) dst[p * NR + c] = src[p];
    }
  } else {
    for (index_t p = 0; p < kc; ++p)
      for (index_t c = 0; c < nr; ++c) dst[p * NR + c] = B[p * rsb + c * csb];
  }
  if (nr < NR)
    for (index_t p = 0; p < kc; ++p) std::fill(dst + p * NR + nr, dst + (p + 1) * NR, T(0));
}

template <class T>
void scale_c(index_t M, index_t N, T beta, T* C, index_t rsc, index_t csc) {
  for (index_t i = 0; i < M; ++i)
    for (index_t j = 0; j < N; ++j) {
      T& c = C[i * rsc + j * csc];
      c = beta == T(0) ? T(0) : beta * c;
    }
}

// The five loops. `pack_b(pc, kc, j0, nr, NR, dst)` writes the kc×NR sliver of op(B) at
// (pc, j0) into dst (nr ≤ NR valid columns, the rest zero): a strided B, or an operand built on
// the fly (conv2d's im2col panels).
template <class T, class PackB>
void gemm_driver(index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa,
                 const PackB& pack_b, T beta, T* C, index_t rsc, index_t csc, int max_threads) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) {
    scale_c(M, N, beta, C, rsc, csc);
    return;
  }
  const Kernel<T> k = kernel_for<T>(capability());
  const double flops = 2.0 * M * N * K;
  const int threads = static_cast<int>(std::min<double>(max_threads, std::max(1.0, flops / kMinFlopsPerThread)));
  const bool a_rows = a_sliver_rows(csa);
  const index_t MC = std::min(k.MC, round_up(M, k.MR));
  // Tasks: column blocks of B at most NC wide, as many as a multiple of the thread count (three
  // blocks on two threads would leave one thread a third of the time idle), of equal width; when
  // even NR-wide blocks are too few, the A slivers are split between tasks as well.
  const index_t balanced_blocks = round_up(ceil_div(N, k.NC), threads);
  const index_t nc_block = std::min(k.NC, std::max<index_t>(k.NR, round_up(ceil_div(N, balanced_blocks), k.NR)));
  const index_t col_blocks = ceil_div(N, nc_block);
  // With a single column block nothing reuses a packed A block, so each task packs its A slivers
  // just before use into an L1-sized buffer of its own (the sliver then comes from memory once,
  // straight into L1) instead of packing the whole block into L3 first.
  const bool shared_a = col_blocks > 1;
  static thread_local AlignedBuffer<T> a_buffer;
  T* Ap = shared_a ? a_buffer.get(static_cast<std::size_t>(round_up(MC, k.MR) * k.KC)) : nullptr;

  for (index_t ic = 0; ic < M; ic += MC) {
    const index_t mc = std::min(MC, M - ic);
    const index_t a_slivers = ceil_div(mc, k.MR);
    const index_t row_parts = std::min<index_t>(a_slivers, col_blocks >= threads ? 1 : ceil_div(threads, col_blocks));
    const index_t slivers_per_part = ceil_div(a_slivers, row_parts);
    const index_t tasks = col_blocks * row_parts;
    const int team = static_cast<int>(std::min<index_t>(threads, std::max(tasks, shared_a ? a_slivers : 1)));
    for (index_t pc = 0; pc < K; pc += k.KC) {
      const index_t kc = std::min(k.KC, K - pc);
      const T beta_block = pc == 0 ? beta : T(1);
      const auto pack_a = [&](index_t s, T* dst) {
        const index_t i0 = s * k.MR;
        pack_a_sliver(k.MR, k.KC, std::min<index_t>(k.MR, mc - i0), kc, A + (ic + i0) * rsa + pc * csa, rsa, csa,
                      dst);
      };
      const auto run_task = [&](index_t t) {
        static thread_local AlignedBuffer<T> b_buffer, sliver_buffer;
        T* Bp = b_buffer.get(static_cast<std::size_t>(round_up(nc_block, k.NR) * k.KC));
        const index_t jc = (t / row_parts) * nc_block, part = t % row_parts;
        const index_t nc = std::min(nc_block, N - jc);
        for (index_t j0 = 0; j0 < nc; j0 += k.NR)
          pack_b(pc, kc, jc + j0, std::min<index_t>(k.NR, nc - j0), k.NR, Bp + j0 * kc);
        const index_t s_begin = std::min(part * slivers_per_part, a_slivers);
        const index_t s_end = std::min(s_begin + slivers_per_part, a_slivers);
        BlockArgs<T> g{mc, nc, kc, 0, 0, nullptr, a_rows, Bp, C + ic * rsc + jc * csc, rsc, csc, alpha, beta_block};
        if (shared_a) {
          g.ir_begin = s_begin * k.MR, g.ir_end = std::min(s_end * k.MR, mc), g.Ap = Ap + g.ir_begin * k.KC;
          if (g.ir_begin < g.ir_end) k.block(g);
          return;
        }
        T* sliver = sliver_buffer.get(static_cast<std::size_t>(k.MR * k.KC));
        for (index_t s = s_begin; s < s_end; ++s) {
          pack_a(s, sliver);
          g.ir_begin = s * k.MR, g.ir_end = std::min(g.ir_begin + k.MR, mc), g.Ap = sliver;
          k.block(g);
        }
      };
      // Serial without a team: no parallel region (and no orphaned worksharing that would bind to
      // a caller's region, e.g. gemm_batched running one product per thread).
      if (team > 1) {
#pragma omp parallel num_threads(team)
        {
          if (shared_a) {
#pragma omp for schedule(static)
            for (index_t s = 0; s < a_slivers; ++s) pack_a(s, Ap + s * k.MR * k.KC);
          }
#pragma omp for schedule(static)
          for (index_t t = 0; t < tasks; ++t) run_task(t);
        }
      } else {
        if (shared_a)
          for (index_t s = 0; s < a_slivers; ++s) pack_a(s, Ap + s * k.MR * k.KC);
        for (index_t t = 0; t < tasks; ++t) run_task(t);
      }
    }
  }
}

template <class T>
void gemm_with_threads(index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa,
                       const T* B, index_t rsb, index_t csb, T beta, T* C, index_t rsc, index_t csc,
                       int max_threads) {
  if ((M == 1 || N == 1) && K > 0 && alpha != T(0) &&
      matrix_vector(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, max_threads))
    return;
  const auto pack_b = [=](index_t pc, index_t kc, index_t j0, index_t nr, int NR, T* dst) {
    pack_b_sliver(NR, nr, kc, B + pc * rsb + j0 * csb, rsb, csb, dst);
  };
  gemm_driver(M, N, K, alpha, A, rsa, csa, pack_b, beta, C, rsc, csc, max_threads);
}

}  // namespace

template <class T>
void gemm_packed_b(index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa,
                   const PackBFunction<T>& pack_b, T beta, T* C, index_t rsc, index_t csc) {
  FASTDL_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=", M, " N=", N, " K=", K);
  gemm_driver(M, N, K, alpha, A, rsa, csa, pack_b, beta, C, rsc, csc,
              omp_in_parallel() ? 1 : omp_get_max_threads());
}

template <class T>
void gemm_strided(index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa,
                  const T* B, index_t rsb, index_t csb, T beta, T* C, index_t rsc, index_t csc) {
  FASTDL_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: negative size M=", M, " N=", N, " K=", K);
  gemm_with_threads(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc,
                    omp_in_parallel() ? 1 : omp_get_max_threads());
}

template <class T>
void gemm(bool transA, bool transB, index_t M, index_t N, index_t K, T alpha, const T* A, index_t lda,
          const T* B, index_t ldb, T beta, T* C, index_t ldc) {
  FASTDL_CHECK(lda >= std::max<index_t>(1, transA ? M : K) && ldb >= std::max<index_t>(1, transB ? K : N) &&
                   ldc >= std::max<index_t>(1, N),
               "gemm: leading dimensions too small: lda=", lda, " ldb=", ldb, " ldc=", ldc, " for M=", M,
               " N=", N, " K=", K);
  gemm_strided(M, N, K, alpha, A, transA ? 1 : lda, transA ? lda : 1, B, transB ? 1 : ldb, transB ? ldb : 1,
               beta, C, ldc, index_t{1});
}

template <class T>
void gemm_batched(index_t batch, const index_t* offA, const index_t* offB, const index_t* offC, index_t M,
                  index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa, const T* B, index_t rsb,
                  index_t csb, T beta, T* C, index_t rsc, index_t csc) {
  FASTDL_CHECK(batch >= 0 && M >= 0 && N >= 0 && K >= 0, "gemm: negative size batch=", batch, " M=", M,
               " N=", N, " K=", K);
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const double flops = 2.0 * M * N * K;
  // One product per thread when a single product is too small to share; otherwise in turn.
  if (threads > 1 && batch > 1 && flops < 64 * kMinFlopsPerThread) {
#pragma omp parallel for schedule(static) num_threads(threads)
    for (index_t b = 0; b < batch; ++b)
      gemm_with_threads(M, N, K, alpha, A + offA[b], rsa, csa, B + offB[b], rsb, csb, beta, C + offC[b], rsc,
                        csc, 1);
    return;
  }
  for (index_t b = 0; b < batch; ++b)
    gemm_with_threads(M, N, K, alpha, A + offA[b], rsa, csa, B + offB[b], rsb, csb, beta, C + offC[b], rsc, csc,
                      threads);
}

template <class T>
GemmBlocking gemm_blocking() {
  const Kernel<T> k = kernel_for<T>(capability());
  return {k.MR, k.NR, k.MC, k.KC, k.NC};
}

#define FASTDL_INSTANTIATE_GEMM(T)                                                                            \
  template void gemm<T>(bool, bool, index_t, index_t, index_t, T, const T*, index_t, const T*, index_t, T, T*, \
                        index_t);                                                                             \
  template void gemm_strided<T>(index_t, index_t, index_t, T, const T*, index_t, index_t, const T*, index_t,  \
                                index_t, T, T*, index_t, index_t);                                            \
  template void gemm_batched<T>(index_t, const index_t*, const index_t*, const index_t*, index_t, index_t,     \
                                index_t, T, const T*, index_t, index_t, const T*, index_t, index_t, T, T*,    \
                                index_t, index_t);                                                            \
  template void gemm_packed_b<T>(index_t, index_t, index_t, T, const T*, index_t, index_t,                  \
                                 const PackBFunction<T>&, T, T*, index_t, index_t);                           \
  template GemmBlocking gemm_blocking<T>();
FASTDL_INSTANTIATE_GEMM(float)
FASTDL_INSTANTIATE_GEMM(double)
#undef FASTDL_INSTANTIATE_GEMM

// ---- Caller-packed operands (conv2d's implicit GEMM) -----------------------------------------------
// The packing formats and the micro-kernel loops of the five-loop driver, for callers that build
// the packed panels themselves and run their own outer loops (tiles of an image, their own threads).

template <class T>
void gemm_pack_a(index_t mc, index_t kc, const T* A, index_t rsa, index_t csa, T* Ap) {
  const Kernel<T> k = kernel_for<T>(capability());
  FASTDL_CHECK(kc <= k.KC, "gemm_pack_a: kc ", kc, " exceeds KC ", k.KC);
  // The k-major sliver layout (element (r, p) at p·MR + r), slivers MR·KC apart.
  for (index_t i0 = 0; i0 < mc; i0 += k.MR) {
    const index_t mr = std::min<index_t>(k.MR, mc - i0);
    T* dst = Ap + i0 * k.KC;
    const T* src = A + i0 * rsa;
    for (index_t p = 0; p < kc; ++p) {
      for (index_t r = 0; r < mr; ++r) dst[p * k.MR + r] = src[r * rsa + p * csa];
      for (index_t r = mr; r < k.MR; ++r) dst[p * k.MR + r] = T(0);
    }
  }
}

template <class T>
void gemm_pack_b(index_t kc, index_t nc, const T* B, index_t rsb, index_t csb, T* Bp) {
  const int NR = kernel_for<T>(capability()).NR;
  for (index_t j0 = 0; j0 < nc; j0 += NR)
    pack_b_sliver(NR, std::min<index_t>(NR, nc - j0), kc, B + j0 * csb, rsb, csb, Bp + j0 * kc);
}

template <class T>
void gemm_packed_block(index_t mc, index_t nc, index_t kc, T alpha, const T* Ap, const T* Bp, T beta, T* C,
                       index_t rsc, index_t csc) {
  if (mc <= 0 || nc <= 0) return;
  if (kc <= 0) {
    scale_c(mc, nc, beta, C, rsc, csc);
    return;
  }
  const Kernel<T> k = kernel_for<T>(capability());
  FASTDL_CHECK(kc <= k.KC, "gemm_packed_block: kc ", kc, " exceeds KC ", k.KC);
  k.block(BlockArgs<T>{mc, nc, kc, 0, mc, Ap, false, Bp, C, rsc, csc, alpha, beta});
}

#define FASTDL_INSTANTIATE_GEMM_PACKED(T)                                                              \
  template void gemm_pack_a<T>(index_t, index_t, const T*, index_t, index_t, T*);                     \
  template void gemm_pack_b<T>(index_t, index_t, const T*, index_t, index_t, T*);                     \
  template void gemm_packed_block<T>(index_t, index_t, index_t, T, const T*, const T*, T, T*, index_t, \
                                     index_t);
FASTDL_INSTANTIATE_GEMM_PACKED(float)
FASTDL_INSTANTIATE_GEMM_PACKED(double)
#undef FASTDL_INSTANTIATE_GEMM_PACKED

}  // namespace fastdl::cpu
