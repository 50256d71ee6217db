// GEMM on NVIDIA GPUs: C (M×N) = alpha · op(A) · op(B) + beta · C, batched, A and B read along
// a unit stride (row- or column-major, any leading dimension), C on any strides.
// CUDA cores (float32, float64): block tile BM×BN×BK with the A and B tiles k-major in shared
//   memory ([k][m], [k][n], rows padded by 16 bytes), double-buffered through registers (the next
//   tile is loaded while the current one is multiplied; one __syncthreads per tile), 16-byte
//   vector loads along the contiguous dimension. Each warp owns 64×32 of C, each thread an 8×8
//   register block (two 4-wide strips in m and in n, each read as one 16-byte vector).
//   float 128×128×8, 256 threads: 2·8·(132+132)·4 B = 17 KB shared, 158–168 registers (no
//   spills, ptxas -v) → one block of 8 warps per H100 SM (64 K registers, 228 KB shared).
//   64×64×16 tiles (64 threads) when the 128×128 grid would leave SMs idle; float64 64×64×8.
// Tensor cores (TF32, float16, bfloat16; float32 accumulation): 128×128 block tile, BK = 64 bytes
//   of k, 8 warps of 64×32 (4×2 wmma 16×16 fragments → mma.sync), a 4-stage cp.async pipeline
//   with tiles kept in their operand's orientation (the fragment layout absorbs transposes),
//   zero-filled edges. 4 stages × ≤ 20 KB = 80 KB shared (reused for the 66 KB float32 epilogue
//   tile), ≤ 255 registers (64 accumulators) → one block of 8 warps per SM.
// Cost floor: 2·M·N·K FLOPs; (M·K + K·N + 2·M·N)·sizeof(T) bytes.
// Reference: V. Volkov & J. Demmel, "Benchmarking GPUs to tune dense linear algebra" (SC'08);
//   CUTLASS's warp-tiled SGEMM and multistage tensor-core GEMM (github.com/NVIDIA/cutlass).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "cuda/cuda_common.cuh"
#include "fastdl.h"

namespace fastdl::cuda {
namespace {

// ---- shared pieces ----------------------------------------------------------------------------

// Per-launch batch description, passed by value.
struct Batch {
  int ndim;
  index_t count;
  index_t size[kMaxBatchDims], a[kMaxBatchDims], b[kMaxBatchDims], c[kMaxBatchDims];
};

__device__ __forceinline__ void batch_offsets(const Batch& batch, index_t z, index_t& oa, index_t& ob,
                                              index_t& oc) {
  oa = ob = oc = 0;
  for (int d = batch.ndim - 1; d >= 0; --d) {
    const index_t i = z % batch.size[d];
    z /= batch.size[d];
    oa += i * batch.a[d], ob += i * batch.b[d], oc += i * batch.c[d];
  }
}

// One operand as seen by a tile loader: element (x, k) is p[x*sx + k*sk] for x < X (the M or N
// side) and k < K. `vec` says 16-byte vector loads are safe along the contiguous dimension (unit
// stride there, 16-byte aligned base, every other stride a multiple of the vector width).
template <class T>
struct Operand {
  const T* p;
  index_t sx, sk, X;
  bool vec;
};

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// ---- CUDA cores: float32, float64 ---------------------------------------------------------------

template <class T>
struct Vec16;
template <>
struct Vec16<float> {
  using type = float4;
  static constexpr int n = 4;
};
template <>
struct Vec16<double> {
  using type = double2;
  static constexpr int n = 2;
};

// Four consecutive shared-memory values (16-byte aligned) into registers.
__device__ __forceinline__ void load4(const float* s, float* r) {
  const float4 v = *reinterpret_cast<const float4*>(s);
  r[0] = v.x, r[1] = v.y, r[2] = v.z, r[3] = v.w;
}
__device__ __forceinline__ void load4(const double* s, double* r) {
  const double2 u = *reinterpret_cast<const double2*>(s), v = *reinterpret_cast<const double2*>(s + 2);
  r[0] = u.x, r[1] = u.y, r[2] = v.x, r[3] = v.y;
}

template <class T, int BM_, int BN_, int BK_>
struct SimtConfig {
  using type = T;
  static constexpr int BM = BM_, BN = BN_, BK = BK_;
  static constexpr int WARPS_N = BN / 32, THREADS = 32 * (BM / 64) * WARPS_N;
  static constexpr int PAD = 16 / sizeof(T);  // keeps rows 16-byte aligned, shifts banks
  static constexpr int MIN_BLOCKS = 1;
};

// Stages a BK × BX tile of an operand (tile rows x < X, columns k0 … k0+BK-1) in registers, then
// writes it k-major into shared memory S[k][x] (row length BX + PAD); out-of-range elements are 0.
// Items are runs of V elements along the operand's unit-stride dimension (one 16-byte load when
// op.vec, else V element loads). A thread's items are fixed: the first at (x_t, k_t), the next
// ones a constant step away, so a tile costs one pointer multiply plus an add per item.
template <class T, int BX, int BK, int NT, int PAD>
struct SimtLoader {
  static constexpr int V = Vec16<T>::n;
  static constexpr int L = BX * BK / NT;  // elements per thread
  static constexpr int XV = BX / V, KV = BK / V;
  static_assert(L % V == 0 && NT % XV == 0 && NT % KV == 0, "tile must split evenly");
  using VT = typename Vec16<T>::type;

