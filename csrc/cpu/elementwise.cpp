// Elementwise work NumPy has no fast ufunc for: the exact GELU and dropout masks.
//
// Formula: gelu(x) = x·Φ(x), Φ(x) = ½·erfc(−x/√2) (the normal CDF; erfc keeps the relative accuracy
// in the left tail, where ½(1 + erf) cancels). Backward: dx = g·(Φ(x) + x·φ(x)),
// φ(x) = e^(−x²/2)/√(2π). The forward also writes Φ(x), which the backward reuses.
// Algorithm: one pass per call over contiguous arrays, one contiguous range per thread.
//   float32: vectorised (simd.h types, one entry function per ISA). With z = |x|/√2 and
//     t = 1/(1 + z/2), ½·erfc(z) = ½·t·exp(−z² + P(t)), P the degree-9 Chebyshev fit of Numerical
//     Recipes (erfcc: relative error < 1.2e-7 for every z ≥ 0); −z² = −x²/2 is carried as x² plus
//     its FMA residual, so the exponent has no rounding error of size z²·ε. Φ(x) is that tail for
//     x < 0 and 1 − tail for x ≥ 0. Measured error (tests/test_ops.py,
//     test_native_gelu_accuracy_on_every_level): ≤ 10 ulp of Φ for x ≥ −3, ≤ 24 for x ≥ −5, then
//     growing like x²·3e-8 relative (≈ 70 ulp at −12, where ½(1 + erf) gives 0); values of Φ
//     below 1e-37 may flush towards 0 (absolute error < 2e-38).
//   float64: the C library's erfc and exp per element (≤ 1 ulp in glibc).
// Dropout mask: m_i = 1/(1−p) where u_i ≥ p·2³², else 0, with u_i = h(h(i + s_lo) ⊕ (s_hi + i_hi)),
// h the "lowbias32" integer hash (C. Wellons; two multiply–xorshift rounds) and s a 64-bit seed drawn
// from fastdl's generator per call: a pure function of (seed, i), so any thread split gives the same
// mask. Plain integer code vectorised by the compiler in the same per-ISA entry functions.
// Cost floor: memory, 12 bytes per float32 element forward (x read, y and Φ written) ≈ 1 ns per
// element at 12 GB/s on one core; the vector path needs ≈ 25 flops per element, about the same.
// Without this kernel the Python layer needs SciPy's erf (double precision, ≈ 7 ns per element,
// plus four more NumPy passes) or `math.erf` per element.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cpu/simd.h"
#include "fastdl.h"

