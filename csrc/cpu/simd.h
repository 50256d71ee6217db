// SIMD vector types, one per (instruction set, element type), for kernels written once over a
// vector-width template.
//
// How the run-time dispatch stays safe without -mavx2 on whole files: every member function below
// carries the target attribute of its ISA and is *not* always_inline. A generic kernel template
// (no target attribute) is instantiated only inside an entry function marked
// `FASTDL_TARGET_AVX2 FASTDL_FLATTEN` (or AVX512), which inlines the template and the vector calls
// into one function compiled for that ISA; that entry function is called only after CPUID said yes
// (cpu_features.cpp). Generic code outside such an entry function never sees these types.
//
//   V::T      element type           V::reg   register type      V::width  lanes
//   V::zero() V::set1(x) V::load(p) V::store(p, v) V::broadcast(p) V::fmadd(a, b, c) = a*b + c
//   V::add V::sub V::mul V::max V::min V::reduce_add
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <type_traits>

#define FASTDL_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define FASTDL_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define FASTDL_FLATTEN __attribute__((flatten))

namespace fastdl::cpu::simd {

// Portable: GCC vector extensions over the x86-64 baseline (SSE2): one 16-byte register, 4 floats
// or 2 doubles.
template <class Scalar>
struct Portable {
  using T = Scalar;
  static constexpr int width = 16 / sizeof(Scalar);
  typedef Scalar reg __attribute__((vector_size(16)));
  static inline reg zero() { return reg{} ; }
  static inline reg set1(T x) { return reg{} + x; }
  static inline reg load(const T* p) { reg v; __builtin_memcpy(&v, p, sizeof v); return v; }
  static inline void store(T* p, reg v) { __builtin_memcpy(p, &v, sizeof v); }
  static inline reg broadcast(const T* p) { return set1(*p); }
  static inline reg fmadd(reg a, reg b, reg c) { return a * b + c; }
  static inline reg add(reg a, reg b) { return a + b; }
  static inline reg sub(reg a, reg b) { return a - b; }
  static inline reg mul(reg a, reg b) { return a * b; }
  static inline reg max(reg a, reg b) { return a > b ? a : b; }
  static inline reg min(reg a, reg b) { return a < b ? a : b; }
  static inline T reduce_add(reg v) { T s = 0; for (int i = 0; i < width; ++i) s += v[i]; return s; }
};

struct Avx2F32 {
  using T = float;
  using reg = __m256;
  static constexpr int width = 8;
  FASTDL_TARGET_AVX2 static inline reg zero() { return _mm256_setzero_ps(); }
  FASTDL_TARGET_AVX2 static inline reg set1(T x) { return _mm256_set1_ps(x); }
  FASTDL_TARGET_AVX2 static inline reg load(const T* p) { return _mm256_loadu_ps(p); }
  FASTDL_TARGET_AVX2 static inline void store(T* p, reg v) { _mm256_storeu_ps(p, v); }
  FASTDL_TARGET_AVX2 static inline reg broadcast(const T* p) { return _mm256_broadcast_ss(p); }
  FASTDL_TARGET_AVX2 static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_ps(a, b, c); }
  FASTDL_TARGET_AVX2 static inline reg add(reg a, reg b) { return _mm256_add_ps(a, b); }
  FASTDL_TARGET_AVX2 static inline reg sub(reg a, reg b) { return _mm256_sub_ps(a, b); }
  FASTDL_TARGET_AVX2 static inline reg mul(reg a, reg b) { return _mm256_mul_ps(a, b); }
  FASTDL_TARGET_AVX2 static inline reg max(reg a, reg b) { return _mm256_max_ps(a, b); }
  FASTDL_TARGET_AVX2 static inline reg min(reg a, reg b) { return _mm256_min_ps(a, b); }
  FASTDL_TARGET_AVX2 static inline T reduce_add(reg v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
};

struct Avx2F64 {
  using T = double;
  using reg = __m256d;
  static constexpr int width = 4;
  FASTDL_TARGET_AVX2 static inline reg zero() { return _mm256_setzero_pd(); }
  FASTDL_TARGET_AVX2 static inline reg set1(T x) { return _mm256_set1_pd(x); }
  FASTDL_TARGET_AVX2 static inline reg load(const T* p) { return _mm256_loadu_pd(p); }
  FASTDL_TARGET_AVX2 static inline void store(T* p, reg v) { _mm256_storeu_pd(p, v); }
  FASTDL_TARGET_AVX2 static inline reg broadcast(const T* p) { return _mm256_broadcast_sd(p); }
  FASTDL_TARGET_AVX2 static inline reg fmadd(reg a, reg b, reg c) { return _mm256_fmadd_pd(a, b, c); }
  FASTDL_TARGET_AVX2 static inline reg add(reg a, reg b) { return _mm256_add_pd(a, b); }
  FASTDL_TARGET_AVX2 static inline reg sub(reg a, reg b) { return _mm256_sub_pd(a, b); }
  FASTDL_TARGET_AVX2 static inline reg mul(reg a, reg b) { return _mm256_mul_pd(a, b); }
  FASTDL_TARGET_AVX2 static inline reg max(reg a, reg b) { return _mm256_max_pd(a, b); }
  FASTDL_TARGET_AVX2 static inline reg min(reg a, reg b) { return _mm256_min_pd(a, b); }
  FASTDL_TARGET_AVX2 static inline T reduce_add(reg v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
  }
};

struct Avx512F32 {
  using T = float;
  using reg = __m512;
  static constexpr int width = 16;
  FASTDL_TARGET_AVX512 static inline reg zero() { return _mm512_setzero_ps(); }
  FASTDL_TARGET_AVX512 static inline reg set1(T x) { return _mm512_set1_ps(x); }
  FASTDL_TARGET_AVX512 static inline reg load(const T* p) { return _mm512_loadu_ps(p); }
  FASTDL_TARGET_AVX512 static inline void store(T* p, reg v) { _mm512_storeu_ps(p, v); }
  FASTDL_TARGET_AVX512 static inline reg broadcast(const T* p) { return _mm512_set1_ps(*p); }
  FASTDL_TARGET_AVX512 static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_ps(a, b, c); }
  FASTDL_TARGET_AVX512 static inline reg add(reg a, reg b) { return _mm512_add_ps(a, b); }
  FASTDL_TARGET_AVX512 static inline reg sub(reg a, reg b) { return _mm512_sub_ps(a, b); }
  FASTDL_TARGET_AVX512 static inline reg mul(reg a, reg b) { return _mm512_mul_ps(a, b); }
  FASTDL_TARGET_AVX512 static inline reg max(reg a, reg b) { return _mm512_max_ps(a, b); }
  FASTDL_TARGET_AVX512 static inline reg min(reg a, reg b) { return _mm512_min_ps(a, b); }
  FASTDL_TARGET_AVX512 static inline T reduce_add(reg v) { return _mm512_reduce_add_ps(v); }
};