  bool along_x, vec;
  int x_t, k_t;
  const T* first;    // element (x_t, k_t) of the k-tile starting at k = 0
  index_t sk, step;  // k stride; pointer distance between consecutive items
  int X;             // rows of the tile inside the matrix (≤ BX)
  T r[L];

  __device__ __forceinline__ SimtLoader(const Operand<T>& op, const T* p, int tid)
      : along_x(op.sx == 1), vec(op.vec), sk(op.sk), X(static_cast<int>(op.X < BX ? op.X : BX)) {
    if (along_x) {
      x_t = (tid % XV) * V, k_t = tid / XV, step = (NT / XV) * op.sk;
    } else {
      x_t = tid / KV, k_t = (tid % KV) * V, step = (NT / KV) * op.sx;
    }
    first = p + x_t * op.sx + k_t * op.sk;
  }

  __device__ __forceinline__ void load(int k0, int K) {
    const T* tile = first + k0 * sk;
    if (along_x) {
      const bool full_x = vec && x_t + V <= X;
#pragma unroll
      for (int i = 0; i < L / V; ++i) {
        const int gk = k0 + k_t + i * (NT / XV);
        const T* src = tile + i * step;
        if (gk < K && full_x) {
          *reinterpret_cast<VT*>(&r[i * V]) = *reinterpret_cast<const VT*>(src);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) r[i * V + j] = gk < K && x_t + j < X ? src[j] : T(0);
        }
      }
    } else {
      const int gk = k0 + k_t;
      const bool full_k = vec && gk + V <= K;
#pragma unroll
      for (int i = 0; i < L / V; ++i) {
        const bool in_x = x_t + i * (NT / KV) < X;
        const T* src = tile + i * step;
        if (in_x && full_k) {
          *reinterpret_cast<VT*>(&r[i * V]) = *reinterpret_cast<const VT*>(src);
        } else {
#pragma unroll
          for (int j = 0; j < V; ++j) r[i * V + j] = in_x && gk + j < K ? src[j] : T(0);
        }
      }
    }
  }