namespace fastdl::cpu {
namespace {

// Below 128 KB of float32 per thread a second thread costs more than it saves.
constexpr index_t kGrain = 32768;

constexpr double kInvSqrt2Pi = 0.39894228040143267794;

template <class T>
inline T normal_cdf(T x) {
  return T(0.5) * std::erfc(T(-0.70710678118654752440) * x);
}

template <class T>
void gelu_forward_scalar(const T* x, T* y, T* cdf, index_t begin, index_t end) {
  for (index_t i = begin; i < end; ++i) {
    const T phi = normal_cdf(x[i]);
    cdf[i] = phi;
    y[i] = x[i] * phi;
  }
}

template <class T>
void gelu_backward_scalar(const T* x, const T* cdf, const T* grad, T* dx, index_t begin, index_t end) {
  for (index_t i = begin; i < end; ++i) {
    const T v = x[i];
    dx[i] = grad[i] * (cdf[i] + v * T(kInvSqrt2Pi) * std::exp(T(-0.5) * v * v));
  }
}

// Φ(x) for a vector of floats (see the header).
template <class V>
inline typename V::reg normal_cdf_vector(typename V::reg x) {
  using reg = typename V::reg;
  const reg one = V::set1(1.0f), half = V::set1(0.5f);
  // Beyond ±20, Φ is 0 or 1 in float (and x² would overflow); the constant first keeps NaN.
  x = V::min(V::set1(20.0f), V::max(V::set1(-20.0f), x));
  const reg z = V::mul(V::max(x, V::sub(V::zero(), x)), V::set1(0.70710678118654752440f));
  const reg t = one / V::fmadd(half, z, one);
  constexpr float c[10] = {-1.26551223f, 1.00002368f, 0.37409196f, 0.09678418f, -0.18628806f,
                           0.27886807f,  -1.13520398f, 1.48851587f, -0.82215223f, 0.17087277f};
  reg p = V::set1(c[9]);
  for (int k = 8; k >= 0; --k) p = V::fmadd(p, t, V::set1(c[k]));
  const reg xx = V::mul(x, x), residual = V::fmadd(x, x, V::sub(V::zero(), xx));  // x² = xx + residual
  const reg exponent = V::sub(V::sub(p, V::mul(half, residual)), V::mul(half, xx));
  const reg tail = V::mul(V::mul(half, t), simd::vexp<V>(exponent));  // Φ(−|x|)
  // 0 for x ≤ 0, 1 for x ≥ 2^-100 (between, Φ = ½ to within the ramp): Φ = tail + s·(1 − 2·tail).
  const reg s = V::min(one, V::max(V::mul(x, V::set1(1.2676506e30f)), V::zero()));
  return V::fmadd(s, V::fmadd(V::set1(-2.0f), tail, one), tail);
}

template <class V>
void gelu_forward_vector(const float* x, float* y, float* cdf, index_t begin, index_t end) {
  constexpr int W = V::width;
  index_t i = begin;
  for (; i + W <= end; i += W) {
    const auto v = V::load(x + i);
    const auto phi = normal_cdf_vector<V>(v);
    V::store(cdf + i, phi);
    // Below −20, Φ is a flushed value < 2e-38, not 0: x·Φ would grow with |x|; −20·Φ stays ≈ −0.
    V::store(y + i, V::mul(V::max(V::set1(-20.0f), v), phi));
  }
  gelu_forward_scalar(x, y, cdf, i, end);
}

template <class V>
void gelu_backward_vector(const float* x, const float* cdf, const float* grad, float* dx, index_t begin,
                          index_t end) {
  using reg = typename V::reg;
  constexpr int W = V::width;
  const reg minus_half = V::set1(-0.5f), scale = V::set1(static_cast<float>(kInvSqrt2Pi));
  index_t i = begin;
  for (; i + W <= end; i += W) {
    // x·φ(x) is 0 in float beyond ±20 (where x² would overflow); the constant first keeps NaN.
    const reg v = V::min(V::set1(20.0f), V::max(V::set1(-20.0f), V::load(x + i)));
    const reg xx = V::mul(v, v), residual = V::fmadd(v, v, V::sub(V::zero(), xx));
    const reg density = V::mul(scale, simd::vexp<V>(V::fmadd(minus_half, xx, V::mul(minus_half, residual))));
    V::store(dx + i, V::mul(V::load(grad + i), V::fmadd(v, density, V::load(cdf + i))));
  }
  gelu_backward_scalar(x, cdf, grad, dx, i, end);
}

using ForwardSpan = void (*)(const float*, float*, float*, index_t, index_t);
using BackwardSpan = void (*)(const float*, const float*, const float*, float*, index_t, index_t);

FASTDL_TARGET_AVX512 FASTDL_FLATTEN void forward_avx512(const float* x, float* y, float* c, index_t a, index_t b) {
  gelu_forward_vector<simd::Avx512F32>(x, y, c, a, b);
}
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void forward_avx2(const float* x, float* y, float* c, index_t a, index_t b) {
  gelu_forward_vector<simd::Avx2F32>(x, y, c, a, b);
}
FASTDL_FLATTEN void forward_portable(const float* x, float* y, float* c, index_t a, index_t b) {
  gelu_forward_vector<simd::Portable<float>>(x, y, c, a, b);
}
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void backward_avx512(const float* x, const float* c, const float* g, float* d,
                                                         index_t a, index_t b) {
  gelu_backward_vector<simd::Avx512F32>(x, c, g, d, a, b);
}
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void backward_avx2(const float* x, const float* c, const float* g, float* d,
                                                     index_t a, index_t b) {
  gelu_backward_vector<simd::Avx2F32>(x, c, g, d, a, b);
}
FASTDL_FLATTEN void backward_portable(const float* x, const float* c, const float* g, float* d, index_t a,
                                      index_t b) {
  gelu_backward_vector<simd::Portable<float>>(x, c, g, d, a, b);
}

ForwardSpan forward_span(CpuCapability level) {
  return level == CpuCapability::avx512 ? forward_avx512 : level == CpuCapability::avx2 ? forward_avx2
                                                                                       : forward_portable;
}
BackwardSpan backward_span(CpuCapability level) {
  return level == CpuCapability::avx512 ? backward_avx512 : level == CpuCapability::avx2 ? backward_avx2
                                                                                        : backward_portable;
}

template <class T>
void dropout_mask_span(T* mask, std::uint32_t threshold, T scale, std::uint64_t seed, index_t begin, index_t end) {
  const auto seed_lo = static_cast<std::uint32_t>(seed), seed_hi = static_cast<std::uint32_t>(seed >> 32);
  for (index_t i = begin; i < end; ++i) {
    const auto u = static_cast<std::uint64_t>(i);
    const std::uint32_t r =
        lowbias32(lowbias32(static_cast<std::uint32_t>(u) + seed_lo) ^ (seed_hi + static_cast<std::uint32_t>(u >> 32)));
    mask[i] = r >= threshold ? scale : T(0);
  }
}

template <class T>
using MaskSpan = void (*)(T*, std::uint32_t, T, std::uint64_t, index_t, index_t);

template <class T>
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void mask_avx512(T* m, std::uint32_t t, T s, std::uint64_t seed, index_t a,
                                                     index_t b) {
  dropout_mask_span(m, t, s, seed, a, b);
}
template <class T>
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void mask_avx2(T* m, std::uint32_t t, T s, std::uint64_t seed, index_t a, index_t b) {
  dropout_mask_span(m, t, s, seed, a, b);
}
template <class T>
FASTDL_FLATTEN void mask_portable(T* m, std::uint32_t t, T s, std::uint64_t seed, index_t a, index_t b) {
  dropout_mask_span(m, t, s, seed, a, b);
}

template <class T>
MaskSpan<T> mask_span(CpuCapability level) {
  return level == CpuCapability::avx512 ? mask_avx512<T> : level == CpuCapability::avx2 ? mask_avx2<T>
                                                                                       : mask_portable<T>;
}

}  // namespace

template <class T>
void dropout_mask(T* mask, index_t n, double p, std::uint64_t seed) {
  FASTDL_CHECK(n >= 0 && p >= 0 && p < 1, "dropout: need n >= 0 and 0 <= p < 1, got n=", n, " p=", p);
  const auto threshold = static_cast<std::uint32_t>(std::min(std::ldexp(p, 32), 4294967295.0));
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  const MaskSpan<T> span = mask_span<T>(capability());
  parallel_for(n, kGrain, [&](index_t begin, index_t end) { span(mask, threshold, scale, seed, begin, end); });
}

template <class T>
void gelu_forward(const T* x, T* y, T* cdf, index_t n) {
  FASTDL_CHECK(n >= 0, "gelu: negative size ", n);
  if constexpr (sizeof(T) == 4) {
    const ForwardSpan span = forward_span(capability());
    parallel_for(n, kGrain, [&](index_t begin, index_t end) { span(x, y, cdf, begin, end); });
  } else {
    parallel_for(n, kGrain, [&](index_t begin, index_t end) { gelu_forward_scalar(x, y, cdf, begin, end); });
  }
}

template <class T>
void gelu_backward(const T* x, const T* cdf, const T* grad, T* dx, index_t n) {
  FASTDL_CHECK(n >= 0, "gelu_backward: negative size ", n);
  if constexpr (sizeof(T) == 4) {
    const BackwardSpan span = backward_span(capability());
    parallel_for(n, kGrain, [&](index_t begin, index_t end) { span(x, cdf, grad, dx, begin, end); });
  } else {
    parallel_for(n, kGrain, [&](index_t begin, index_t end) { gelu_backward_scalar(x, cdf, grad, dx, begin, end); });
  }
}

#define FASTDL_INSTANTIATE_ELEMENTWISE(T)                                      \
  template void gelu_forward<T>(const T*, T*, T*, index_t);                    \
  template void gelu_backward<T>(const T*, const T*, const T*, T*, index_t);      \
  template void dropout_mask<T>(T*, index_t, double, std::uint64_t);
FASTDL_INSTANTIATE_ELEMENTWISE(float)
FASTDL_INSTANTIATE_ELEMENTWISE(double)
#undef FASTDL_INSTANTIATE_ELEMENTWISE

}  // namespace fastdl::cpu