struct Avx512F64 {
  using T = double;
  using reg = __m512d;
  static constexpr int width = 8;
  FASTDL_TARGET_AVX512 static inline reg zero() { return _mm512_setzero_pd(); }
  FASTDL_TARGET_AVX512 static inline reg set1(T x) { return _mm512_set1_pd(x); }
  FASTDL_TARGET_AVX512 static inline reg load(const T* p) { return _mm512_loadu_pd(p); }
  FASTDL_TARGET_AVX512 static inline void store(T* p, reg v) { _mm512_storeu_pd(p, v); }
  FASTDL_TARGET_AVX512 static inline reg broadcast(const T* p) { return _mm512_set1_pd(*p); }
  FASTDL_TARGET_AVX512 static inline reg fmadd(reg a, reg b, reg c) { return _mm512_fmadd_pd(a, b, c); }
  FASTDL_TARGET_AVX512 static inline reg add(reg a, reg b) { return _mm512_add_pd(a, b); }
  FASTDL_TARGET_AVX512 static inline reg sub(reg a, reg b) { return _mm512_sub_pd(a, b); }
  FASTDL_TARGET_AVX512 static inline reg mul(reg a, reg b) { return _mm512_mul_pd(a, b); }
  FASTDL_TARGET_AVX512 static inline reg max(reg a, reg b) { return _mm512_max_pd(a, b); }
  FASTDL_TARGET_AVX512 static inline reg min(reg a, reg b) { return _mm512_min_pd(a, b); }
  FASTDL_TARGET_AVX512 static inline T reduce_add(reg v) { return _mm512_reduce_add_pd(v); }
};


// ---- Elementwise maths over the vector types: vexp, vsigmoid, vtanh ------------------------------
// One template per function for every V above, written with V's members plus GCC vector extensions
// on V::reg (division, comparisons/selects and integer bit casts), so, like the kernels, they must
// be instantiated only inside target entry functions. NaN propagates; ±inf saturate.
//   vexp(x):     Cody–Waite reduction x = n·ln2 + r, |r| ≤ ln2/2; e^r by Cephes' degree-7
//                polynomial (float) or Taylor to degree 13 (double); 2^n built in the exponent bits.
//                Inputs are clamped to [-87, 88] (float) / [-708, 709] (double): no overflow, no
//                denormal results. Error ≤ 2 ulp inside that range.
//   vsigmoid(x): 1 / (1 + e^-x): relative error ≤ 4 ulp where σ(x) ≥ e^-87 (float) / e^-708
//                (double); below that the result is that bound or smaller (absolute error < 2e-38).
//   vtanh(x):    |x| < 0.625: odd polynomial (float) / rational (double) from Cephes; otherwise
//                1 − 2/(e^{2|x|} + 1) with the sign of x: relative error ≤ 4 ulp.
// The bounds are checked over dense grids in tests/test_lstm.py (test_simd_math_accuracy).
namespace detail {
template <class V>
struct MathTypes {
  using T = typename V::T;
  using I = std::conditional_t<sizeof(T) == 4, std::int32_t, std::int64_t>;
  typedef I ireg __attribute__((vector_size(sizeof(typename V::reg))));
  static constexpr bool f32 = sizeof(T) == 4;
};
}  // namespace detail