  __device__ __forceinline__ void store(T* s) const {
    constexpr int LD = BX + PAD;
    if (along_x) {
#pragma unroll
      for (int i = 0; i < L / V; ++i)
        *reinterpret_cast<VT*>(&s[(k_t + i * (NT / XV)) * LD + x_t]) = *reinterpret_cast<const VT*>(&r[i * V]);
    } else {
#pragma unroll
      for (int i = 0; i < L / V; ++i)
#pragma unroll
        for (int j = 0; j < V; ++j) s[(k_t + j) * LD + x_t + i * (NT / KV)] = r[i * V + j];
    }
  }
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::THREADS, Cfg::MIN_BLOCKS)
    gemm_simt_kernel(index_t M, index_t N, index_t K, typename Cfg::type alpha, Operand<typename Cfg::type> A,
                     Operand<typename Cfg::type> B, typename Cfg::type beta, typename Cfg::type* C, index_t rsc,
                     index_t csc, Batch batch) {
  using T = typename Cfg::type;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, NT = Cfg::THREADS, PAD = Cfg::PAD;
  constexpr int LDA = BM + PAD, LDB = BN + PAD;
  __shared__ __align__(16) T As[2][BK * LDA];
  __shared__ __align__(16) T Bs[2][BK * LDB];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // Warp tile 64×32; lane (r, c) = (lane / 4, lane % 4) owns rows {4r…4r+3, 32+4r…} and
  // columns {4c…4c+3, 16+4c…} of it: every operand read is one 16-byte vector, and a warp's
  // reads of one k row touch 8 (A) or 4 (B) distinct vectors, broadcast to the other lanes.
  const int wm = (warp / Cfg::WARPS_N) * 64, wn = (warp % Cfg::WARPS_N) * 32;
  const int tm = (lane / 4) * 4, tn = (lane % 4) * 4;
  const index_t m0 = static_cast<index_t>(blockIdx.y) * BM, n0 = static_cast<index_t>(blockIdx.x) * BN;
  const int KT = static_cast<int>((K + BK - 1) / BK), Ki = static_cast<int>(K);  // K < 2^31 (host check)

  for (index_t z = blockIdx.z; z < batch.count; z += gridDim.z) {
    index_t oa, ob, oc;
    batch_offsets(batch, z, oa, ob, oc);
    const T* pa = A.p + oa + m0 * A.sx;
    const T* pb = B.p + ob + n0 * B.sx;
    Operand<T> a = A, b = B;
    a.X = A.X - m0, b.X = B.X - n0;
    SimtLoader<T, BM, BK, NT, PAD> la(a, pa, tid);
    SimtLoader<T, BN, BK, NT, PAD> lb(b, pb, tid);
    T acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = T(0);

    if (KT > 0) {
      la.load(0, Ki);
      lb.load(0, Ki);
      la.store(As[0]);
      lb.store(Bs[0]);
      __syncthreads();
    }
    for (int kt = 0; kt < KT; ++kt) {
      const int cur = kt & 1;
      const bool more = kt + 1 < KT;
      if (more) {  // the next tile travels from global memory while this one is multiplied
        la.load((kt + 1) * BK, Ki);
        lb.load((kt + 1) * BK, Ki);
      }
      const T* as = As[cur];
      const T* bs = Bs[cur];
#pragma unroll
      for (int k = 0; k < BK; ++k) {
        T ra[8], rb[8];
        load4(&as[k * LDA + wm + tm], ra);
        load4(&as[k * LDA + wm + 32 + tm], ra + 4);
        load4(&bs[k * LDB + wn + tn], rb);
        load4(&bs[k * LDB + wn + 16 + tn], rb + 4);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int j = 0; j < 8; ++j) acc[i][j] = fma(ra[i], rb[j], acc[i][j]);
      }
      // The other buffer was last read in iteration kt - 1, which every thread has finished
      // (the __syncthreads below ended it), so it can be overwritten now.
      if (more) {
        la.store(As[cur ^ 1]);
        lb.store(Bs[cur ^ 1]);
      }
      __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const index_t gm = m0 + wm + (i < 4 ? tm + i : 32 + tm + i - 4);
      if (gm >= M) continue;
      T* row = C + oc + gm * rsc;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const index_t gn = n0 + wn + (j < 4 ? tn + j : 16 + tn + j - 4);
        if (gn >= N) continue;
        T* c = row + gn * csc;
        *c = beta == T(0) ? alpha * acc[i][j] : alpha * acc[i][j] + beta * *c;
      }
    }
  }
}

// ---- tensor cores: TF32, float16, bfloat16 ------------------------------------------------------

namespace wmma = nvcuda::wmma;

// In: the element type in memory; Frag: the wmma fragment element type; WK: the k of one mma.
template <class In>
struct TcTraits;
template <>
struct TcTraits<float> {
  using Frag = wmma::precision::tf32;
  using Out = float;
  static constexpr int WK = 8;
};
template <>
struct TcTraits<__half> {
  using Frag = __half;
  using Out = __half;
  static constexpr int WK = 16;
};
template <>
struct TcTraits<__nv_bfloat16> {
  using Frag = __nv_bfloat16;
  using Out = __nv_bfloat16;
  static constexpr int WK = 16;
};

constexpr int TC_BM = 128, TC_BN = 128, TC_THREADS = 256, TC_STAGES = 4;

