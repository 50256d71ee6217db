// CPU feature detection and the run-time choice of the kernel level.
//
// Levels: avx512 (AVX-512 F, BW, VL, DQ + FMA), avx2 (AVX2 + FMA), portable (x86-64 baseline).
// A level is available when CPUID reports the instructions AND XGETBV shows the OS saves the
// registers (YMM for AVX2; opmask/ZMM for AVX-512). FASTDL_CPU_CAPABILITY=portable|avx2|avx512
// forces a level no higher than the detected one, read once at first use.
//
// measure_peak_gflops: a register-resident loop of independent FMA chains (12 chains hide the
// 4-cycle FMA latency of two FMA pipes), the honest denominator for "% of peak".
#include <cpuid.h>

#include <atomic>
#include <ctime>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "cpu/simd.h"
#include "fastdl.h"

namespace fastdl::cpu {
namespace {

std::uint64_t read_xcr0() {
  std::uint32_t eax, edx;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<std::uint64_t>(edx) << 32) | eax;
}

CpuCapability detect() {
  unsigned eax, ebx, ecx, edx;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return CpuCapability::portable;
  const bool osxsave = ecx & bit_OSXSAVE, fma = ecx & bit_FMA, avx = ecx & bit_AVX;
  if (!(osxsave && avx && fma)) return CpuCapability::portable;
  const std::uint64_t xcr0 = read_xcr0();
  const bool ymm_saved = (xcr0 & 0x6) == 0x6;          // SSE and AVX state
  const bool zmm_saved = (xcr0 & 0xe6) == 0xe6;        // + opmask, ZMM_Hi256, Hi16_ZMM
  if (!ymm_saved || __get_cpuid_max(0, nullptr) < 7) return CpuCapability::portable;
  __cpuid_count(7, 0, eax, ebx, ecx, edx);
  const bool avx2 = ebx & bit_AVX2;
  const bool avx512 = (ebx & bit_AVX512F) && (ebx & bit_AVX512BW) && (ebx & bit_AVX512VL) &&
                      (ebx & bit_AVX512DQ) && zmm_saved;
  if (avx2 && avx512) return CpuCapability::avx512;
  if (avx2) return CpuCapability::avx2;
  return CpuCapability::portable;
}

CpuCapability initial_capability() {
  const CpuCapability detected = detected_capability();
  const char* forced = std::getenv("FASTDL_CPU_CAPABILITY");
  if (!forced || !*forced) return detected;
  const CpuCapability wanted = parse_capability(forced);
  // A request above the machine's level is clamped (a process must still start); set_capability
  // from Python raises instead.
  return static_cast<int>(wanted) <= static_cast<int>(detected) ? wanted : detected;
}

std::atomic<int>& current_level() {
  static std::atomic<int> level{static_cast<int>(initial_capability())};
  return level;
}

template <class V>
inline double fma_loop(long iterations) {
  using reg = typename V::reg;
  reg acc[12];
  for (auto& a : acc) a = V::set1(typename V::T(1));
  const reg x = V::set1(typename V::T(0.999999)), y = V::set1(typename V::T(1e-7));
  for (long it = 0; it < iterations; ++it) {
#pragma GCC unroll 12
    for (auto& a : acc) a = V::fmadd(a, x, y);
  }
  reg sum = acc[0];
  for (int i = 1; i < 12; ++i) sum = V::add(sum, acc[i]);
  return static_cast<double>(V::reduce_add(sum));  // keeps the loop alive
}

FASTDL_TARGET_AVX512 FASTDL_FLATTEN double fma_loop_avx512_f32(long n) { return fma_loop<simd::Avx512F32>(n); }
FASTDL_TARGET_AVX512 FASTDL_FLATTEN double fma_loop_avx512_f64(long n) { return fma_loop<simd::Avx512F64>(n); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN double fma_loop_avx2_f32(long n) { return fma_loop<simd::Avx2F32>(n); }
FASTDL_TARGET_AVX2 FASTDL_FLATTEN double fma_loop_avx2_f64(long n) { return fma_loop<simd::Avx2F64>(n); }
double fma_loop_portable_f32(long n) { return fma_loop<simd::Portable<float>>(n); }
double fma_loop_portable_f64(long n) { return fma_loop<simd::Portable<double>>(n); }

}  // namespace

CpuCapability detected_capability() {
  static const CpuCapability level = detect();
  return level;
}

CpuCapability capability() { return static_cast<CpuCapability>(current_level().load(std::memory_order_relaxed)); }

void set_capability(CpuCapability level) {
  FASTDL_CHECK(static_cast<int>(level) <= static_cast<int>(detected_capability()),
               "set_cpu_capability: '", capability_name(level), "' is above this CPU's level '",
               capability_name(detected_capability()), "'");
  current_level().store(static_cast<int>(level));
}

const char* capability_name(CpuCapability level) {
  switch (level) {
    case CpuCapability::avx512: return "avx512";
    case CpuCapability::avx2: return "avx2";
    default: return "portable";
  }
}

CpuCapability parse_capability(const std::string& name) {
  if (name == "avx512") return CpuCapability::avx512;
  if (name == "avx2") return CpuCapability::avx2;
  if (name == "portable") return CpuCapability::portable;
  fail("cpu capability must be 'portable', 'avx2' or 'avx512', got '", name, "'");
}

std::string cpu_model_name() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown x86-64";
}

double measure_peak_gflops(CpuCapability level, bool float64, int threads, double seconds) {
  FASTDL_CHECK(static_cast<int>(level) <= static_cast<int>(detected_capability()),
               "measure_peak_gflops: level '", capability_name(level), "' is not available here");
  FASTDL_CHECK(threads >= 1 && seconds > 0, "measure_peak_gflops: threads and seconds must be positive");
  double (*loop)(long) = nullptr;
  int lanes = 0;
  switch (level) {
    case CpuCapability::avx512: loop = float64 ? fma_loop_avx512_f64 : fma_loop_avx512_f32; lanes = float64 ? 8 : 16; break;
    case CpuCapability::avx2: loop = float64 ? fma_loop_avx2_f64 : fma_loop_avx2_f32; lanes = float64 ? 4 : 8; break;
    default: loop = float64 ? fma_loop_portable_f64 : fma_loop_portable_f32; lanes = float64 ? 2 : 4; break;
  }
  // One thread: the thread's CPU time, so time descheduled by other processes does not count;
  // several: wall time. Calibrate to the requested duration, then take the best of three runs.
  const auto now = [threads] {
    timespec ts{};
    clock_gettime(threads == 1 ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);
    return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
  };
  long iterations = 1 << 16;
  for (;;) {
    const double t0 = now();
    loop(iterations);
    const double dt = now() - t0;
    if (dt > seconds / 4 || iterations > (1L << 40)) break;
    iterations *= 2;
  }
  double best = 0;
  for (int repeat = 0; repeat < 3; ++repeat) {
    const double t0 = now();
    double sink = 0;
    if (threads == 1) {
      sink = loop(iterations);
    } else {
#pragma omp parallel num_threads(threads) reduction(+ : sink)
      sink += loop(iterations);
    }
    const double dt = now() - t0;
    const double flops = 2.0 * 12 * lanes * static_cast<double>(iterations) * threads;
    if (sink != 12345.678 && flops / dt > best) best = flops / dt;
  }
  return best / 1e9;
}

}  // namespace fastdl::cpu
