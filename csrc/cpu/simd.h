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

}  // namespace fastdl::cpu::simd