// Shared-memory geometry of one operand tile: k-major tiles are [x][k] (row = BK + PAD), the
// others [k][x] (row = BX + PAD). PAD is 16 bytes, so every 16×16 fragment starts 32-byte
// aligned (wmma's requirement) and consecutive rows fall on different banks.
template <class In, int BX, bool KMAJOR>
struct TcTile {
  static constexpr int BK = 64 / sizeof(In), PAD = 16 / sizeof(In), V = 16 / sizeof(In);
  static constexpr int LD = KMAJOR ? BK + PAD : BX + PAD;
  static constexpr int ELEMS = KMAJOR ? BX * LD : BK * LD;
  static constexpr int BYTES = ELEMS * static_cast<int>(sizeof(In));
  static_assert(BYTES % 128 == 0, "stages must stay 128-byte aligned");

  // Issues the copies of k-tile k0 into s, in runs of V elements along the unit-stride
  // dimension (k for KMAJOR tiles, x otherwise): cp.async 16-byte copies when op.vec (partial
  // runs zero-filled through the src-size operand), else element loads and shared stores. Either
  // way nothing in s is read before the caller's cp.async.wait_group + __syncthreads.
  __device__ __forceinline__ static void load(const Operand<In>& op, const In* p, int k0, int K, In* s, int tid) {
    constexpr int RUNS = BX * BK / V;
    static_assert(RUNS % TC_THREADS == 0, "tile must split evenly");
#pragma unroll
    for (int i = 0; i < RUNS / TC_THREADS; ++i) {
      const int v = tid + i * TC_THREADS;
      const int x = KMAJOR ? v / (BK / V) : (v % (BX / V)) * V;
      const int k = KMAJOR ? (v % (BK / V)) * V : v / (BX / V);
      const int gk = k0 + k;
      // Elements of the run inside the matrix (0 … V); op.X is clipped to the tile.
      const int valid = KMAJOR ? (x < op.X ? min(V, max(K - gk, 0)) : 0)
                               : (gk < K ? min(V, max(static_cast<int>(op.X) - x, 0)) : 0);
      const In* src = p + x * op.sx + gk * op.sk;
      In* dst = KMAJOR ? s + x * LD + k : s + k * LD + x;
      if (op.vec) {
        const unsigned saddr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
        const int bytes = valid * static_cast<int>(sizeof(In));
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(saddr), "l"(bytes ? src : p),
                     "r"(bytes)
                     : "memory");
      } else {
#pragma unroll
        for (int j = 0; j < V; ++j) dst[j] = j < valid ? src[j] : from_float<In>(0.0f);
      }
    }
  }
};

