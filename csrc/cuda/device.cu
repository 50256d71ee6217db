// Device query for backend_info(): which GPUs the CUDA runtime sees, or why it sees none.
// The runtime is linked statically and loads the driver (libcuda) lazily, so this module imports
// on machines with no GPU and no driver; the query then reports the runtime's error instead.
#include <string>
#include <vector>

#include "cuda/cuda_common.cuh"
#include "fastdl.h"

namespace fastdl::cuda {

bool built() { return true; }

int runtime_version() {
  int version = 0;
  return cudaRuntimeGetVersion(&version) == cudaSuccess ? version : 0;
}

std::vector<DeviceInfo> devices(std::string* why) {
  std::vector<DeviceInfo> found;
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(status)) + ": " + cudaGetErrorString(status);
    cudaGetLastError();  // clear the sticky error so later calls start clean
    return found;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    found.push_back({i, prop.name, prop.major, prop.minor, prop.multiProcessorCount,
                     static_cast<std::int64_t>(prop.totalGlobalMem)});
  }
  if (found.empty() && why) *why = "no CUDA device is visible";
  return found;
}

}  // namespace fastdl::cuda
