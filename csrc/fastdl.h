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

// Caller-packed operands, for implicit GEMMs that run their own outer loops (conv2d). With MR, NR,
// KC of gemm_blocking<T>() at the current capability and kc ≤ KC:
//   gemm_pack_a: op(A) (mc×kc, any strides) → ceil(mc/MR) slivers, Ap[(i/MR)·MR·KC + p·MR + i%MR]
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

// ---- lstm.cpp ------------------------------------------------------------------------------
// One LSTM layer over a whole sequence, PyTorch's gate order (i, f, g, o); every array contiguous.
//   x (T, B, I), w_ih (4H, I), w_hh (4H, H); h0, c0 (B, H) and b_ih, b_hh (4H) may be null (zero).
//   Outputs y (T, B, H), h_n, c_n (B, H) (h_n may be y's last step itself). gates (T, B, 4H) is
//   workspace that ends holding the activated gates; cell (T, B, H) receives every c_t. Both are
//   what lstm_backward needs; pass cell = null when no backward follows.
// Paths: fused (W_hh packed once, recurrent product and gates in one tile kernel, one thread team
// for the sequence) or stepwise (per step cpu::gemm, then the gates); automatic = fused for T > 1.
enum class LstmPath : int { automatic = 0, stepwise = 1, fused = 2 };
template <class S>
void lstm_forward(S* y, S* h_n, S* c_n, S* gates, S* cell, const S* x, const S* h0, const S* c0, const S* w_ih,
                  const S* w_hh, const S* b_ih, const S* b_hh, index_t T, index_t B, index_t I, index_t H,
                  LstmPath path);
// Backward through time from the forward's y, gates and cell. dy (T, B, H), dh_n, dc_n (B, H) may
// be null (zero). Outputs, each null when not wanted: dx (T, B, I), dh0, dc0 (B, H), dw_ih (4H, I),
// dw_hh (4H, H), db (4H) (the gradient of b_ih and of b_hh alike). dgates (T, B, 4H) is workspace
// that ends holding dL/dG.
template <class S>
void lstm_backward(S* dx, S* dh0, S* dc0, S* dw_ih, S* dw_hh, S* db, S* dgates, const S* dy, const S* dh_n,
                   const S* dc_n, const S* x, const S* h0, const S* c0, const S* w_ih, const S* w_hh, const S* y,
                   const S* gates, const S* cell, index_t T, index_t B, index_t I, index_t H, LstmPath path);
// One GRU layer over a whole sequence, PyTorch's equations and gate order (r, z, n), on the same
// fused kernels: x (T, B, I), w_ih (3H, I), w_hh (3H, H), h0 (B, H), b_ih, b_hh (3H) may be null.
// Outputs y (T, B, H), h_n (B, H) (may be y's last step). gates (T, B, 3H) is workspace that ends
// holding (r, z, n); hn (T, B, H) receives W_hn·h_{t-1} + b_hn, or is null when no backward follows.
template <class S>
void gru_forward(S* y, S* h_n, S* gates, S* hn, const S* x, const S* h0, const S* w_ih, const S* w_hh, const S* b_ih,
                 const S* b_hh, index_t T, index_t B, index_t I, index_t H);
// Backward through time from the forward's y, gates and hn; dy (T, B, H) and dh_n (B, H) may be
// null. Outputs, each null when not wanted: dx (T, B, I), dh0 (B, H), dw_ih (3H, I), dw_hh (3H, H),
// db_ih, db_hh (3H). dgx, dgh (T, B, 3H) are workspace (the input and recurrent pre-activation
// gradients).
template <class S>
void gru_backward(S* dx, S* dh0, S* dw_ih, S* dw_hh, S* db_ih, S* db_hh, S* dgx, S* dgh, const S* dy, const S* dh_n,
                  const S* x, const S* h0, const S* w_ih, const S* w_hh, const S* y, const S* gates, const S* hn,
                  index_t T, index_t B, index_t I, index_t H);
// y[i] = fn(x[i]) for fn "exp" | "sigmoid" | "tanh" with the vectorised maths of simd.h at the
// current level (what the gate kernels use; for accuracy tests).
template <class S>
void lstm_vector_math(const std::string& fn, const S* x, S* y, index_t n);