template <class In, bool A_K, bool B_K>
__global__ void __launch_bounds__(TC_THREADS, 1)
    gemm_tc_kernel(index_t M, index_t N, index_t K, float alpha, Operand<In> A, Operand<In> B, float beta,
                   typename TcTraits<In>::Out* C, index_t rsc, index_t csc, Batch batch) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  using Tr = TcTraits<In>;
  using Out = typename Tr::Out;
  using TA = TcTile<In, TC_BM, A_K>;
  using TB = TcTile<In, TC_BN, B_K>;
  constexpr int BK = TA::BK, WK = Tr::WK, STAGE = TA::ELEMS + TB::ELEMS;
  constexpr int LDC = TC_BN + 4;
  using LayoutA = typename std::conditional<A_K, wmma::row_major, wmma::col_major>::type;
  using LayoutB = typename std::conditional<B_K, wmma::col_major, wmma::row_major>::type;
  extern __shared__ __align__(128) unsigned char tc_smem[];
  In* stages = reinterpret_cast<In*>(tc_smem);
  float* cs = reinterpret_cast<float*>(tc_smem);  // the epilogue tile, after the last stage is read

  const int tid = threadIdx.x, warp = tid / 32;
  const int wm = (warp / 4) * 64, wn = (warp % 4) * 32;  // 2×4 warps of 64×32
  const index_t m0 = static_cast<index_t>(blockIdx.y) * TC_BM, n0 = static_cast<index_t>(blockIdx.x) * TC_BN;
  const int KT = static_cast<int>((K + BK - 1) / BK), Ki = static_cast<int>(K);  // K < 2^31 (host check)

  for (index_t z = blockIdx.z; z < batch.count; z += gridDim.z) {
    index_t oa, ob, oc;
    batch_offsets(batch, z, oa, ob, oc);
    const In* pa = A.p + oa + m0 * A.sx;
    const In* pb = B.p + ob + n0 * B.sx;
    Operand<In> a = A, b = B;
    a.X = A.X - m0 < TC_BM ? A.X - m0 : TC_BM, b.X = B.X - n0 < TC_BN ? B.X - n0 : TC_BN;

    wmma::fragment<wmma::accumulator, 16, 16, WK, float> acc[4][2];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

    // Prologue: tiles 0 … STAGES-2 in flight, one commit group each (empty groups keep the count).
#pragma unroll
    for (int s = 0; s < TC_STAGES - 1; ++s) {
      if (s < KT) {
        TA::load(a, pa, s * BK, Ki, stages + s * STAGE, tid);
        TB::load(b, pb, s * BK, Ki, stages + s * STAGE + TA::ELEMS, tid);
      }
      asm volatile("cp.async.commit_group;\n" ::: "memory");
    }
    for (int kt = 0; kt < KT; ++kt) {
      // Groups committed so far: STAGES-1+kt; at most STAGES-2 pending → tile kt has landed.
      asm volatile("cp.async.wait_group %0;\n" ::"n"(TC_STAGES - 2) : "memory");
      __syncthreads();  // tile kt visible to all; every warp is done with tile kt-1's stage
      const int next = kt + TC_STAGES - 1;
      if (next < KT) {
        In* st = stages + (next % TC_STAGES) * STAGE;
        TA::load(a, pa, next * BK, Ki, st, tid);
        TB::load(b, pb, next * BK, Ki, st + TA::ELEMS, tid);
      }
      asm volatile("cp.async.commit_group;\n" ::: "memory");

      const In* as = stages + (kt % TC_STAGES) * STAGE;
      const In* bs = as + TA::ELEMS;
#pragma unroll
      for (int kk = 0; kk < BK; kk += WK) {
        // Both B fragments stay in registers; A fragments are loaded one at a time (fewer live
        // registers next to the 64 accumulators).
        wmma::fragment<wmma::matrix_b, 16, 16, WK, typename Tr::Frag, LayoutB> fb[2];
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const In* src = B_K ? bs + (wn + 16 * j) * TB::LD + kk : bs + kk * TB::LD + wn + 16 * j;
          wmma::load_matrix_sync(fb[j], src, TB::LD);
          if constexpr (std::is_same<In, float>::value) {
#pragma unroll
            for (int t = 0; t < fb[j].num_elements; ++t) fb[j].x[t] = wmma::__float_to_tf32(fb[j].x[t]);
          }
        }
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, WK, typename Tr::Frag, LayoutA> fa;
          const In* src = A_K ? as + (wm + 16 * i) * TA::LD + kk : as + kk * TA::LD + wm + 16 * i;
          wmma::load_matrix_sync(fa, src, TA::LD);
          if constexpr (std::is_same<In, float>::value) {
#pragma unroll
            for (int t = 0; t < fa.num_elements; ++t) fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
          }
#pragma unroll
          for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa, fb[j], acc[i][j]);
        }
      }
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    __syncthreads();  // all stages read (and no copy in flight) before the epilogue tile reuses them

#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 2; ++j)
        wmma::store_matrix_sync(cs + (wm + 16 * i) * LDC + wn + 16 * j, acc[i][j], LDC, wmma::mem_row_major);
    __syncthreads();
    Out* pc = C + oc;
    for (int e = tid; e < TC_BM * TC_BN; e += TC_THREADS) {
      const int r = e / TC_BN, c = e % TC_BN;
      const index_t gm = m0 + r, gn = n0 + c;
      if (gm < M && gn < N) {
        Out* dst = pc + gm * rsc + gn * csc;
        const float v = alpha * cs[r * LDC + c];
        *dst = from_float<Out>(beta == 0.0f ? v : v + beta * to_float(*dst));
      }
    }
    __syncthreads();  // the epilogue tile is the next batch entry's first stage
  }
#else
  __trap();  // tensor-core kernels are built for sm_80 and newer only
#endif
}