template <class V>
inline typename V::reg vexp(typename V::reg x) {
  using M = detail::MathTypes<V>;
  using T = typename V::T;
  using reg = typename V::reg;
  using ireg = typename M::ireg;
  // min/max with the constant first return x when x is NaN (the SSE/AVX operand rule).
  x = V::min(V::set1(T(M::f32 ? 88.0 : 709.0)), V::max(V::set1(T(M::f32 ? -87.0 : -708.0)), x));
  // Adding 1.5·2^(mantissa bits) rounds to the nearest integer; the low mantissa bits then hold it.
  const reg magic = V::set1(T(M::f32 ? 12582912.0 : 6755399441055744.0));
  const reg n = V::sub(V::fmadd(x, V::set1(T(1.44269504088896340736)), magic), magic);
  reg r = V::fmadd(n, V::set1(T(M::f32 ? -0.693359375 : -6.93145751953125E-1)), x);
  r = V::fmadd(n, V::set1(T(M::f32 ? 2.12194440e-4 : -1.42860682030941723212E-6)), r);
  reg p;
  if constexpr (M::f32) {
    p = V::set1(T(1.9875691500E-4));
    p = V::fmadd(p, r, V::set1(T(1.3981999507E-3)));
    p = V::fmadd(p, r, V::set1(T(8.3334519073E-3)));
    p = V::fmadd(p, r, V::set1(T(4.1665795894E-2)));
    p = V::fmadd(p, r, V::set1(T(1.6666665459E-1)));
    p = V::fmadd(p, r, V::set1(T(5.0000001201E-1)));
    p = V::fmadd(V::mul(p, r), r, V::add(r, V::set1(T(1))));
  } else {
    constexpr double inv_factorial[14] = {1.0, 1.0, 1.0 / 2, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720,
                                          1.0 / 5040, 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800,
                                          1.0 / 39916800, 1.0 / 479001600, 1.0 / 6227020800.0};
    p = V::set1(T(inv_factorial[13]));
    for (int k = 12; k >= 0; --k) p = V::fmadd(p, r, V::set1(T(inv_factorial[k])));
  }
  // 2^n: n + bias + magic keeps n + bias in the low mantissa bits; shifting them by the mantissa
  // width lands them in the exponent field (the magic's own bits are shifted out).
  const reg biased = V::add(n, V::set1(T(M::f32 ? 12582912.0 + 127 : 6755399441055744.0 + 1023)));
  const ireg bits = (ireg)biased << (M::f32 ? 23 : 52);
  return V::mul(p, (reg)bits);
}

template <class V>
inline typename V::reg vsigmoid(typename V::reg x) {
  using T = typename V::T;
  const typename V::reg one = V::set1(T(1));
  return one / V::add(one, vexp<V>(V::sub(V::zero(), x)));
}

template <class V>
inline typename V::reg vtanh(typename V::reg x) {
  using M = detail::MathTypes<V>;
  using T = typename V::T;
  using reg = typename V::reg;
  const reg a = V::max(x, V::sub(V::zero(), x)), z = V::mul(a, a);
  reg small;
  if constexpr (M::f32) {
    reg p = V::set1(T(-5.70498872745E-3));
    p = V::fmadd(p, z, V::set1(T(2.06390887954E-2)));
    p = V::fmadd(p, z, V::set1(T(-5.37397155531E-2)));
    p = V::fmadd(p, z, V::set1(T(1.33314422036E-1)));
    p = V::fmadd(p, z, V::set1(T(-3.33332819422E-1)));
    small = V::fmadd(V::mul(p, z), a, a);
  } else {
    reg p = V::set1(T(-9.64399179425052238628E-1));
    p = V::fmadd(p, z, V::set1(T(-9.92877231001918586564E1)));
    p = V::fmadd(p, z, V::set1(T(-1.61468768441708447952E3)));
    reg q = V::add(z, V::set1(T(1.12811678491632931402E2)));
    q = V::fmadd(q, z, V::set1(T(2.23548839060100448583E3)));
    q = V::fmadd(q, z, V::set1(T(4.84406305325125486048E3)));
    small = V::fmadd(V::mul(a, z), p / q, a);
  }
  const reg two = V::set1(T(2));
  const reg large = V::sub(V::set1(T(1)), two / V::add(vexp<V>(V::mul(two, a)), V::set1(T(1))));
  const reg t = a < V::set1(T(0.625)) ? small : large;
  return x < V::zero() ? V::sub(V::zero(), t) : t;
}

}  // namespace fastdl::cpu::simd