// ---- attention.cpp -------------------------------------------------------------------------
// Fused scaled-dot-product attention (FlashAttention-2), per (batch b, query head h):
//   O = dropout(softmax(scale · Q Kᵀ + M)) · V, LSE = log Σ_j exp(scale · Q Kᵀ + M) (natural log).
// Q (B, NH, Lq, D), K (B, NHK, Lk, D), V (B, NHK, Lk, Dv): any strides in elements (zero strides
// broadcast); query head h reads kv head h / (NH / NHK) (grouped-query attention). The mask is
// (B, NH, Lq, Lk) on any strides: boolean (uint8, nonzero = the key takes part) or additive (T).
// causal keeps key j for query i only when j ≤ i (top-left aligned, as PyTorch). A row that no key
// takes part in gives O = 0 and LSE = −inf. Dropout keeps each probability with 1 − dropout_p and
// scales it by 1/(1 − dropout_p); the mask is a hash of (seed, b·NH + h, i, j), regenerated in the
// backward.
enum class AttentionMask : int { none = 0, boolean = 1, additive = 2 };
template <class T>
struct AttentionProblem {
  index_t B, NH, NHK, Lq, Lk, D, Dv;
  const T* Q;
  index_t q_strides[4];
  const T* K;
  index_t k_strides[4];
  const T* V;
  index_t v_strides[4];
  AttentionMask mask_kind;
  const void* mask;
  index_t mask_strides[4];
  bool causal;
  double scale;
  double dropout_p;
  std::uint64_t seed;
};
// O (B, NH, Lq, Dv) and LSE (B, NH, Lq), contiguous.
template <class T>
void attention_forward(const AttentionProblem<T>& p, T* O, T* LSE);
// Inputs O, dO (B, NH, Lq, Dv) and LSE (B, NH, Lq) contiguous, from attention_forward on p.
// Outputs, contiguous: dQ (B, NH, Lq, D), dK (B, NHK, Lk, D), dV (B, NHK, Lk, Dv), and dM
// (B, NH, Lq, Lk) = ∂L/∂(scores) when not null (the additive mask's gradient).
template <class T>
void attention_backward(const AttentionProblem<T>& p, const T* O, const T* dO, const T* LSE, T* dQ, T* dK, T* dV,
                        T* dM);
// y = 2^x with the kernels' vectorised exp2 at the current level (for tests).
template <class T>
void attention_exp2(const T* x, T* y, index_t n);
// Micro-tile rows MR, vector width W, query tile Br and key block Bc at the current level for
// head dimensions D (queries/keys) and Dv (values).
struct AttentionBlocking {
  int MR, W;
  index_t Br, Bc;
};
template <class T>
AttentionBlocking attention_blocking(index_t D, index_t Dv);

// ---- optim.cpp -----------------------------------------------------------------------------
// One optimizer step for every tensor of a parameter group, fused: each element of p, grad and
// the state is read and written once. Rules and their state slots (nullptr where unused):
//   sgd      [0] momentum_buffer (momentum != 0)          coef[0] = 1 on the buffer's first step
//   adagrad  [0] sum                                       coef[0] = clr = lr / (1 + (t−1)·lr_decay)
//   adadelta [0] square_avg [1] acc_delta
//   rmsprop  [0] square_avg [1] grad_avg (centered) [2] momentum_buffer (momentum > 0)
//   adam     [0] exp_avg [1] exp_avg_sq [2] max_exp_avg_sq (amsgrad)
//                                                          coef[0] = lr/(1−β1ᵗ), coef[1] = √(1−β2ᵗ)
//   nadam    [0] exp_avg [1] exp_avg_sq                    coef[0] = 1−β2ᵗ, coef[1], coef[2] = the
//                                                          grad and exp_avg step sizes (μ schedule)
//   adamax   [0] exp_avg [1] exp_inf                       coef[0] = lr/(1−β1ᵗ)
// Every tensor is contiguous with n elements; state arrays have the parameter's size.
enum class OptimRule : int { sgd, adagrad, adadelta, rmsprop, adam, nadam, adamax };
struct OptimHyper {
  double lr = 0, beta1 = 0, beta2 = 0, eps = 0, weight_decay = 0, momentum = 0, dampening = 0, alpha = 0,
         rho = 0;
  bool nesterov = false, maximize = false, amsgrad = false, decoupled = false, centered = false;
};
template <class T>
struct OptimTensor {
  index_t n;
  T* param;
  const T* grad;
  T* state[3];
  double coef[4];
};
const char* optim_rule_name(OptimRule rule);
OptimRule parse_optim_rule(const std::string& name);  // ValueError for an unknown name
template <class T>
void optim_step(OptimRule rule, const OptimHyper& h, const OptimTensor<T>* tensors, index_t count);