template <class In>
constexpr int tc_smem_bytes(bool a_k, bool b_k) {
  const int stage = (a_k ? TcTile<In, TC_BM, true>::BYTES : TcTile<In, TC_BM, false>::BYTES) +
                    (b_k ? TcTile<In, TC_BN, true>::BYTES : TcTile<In, TC_BN, false>::BYTES);
  const int epilogue = TC_BM * (TC_BN + 4) * static_cast<int>(sizeof(float));
  return TC_STAGES * stage > epilogue ? TC_STAGES * stage : epilogue;
}

// ---- host side ----------------------------------------------------------------------------------

struct DeviceLimits {
  int sms = 0;
  int max_smem_optin = 0;
};

DeviceLimits device_limits(const char* op) {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev), op);
  DeviceLimits d;
  CUDA_CHECK(cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev), op);
  CUDA_CHECK(cudaDeviceGetAttribute(&d.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), op);
  return d;
}

// 16-byte vectors are safe along the unit-stride dimension when the base is 16-byte aligned and
// every other stride (including the batch strides) is a multiple of the vector width.
bool vector_ok(const void* base, index_t other, const index_t* batch_strides, int ndim, int width) {
  if (reinterpret_cast<std::uintptr_t>(base) % 16 != 0 || other % width != 0) return false;
  for (int d = 0; d < ndim; ++d)
    if (batch_strides[d] % width != 0) return false;
  return true;
}

// An operand for the tile loaders: element (x, k) at p[x*sx + k*sk], x < X the M (A) or N (B)
// side. The kernels read runs along a unit stride, so one of sx, sk must be 1; a dimension of
// extent 1 may take stride 1 whatever its stride was. along_x: the runs go along x (else k).
template <class T>
Operand<T> make_operand(const void* p, index_t X, index_t K, index_t sx, index_t sk, const index_t* bstrides,
                        int ndim, const char* name, bool& along_x) {
  if (sx != 1 && sk != 1) {
    if (X == 1) sx = 1;
    else if (K == 1) sk = 1;
  }
  FASTDL_CHECK(sx == 1 || sk == 1, "gemm: the CUDA kernels read ", name,
               " along a unit stride (row- or column-major with any leading dimension); got element strides (",
               sx, ", ", sk, ") for its ", X, "×", K, " view — pass a contiguous copy");
  along_x = sx == 1;
  constexpr int width = 16 / static_cast<int>(sizeof(T));
  return Operand<T>{static_cast<const T*>(p), sx, sk, X, vector_ok(p, along_x ? sk : sx, bstrides, ndim, width)};
}

template <class Cfg>
void launch_simt(const Batch& batch, index_t M, index_t N, index_t K, double alpha, const void* A, index_t rsa,
                 index_t csa, const void* B, index_t rsb, index_t csb, double beta, void* C, index_t rsc,
                 index_t csc, cudaStream_t stream) {
  using T = typename Cfg::type;
  bool a_x, b_x;
  const Operand<T> a = make_operand<T>(A, M, K, rsa, csa, batch.a, batch.ndim, "a", a_x);
  const Operand<T> b = make_operand<T>(B, N, K, csb, rsb, batch.b, batch.ndim, "b", b_x);
  const dim3 grid(static_cast<unsigned>(ceil_div(N, Cfg::BN)), static_cast<unsigned>(ceil_div(M, Cfg::BM)),
                  static_cast<unsigned>(batch.count < 65535 ? batch.count : 65535));
  gemm_simt_kernel<Cfg><<<grid, Cfg::THREADS, 0, stream>>>(M, N, K, static_cast<T>(alpha), a, b, static_cast<T>(beta),
                                                            static_cast<T*>(C), rsc, csc, batch);
  CUDA_CHECK(cudaGetLastError(), "gemm");
}

