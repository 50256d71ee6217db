// Shared CUDA helpers: error checks that become Python exceptions, the caller's stream from an
// integer handle (CuPy's current stream pointer), and warp/block reductions used by the kernels.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common.h"

namespace fastdl::cuda {

// Any CUDA runtime error becomes a fastdl::Error (Python ValueError) naming the call and the op.
#define CUDA_CHECK(call, op)                                                                         \
  do {                                                                                               \
    const cudaError_t fastdl_status_ = (call);                                                       \
    if (fastdl_status_ != cudaSuccess)                                                               \
      ::fastdl::fail(op, ": CUDA error ", cudaGetErrorName(fastdl_status_), " (",                   \
                     cudaGetErrorString(fastdl_status_), ") in ", #call);                            \
  } while (0)

// CuPy exposes its current stream as an integer (cupy.cuda.get_current_stream().ptr); 0 is the
// legacy default stream.
inline cudaStream_t stream_from(std::uintptr_t handle) { return reinterpret_cast<cudaStream_t>(handle); }

template <class T>
__device__ __forceinline__ T warp_reduce_sum(T value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

template <class T>
__device__ __forceinline__ T warp_reduce_max(T value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value = max(value, __shfl_xor_sync(0xffffffffu, value, offset));
  return value;
}

// Sum over a block of up to 1024 threads; `scratch` holds 32 values in shared memory. Every
// thread of the block must call it; every thread gets the result.
template <class T>
__device__ __forceinline__ T block_reduce_sum(T value, T* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  value = warp_reduce_sum(value);
  if (lane == 0) scratch[warp] = value;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  value = lane < warps ? scratch[lane] : T(0);
  value = warp_reduce_sum(value);
  __syncthreads();
  return value;
}

}  // namespace fastdl::cuda
