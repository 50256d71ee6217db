// Shared helpers for every kernel family: argument checks that become Python ValueErrors,
// integer helpers, a parallel loop over OpenMP, and 64-byte aligned scratch buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>

#include <omp.h>

namespace fastdl {

using index_t = std::int64_t;

// Thrown by FASTDL_CHECK; pybind11 turns std::invalid_argument into ValueError.
struct Error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <class T, class... Rest>
void append(std::ostringstream& os, const T& value, const Rest&... rest) {
  os << value;
  append(os, rest...);
}
}  // namespace detail

template <class... Parts>
[[noreturn]] void fail(const Parts&... parts) {
  std::ostringstream os;
  detail::append(os, parts...);
  throw Error(os.str());
}

// FASTDL_CHECK(cond, "gemm: ", ...) — the message parts are only formatted when the check fails.
#define FASTDL_CHECK(cond, ...)          \
  do {                                   \
    if (!(cond)) ::fastdl::fail(__VA_ARGS__); \
  } while (0)

constexpr index_t ceil_div(index_t a, index_t b) { return (a + b - 1) / b; }
constexpr index_t round_up(index_t a, index_t b) { return ceil_div(a, b) * b; }

// The "lowbias32" integer hash (C. Wellons: two multiply–xorshift rounds, low bias): the random
// bits of the counter-based dropout masks (attention.cpp, elementwise.cpp).
inline std::uint32_t lowbias32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352dU;
  x ^= x >> 15;
  x *= 0x846ca68bU;
  x ^= x >> 16;
  return x;
}

// Runs body(begin, end) over [0, n) in contiguous chunks, one per thread; serial when the work is
// below `grain` items per thread or when already inside a parallel region.
template <class Body>
void parallel_for(index_t n, index_t grain, const Body& body) {
  if (n <= 0) return;
  int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  if (grain > 0 && n / grain < threads) threads = static_cast<int>(n / grain > 1 ? n / grain : 1);
  if (threads <= 1) {
    body(index_t{0}, n);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const index_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    const index_t chunk = ceil_div(n, nt);
    const index_t begin = t * chunk, end = begin + chunk < n ? begin + chunk : n;
    if (begin < end) body(begin, end);
  }
}

// A 64-byte aligned, uninitialised buffer of T that grows on demand and is reused across calls;
// one per thread (thread_local) keeps kernels free of malloc in the steady state.
template <class T>
class AlignedBuffer {
 public:
  AlignedBuffer() = default;
  AlignedBuffer(const AlignedBuffer&) = delete;
  AlignedBuffer& operator=(const AlignedBuffer&) = delete;
  ~AlignedBuffer() { std::free(data_); }

  T* get(std::size_t count) {
    if (count > capacity_) {
      std::free(data_);
      const std::size_t bytes = round_up(static_cast<index_t>(count * sizeof(T)), 64);
      data_ = static_cast<T*>(std::aligned_alloc(64, bytes));
      if (!data_) {
        capacity_ = 0;
        throw std::bad_alloc();
      }
      capacity_ = count;
    }
    return data_;
  }

 private:
  T* data_ = nullptr;
  std::size_t capacity_ = 0;
};

}  // namespace fastdl