template <class In, bool A_K, bool B_K>
void launch_tc_layout(const Batch& batch, index_t M, index_t N, index_t K, double alpha, const Operand<In>& a,
                      const Operand<In>& b, double beta, void* C, index_t rsc, index_t csc, cudaStream_t stream,
                      const DeviceLimits& limits) {
  constexpr int smem = tc_smem_bytes<In>(A_K, B_K);
  FASTDL_CHECK(smem <= limits.max_smem_optin, "gemm: the tensor-core kernel needs ", smem,
               " bytes of shared memory per block; this GPU allows ", limits.max_smem_optin);
  auto kernel = gemm_tc_kernel<In, A_K, B_K>;
  CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem), "gemm");
  const dim3 grid(static_cast<unsigned>(ceil_div(N, TC_BN)), static_cast<unsigned>(ceil_div(M, TC_BM)),
                  static_cast<unsigned>(batch.count < 65535 ? batch.count : 65535));
  kernel<<<grid, TC_THREADS, smem, stream>>>(M, N, K, static_cast<float>(alpha), a, b, static_cast<float>(beta),
                                             static_cast<typename TcTraits<In>::Out*>(C), rsc, csc, batch);
  CUDA_CHECK(cudaGetLastError(), "gemm");
}

template <class In>
void launch_tc(const Batch& batch, index_t M, index_t N, index_t K, double alpha, const void* A, index_t rsa,
               index_t csa, const void* B, index_t rsb, index_t csb, double beta, void* C, index_t rsc, index_t csc,
               cudaStream_t stream, const DeviceLimits& limits) {
  // Each shared tile keeps its operand's orientation (k-major when the runs go along k), so
  // cp.async copies rows as they are and the wmma fragment layout absorbs the transpose.
  bool a_x, b_x;
  const Operand<In> a = make_operand<In>(A, M, K, rsa, csa, batch.a, batch.ndim, "a", a_x);
  const Operand<In> b = make_operand<In>(B, N, K, csb, rsb, batch.b, batch.ndim, "b", b_x);
  const bool a_k = !a_x, b_k = !b_x;
  if (a_k && b_k)
    launch_tc_layout<In, true, true>(batch, M, N, K, alpha, a, b, beta, C, rsc, csc, stream, limits);
  else if (a_k)
    launch_tc_layout<In, true, false>(batch, M, N, K, alpha, a, b, beta, C, rsc, csc, stream, limits);
  else if (b_k)
    launch_tc_layout<In, false, true>(batch, M, N, K, alpha, a, b, beta, C, rsc, csc, stream, limits);
  else
    launch_tc_layout<In, false, false>(batch, M, N, K, alpha, a, b, beta, C, rsc, csc, stream, limits);
}

using SimtF32 = SimtConfig<float, 128, 128, 8>;
using SimtF32Small = SimtConfig<float, 64, 64, 16>;
using SimtF64 = SimtConfig<double, 64, 64, 8>;

// float32 on CUDA cores takes 128×128 tiles unless that grid leaves SMs idle.
bool simt_f32_small_tiles(index_t M, index_t N, index_t count, int sms) {
  return ceil_div(M, SimtF32::BM) * ceil_div(N, SimtF32::BN) * count < sms;
}

void check_args(const Batch& batch, index_t M, index_t N, index_t K, const void* A, const void* B, const void* C) {
  FASTDL_CHECK(M >= 0 && N >= 0 && K >= 0, "gemm: sizes must be non-negative, got M=", M, " N=", N, " K=", K);
  FASTDL_CHECK(ceil_div(M, 64) <= 65535, "gemm: M=", M, " is above the CUDA kernel's limit of ", 65535 * 64, " rows");
  FASTDL_CHECK(ceil_div(N, 64) < (index_t(1) << 31), "gemm: N=", N, " is too large");
  FASTDL_CHECK(K < (index_t(1) << 31) - 64, "gemm: K=", K, " is above the CUDA kernels' limit of 2^31 - 64");
  if (M == 0 || N == 0 || batch.count == 0) return;
  FASTDL_CHECK(C != nullptr, "gemm: out is a null pointer");
  FASTDL_CHECK(K == 0 || (A != nullptr && B != nullptr), "gemm: a or b is a null pointer");
}

Batch make_batch(const GemmBatch& g) {
  FASTDL_CHECK(g.ndim >= 0 && g.ndim <= kMaxBatchDims, "gemm: at most ", kMaxBatchDims, " batch dimensions, got ",
               g.ndim);
  Batch b{};
  b.ndim = g.ndim;
  b.count = 1;
  for (int d = 0; d < g.ndim; ++d) {
    FASTDL_CHECK(g.size[d] >= 0, "gemm: batch size ", g.size[d], " in dimension ", d, " is negative");
    b.size[d] = g.size[d], b.a[d] = g.a[d], b.b[d] = g.b[d], b.c[d] = g.c[d];
    b.count *= g.size[d];
  }
  return b;
}

}  // namespace

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::float32: return "float32";
    case DType::float64: return "float64";
    case DType::float16: return "float16";
    case DType::bfloat16: return "bfloat16";
  }
  return "unknown";
}

