// fastdl kernel index: every native entry point of every family, both backends.
// Kernels take raw pointers, sizes, strides (in elements) and, on CUDA, a stream; never pybind11
// types, so C++ tests can call them. Python allocates every output; C++ computes into it.
// Sizes use the maths letters of each family: GEMM M N K; conv N C_in H W C_out KH KW OH OW;
// attention B NH Lq Lk D; LSTM T B I H.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common.h"

namespace fastdl {

// Instruction-set level of the CPU kernels, ordered: a level implies the ones below it.
enum class CpuCapability : int { portable = 0, avx2 = 1, avx512 = 2 };

namespace cpu {

// ---- cpu_features.cpp ----------------------------------------------------------------------
CpuCapability detected_capability();          // what CPUID + XGETBV allow on this machine
CpuCapability capability();                   // the level in use (FASTDL_CPU_CAPABILITY or detected)
void set_capability(CpuCapability level);     // ValueError if above detected_capability()
const char* capability_name(CpuCapability level);
CpuCapability parse_capability(const std::string& name);  // "portable" | "avx2" | "avx512"
std::string cpu_model_name();
// Single-core (threads = 1) or all-core peak of FMA throughput measured with a register-resident
// FMA loop for the given level, in GFLOP/s (2 FLOPs per FMA lane).
double measure_peak_gflops(CpuCapability level, bool float64, int threads, double seconds);

// ---- gemm.cpp ------------------------------------------------------------------------------
// C (M×N) = alpha · op(A) · op(B) + beta · C, row-major, BLAS argument order.
//   op(A) is M×K: A is M×K with row stride lda, or K×M (transA) with row stride lda.
//   op(B) is K×N: B is K×N with row stride ldb, or N×K (transB) with row stride ldb.
// beta == 0 overwrites C without reading it (NaN in C does not propagate), as BLAS does.
template <class T>
void gemm(bool transA, bool transB, index_t M, index_t N, index_t K, T alpha, const T* A, index_t lda,
          const T* B, index_t ldb, T beta, T* C, index_t ldc);

// The same product on general strides (BLIS style): element (i, k) of op(A) is A[i*rsa + k*csa],
// (k, j) of op(B) is B[k*rsb + j*csb], (i, j) of C is C[i*rsc + j*csc]. Strides may be zero or
// negative for A and B (broadcast and reversed views); C must not overlap A or B.
template <class T>
void gemm_strided(index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa,
                  const T* B, index_t rsb, index_t csb, T beta, T* C, index_t rsc, index_t csc);

// `batch` independent products; matrix b uses A + offA[b], B + offB[b], C + offC[b] (elements).
// Small products run one per thread; large ones run one after another, each multithreaded.
template <class T>
void gemm_batched(index_t batch, const index_t* offA, const index_t* offB, const index_t* offC,
                  index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa,
                  const T* B, index_t rsb, index_t csb, T beta, T* C, index_t rsc, index_t csc);

// The same product with op(B) supplied by a packing function instead of memory, for operands
// that are never materialised (conv2d's implicit-GEMM im2col panels). The driver calls
// pack_b(pc, kc, j0, nr, NR, dst) to fill dst[p·NR + c] = op(B)(pc + p, j0 + c) for p < kc,
// c < nr, and zero for nr ≤ c < NR. It may be called from several OpenMP threads at once.
template <class T>
using PackBFunction = std::function<void(index_t pc, index_t kc, index_t j0, index_t nr, int NR, T* dst)>;
template <class T>
void gemm_packed_b(index_t M, index_t N, index_t K, T alpha, const T* A, index_t rsa, index_t csa,
                   const PackBFunction<T>& pack_b, T beta, T* C, index_t rsc, index_t csc);

// Caller-packed operands, for implicit GEMMs that run their own outer loops (conv2d). With MR, NR
// of gemm_blocking<T>() at the current capability:
//   gemm_pack_a: op(A) (mc×kc, any strides) → ceil(mc/MR) slivers, Ap[(i/MR)·MR·kc + p·MR + i%MR]
//   gemm_pack_b: op(B) (kc×nc, any strides) → ceil(nc/NR) slivers, Bp[(j/NR)·NR·kc + p·NR + j%NR]
//   (edge slivers zero-padded); gemm_packed_block: C (mc×nc) = alpha · Ap · Bp + beta · C with the
//   micro-kernel, single-threaded (beta == 0 does not read C).
template <class T>
void gemm_pack_a(index_t mc, index_t kc, const T* A, index_t rsa, index_t csa, T* Ap);
template <class T>
void gemm_pack_b(index_t kc, index_t nc, const T* B, index_t rsb, index_t csb, T* Bp);
template <class T>
void gemm_packed_block(index_t mc, index_t nc, index_t kc, T alpha, const T* Ap, const T* Bp, T beta, T* C,
                       index_t rsc, index_t csc);

// The block sizes in use for a dtype at the current capability (for tests and `fastdl info`).
struct GemmBlocking {
  int MR, NR;
  index_t MC, KC, NC;
};
template <class T>
GemmBlocking gemm_blocking();

// ---- conv2d.cpp ----------------------------------------------------------------------------
// NCHW, C-contiguous: x (N, C_in, H, W), w (C_out, C_in/groups, KH, KW), bias (C_out) or null,
// y (N, C_out, OH, OW). Output rows: oh·stride_h − pad_top + kh·dilation_h indexes x; the padding
// after the input (pad_bottom, pad_right) only enters through OH, OW:
//   OH = (H + pad_top + pad_bottom − dilation_h·(KH − 1) − 1) / stride_h + 1   (likewise OW).
// Every entry point checks the shape (ValueError naming conv2d) before touching memory.
struct Conv2dShape {
  index_t N, C_in, H, W, C_out, KH, KW, OH, OW;
  index_t stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dilation_h, dilation_w, groups;
};
// y = conv2d(x, w) + bias.
template <class T>
void conv2d_forward(T* y, const T* x, const T* w, const T* bias, const Conv2dShape& s);
// dx = ∂(Σ dy·y)/∂x (also conv_transpose2d's forward). H, W may exceed the forward's smallest input
// for OH, OW (conv_transpose2d's output_padding): rows and columns no output reads get 0.
template <class T>
void conv2d_backward_input(T* dx, const T* dy, const T* w, const Conv2dShape& s);
// dw = ∂/∂w, and dbias = Σ_{n,oh,ow} dy when dbias is not null; both overwritten. H, W may exceed
// the smallest input for OH, OW, as for backward-input.
template <class T>
void conv2d_backward_weight(T* dw, T* dbias, const T* dy, const T* x, const Conv2dShape& s);
// Scratch bytes a forward call with `threads` threads allocates (packed weights, per-thread panels):
// independent of N.
template <class T>
std::size_t conv2d_forward_workspace(const Conv2dShape& s, int threads);

// Pooling over NCHW planes (N·C of them), x (N, C, H, W) → y (N, C, OH, OW); windows start at
// oh·stride_h − pad_h. ceil_mode only changes OH, OW (windows past the end are clipped).
struct Pool2dShape {
  index_t N, C, H, W, OH, OW, KH, KW, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};
// indices (may be null): the flat position ih·W + iw of each maximum in its plane (first one on
// ties; NaN wins, as in PyTorch).
template <class T>
void max_pool2d_forward(T* y, std::int64_t* indices, const T* x, const Pool2dShape& s);
template <class T>
void max_pool2d_backward(T* dx, const T* dy, const std::int64_t* indices, const Pool2dShape& s);
// divisor: 0 → the window's size (count_include_pad: clipped to the padded input; else to the
// input); > 0 → that number (divisor_override).
template <class T>
void avg_pool2d_forward(T* y, const T* x, const Pool2dShape& s, bool count_include_pad, index_t divisor);
template <class T>
void avg_pool2d_backward(T* dx, const T* dy, const Pool2dShape& s, bool count_include_pad, index_t divisor);
// Window i of OH covers rows [floor(i·H/OH), ceil((i+1)·H/OH)); likewise columns.
template <class T>
void adaptive_avg_pool2d_forward(T* y, const T* x, index_t N, index_t C, index_t H, index_t W, index_t OH,
                                 index_t OW);
template <class T>
void adaptive_avg_pool2d_backward(T* dx, const T* dy, index_t N, index_t C, index_t H, index_t W, index_t OH,
                                  index_t OW);

}  // namespace cpu

namespace cuda {

// ---- cuda/device.cu ------------------------------------------------------------------------
struct DeviceInfo {
  int index;
  std::string name;
  int major, minor;           // compute capability
  int multiprocessors;
  std::int64_t total_memory;  // bytes
};
bool built();                          // compiled with CUDA
// Visible devices; on a machine with no driver or no GPU this is empty and `why` says why.
std::vector<DeviceInfo> devices(std::string* why);
int runtime_version();                 // e.g. 13000; 0 when built without CUDA

}  // namespace cuda
}  // namespace fastdl