// ---- elementwise.cpp ------------------------------------------------------------------------
// The exact GELU over n contiguous elements: y = x·Φ(x), and Φ(x) kept for the backward;
// dx = grad·(Φ(x) + x·φ(x)).
template <class T>
void gelu_forward(const T* x, T* y, T* cdf, index_t n);
template <class T>
void gelu_backward(const T* x, const T* cdf, const T* grad, T* dx, index_t n);
// mask[i] = 1/(1−p) or 0 (probability p), a pure function of (seed, i); 0 <= p < 1.
template <class T>
void dropout_mask(T* mask, index_t n, double p, std::uint64_t seed);

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

// ---- cuda/gemm.cu --------------------------------------------------------------------------
// Element types the CUDA GEMM takes. float16/bfloat16 run on tensor cores with float32
// accumulation; float32 runs on CUDA cores, or on TF32 tensor cores when allow_tf32 is set.
enum class DType : int { float32 = 0, float64 = 1, float16 = 2, bfloat16 = 3 };
const char* dtype_name(DType dtype);

// Leading (batch) dimensions of a batched GEMM: matrix z of the batch, with multi-index
// (i_0, …, i_{ndim-1}) over size[], starts at A + Σ i_d·a[d], B + Σ i_d·b[d], C + Σ i_d·c[d]
// (elements; a[d] and b[d] may be 0 for broadcast operands). ndim == 0 is a single product.
constexpr int kMaxBatchDims = 8;
struct GemmBatch {
  int ndim = 0;
  index_t size[kMaxBatchDims] = {};
  index_t a[kMaxBatchDims] = {}, b[kMaxBatchDims] = {}, c[kMaxBatchDims] = {};
};

// C (M×N) = alpha · op(A) · op(B) + beta · C on the GPU, with the stride convention of
// cpu::gemm_strided: element (i, k) of op(A) is A[i*rsa + k*csa], (k, j) of op(B) is
// B[k*rsb + j*csb], (i, j) of C is C[i*rsc + j*csc]. A, B and C are device pointers of the
// current device holding `dtype`; C must not overlap A or B; beta == 0 does not read C.
// Launched on `stream` (a cudaStream_t as an integer, e.g. CuPy's current stream); returns
// without synchronising. Nothing is allocated.
void gemm_strided(DType dtype, bool allow_tf32, index_t M, index_t N, index_t K, double alpha, const void* A,
                  index_t rsa, index_t csa, const void* B, index_t rsb, index_t csb, double beta, void* C,
                  index_t rsc, index_t csc, std::uintptr_t stream);
// The same over the batch dimensions of `batch`, one launch for the whole batch.
void gemm_batched(const GemmBatch& batch, DType dtype, bool allow_tf32, index_t M, index_t N, index_t K,
                  double alpha, const void* A, index_t rsa, index_t csa, const void* B, index_t rsb, index_t csb,
                  double beta, void* C, index_t rsc, index_t csc, std::uintptr_t stream);
// BLAS argument order on row-major matrices, as cpu::gemm.
void gemm(DType dtype, bool allow_tf32, bool transA, bool transB, index_t M, index_t N, index_t K, double alpha,
          const void* A, index_t lda, const void* B, index_t ldb, double beta, void* C, index_t ldc,
          std::uintptr_t stream);
// Which kernel gemm_strided would run for these arguments ("simt-128x128", "tensor-core tf32", …).
std::string gemm_path(DType dtype, bool allow_tf32, index_t M, index_t N, index_t batch);

// The CUDA device that holds `ptr` (ValueError naming `op` if it is not device memory).
int device_of_pointer(const void* ptr, const char* op);
int current_device();

}  // namespace cuda
}  // namespace fastdl