int current_device() {
  int dev = 0;
  CUDA_CHECK(cudaGetDevice(&dev), "cuda");
  return dev;
}

int device_of_pointer(const void* ptr, const char* op) {
  cudaPointerAttributes attr{};
  CUDA_CHECK(cudaPointerGetAttributes(&attr, ptr), op);
  FASTDL_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, op,
               ": pointer ", ptr, " is not CUDA device memory");
  return attr.device;
}

std::string gemm_path(DType dtype, bool allow_tf32, index_t M, index_t N, index_t batch) {
  switch (dtype) {
    case DType::float64: return "simt-64x64 float64";
    case DType::float16: return "tensor-core float16 (wmma/mma.sync, float32 accumulation)";
    case DType::bfloat16: return "tensor-core bfloat16 (wmma/mma.sync, float32 accumulation)";
    case DType::float32: break;
  }
  if (allow_tf32) return "tensor-core tf32 (wmma/mma.sync, float32 accumulation)";
  return simt_f32_small_tiles(M, N, batch, device_limits("gemm").sms) ? "simt-64x64 float32" : "simt-128x128 float32";
}

void gemm_batched(const GemmBatch& g, DType dtype, bool allow_tf32, index_t M, index_t N, index_t K, double alpha,
                  const void* A, index_t rsa, index_t csa, const void* B, index_t rsb, index_t csb, double beta,
                  void* C, index_t rsc, index_t csc, std::uintptr_t stream_handle) {
  const Batch batch = make_batch(g);
  check_args(batch, M, N, K, A, B, C);
  if (M == 0 || N == 0 || batch.count == 0) return;
  const cudaStream_t stream = stream_from(stream_handle);
  const DeviceLimits limits = device_limits("gemm");
  switch (dtype) {
    case DType::float64:
      launch_simt<SimtF64>(batch, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, stream);
      return;
    case DType::float16:
      launch_tc<__half>(batch, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, stream, limits);
      return;
    case DType::bfloat16:
      launch_tc<__nv_bfloat16>(batch, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, stream, limits);
      return;
    case DType::float32:
      if (allow_tf32)
        launch_tc<float>(batch, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, stream, limits);
      else if (simt_f32_small_tiles(M, N, batch.count, limits.sms))
        launch_simt<SimtF32Small>(batch, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, stream);
      else
        launch_simt<SimtF32>(batch, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, stream);
      return;
  }
  fail("gemm: unknown dtype code ", static_cast<int>(dtype));
}

void gemm_strided(DType dtype, bool allow_tf32, index_t M, index_t N, index_t K, double alpha, const void* A,
                  index_t rsa, index_t csa, const void* B, index_t rsb, index_t csb, double beta, void* C,
                  index_t rsc, index_t csc, std::uintptr_t stream) {
  gemm_batched(GemmBatch{}, dtype, allow_tf32, M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, rsc, csc, stream);
}

void gemm(DType dtype, bool allow_tf32, bool transA, bool transB, index_t M, index_t N, index_t K, double alpha,
          const void* A, index_t lda, const void* B, index_t ldb, double beta, void* C, index_t ldc,
          std::uintptr_t stream) {
  FASTDL_CHECK(lda >= (transA ? (M > 1 ? M : 1) : (K > 1 ? K : 1)) && ldb >= (transB ? (K > 1 ? K : 1) : (N > 1 ? N : 1)) &&
                   ldc >= (N > 1 ? N : 1),
               "gemm: leading dimensions too small: lda=", lda, " ldb=", ldb, " ldc=", ldc, " for M=", M, " N=", N,
               " K=", K);
  gemm_strided(dtype, allow_tf32, M, N, K, alpha, A, transA ? 1 : lda, transA ? lda : 1, B, transB ? 1 : ldb,
               transB ? ldb : 1, beta, C, ldc, 1, stream);
}

}  // namespace fastdl::cuda
