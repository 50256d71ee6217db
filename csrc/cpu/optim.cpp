// Optimizer steps: one fused, multi-tensor pass over every parameter of a parameter group.
//
// Formulas (g = ±grad + coupled weight decay; PyTorch's torch/optim order of operations):
//   sgd      b = μb + (1−τ)g (b = g on the first step); p −= lr·(nesterov ? g + μb : b)
//   adagrad  s += g²; p −= clr·g / (√s + ε)
//   adadelta v = ρv + (1−ρ)g²; d = √(u + ε)/√(v + ε)·g; u = ρu + (1−ρ)d²; p −= lr·d
//   rmsprop  v = αv + (1−α)g²; m̄ = lerp(m̄, g, 1−α); a = √(v − m̄²) + ε; b = μb + g/a; p −= lr·b
//   adam     m = lerp(m, g, 1−β1); v = β2v + (1−β2)g²; p −= lr/(1−β1ᵗ)·m / (√v/√(1−β2ᵗ) + ε)
//   nadam    as adam with the Nesterov μ-schedule; adamax  u = max(β2u, |g| + ε); p −= clr·m/u
// (Kingma & Ba 2015; Loshchilov & Hutter 2019; Dozat 2016; Duchi et al. 2011; Zeiler 2012.)
// Algorithm: the tensors of a group are cut into chunks of kChunk elements; threads take whole
// chunks; each chunk is one loop that reads p, g and the state once and writes p and the state
// once (NVIDIA apex's multi_tensor_apply). Step-dependent scalars (bias corrections) arrive per
// tensor in `coef`. The loops are plain element code, vectorised by the compiler inside entry
// functions compiled for each ISA (the target attribute + flatten pattern of simd.h).
// Cost floor: memory traffic, e.g. adam 7 arrays × n × sizeof(T) bytes (4 read, 3 written).
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "cpu/simd.h"
#include "fastdl.h"

namespace fastdl::cpu {
namespace {

// Large enough to amortise the per-chunk call, small enough (128 KB of float32) to balance threads.
constexpr index_t kChunk = 32768;

// torch.lerp's two-sided form, exact at both ends; `low` = (w < 0.5) is decided once per call so
// the loop stays branch-free.
template <class T>
inline T lerp(T a, T b, T w, bool low) {
  const T d = b - a;
  return low ? a + w * d : b - d * (T(1) - w);
}

// Calls f(std::true_type) or f(std::false_type): a loop-invariant flag becomes a compile-time one,
// so every variant of a loop is a straight line the compiler vectorises.
template <class F>
inline void with_flag(bool flag, F&& f) {
  if (flag)
    f(std::true_type{});
  else
    f(std::false_type{});
}

// Scalars of one step in the element type, computed once in double as PyTorch does.
template <class T>
struct Scalars {
  T sign, wd, decay, lr_neg, b1w, b2, b2w, eps, mom, damp_w, rho, rho_w, alpha, alpha_w;
  bool b1_low, alpha_low;
  explicit Scalars(const OptimHyper& h)
      : sign(h.maximize ? T(-1) : T(1)),
        wd(T(h.weight_decay)),
        decay(T(1.0 - h.lr * h.weight_decay)),
        lr_neg(T(-h.lr)),
        b1w(T(1.0 - h.beta1)),
        b2(T(h.beta2)),
        b2w(T(1.0 - h.beta2)),
        eps(T(h.eps)),
        mom(T(h.momentum)),
        damp_w(T(1.0 - h.dampening)),
        rho(T(h.rho)),
        rho_w(T(1.0 - h.rho)),
        alpha(T(h.alpha)),
        alpha_w(T(1.0 - h.alpha)),
        b1_low(b1w < T(0.5)),
        alpha_low(alpha_w < T(0.5)) {}
};

// Gradient with the sign of `maximize` and, when WD, coupled (L2) weight decay.
template <bool WD, class T>
inline T grad_of(const Scalars<T>& s, T g, T p) {
  g = s.sign * g;
  if constexpr (WD) return g + s.wd * p;
  return g;
}

template <class T>
void sgd(const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  const Scalars<T> s(h);
  T* __restrict p = t.param;
  const T* __restrict gr = t.grad;
  T* __restrict buf = t.state[0];
  with_flag(h.weight_decay != 0, [&](auto WD) {
    if (!buf) {
      for (index_t i = i0; i < i1; ++i) p[i] = p[i] + s.lr_neg * grad_of<WD()>(s, gr[i], p[i]);
      return;
    }
    with_flag(t.coef[0] != 0, [&](auto FIRST) {
      with_flag(h.nesterov, [&](auto NESTEROV) {
        for (index_t i = i0; i < i1; ++i) {
          const T g = grad_of<WD()>(s, gr[i], p[i]);
          T b;
          if constexpr (FIRST()) b = g;
          else b = buf[i] * s.mom + s.damp_w * g;
          buf[i] = b;
          if constexpr (NESTEROV()) p[i] = p[i] + s.lr_neg * (g + s.mom * b);
          else p[i] = p[i] + s.lr_neg * b;
        }
      });
    });
  });
}

template <class T>
void adagrad(const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  const Scalars<T> s(h);
  const T clr_neg = T(-t.coef[0]);
  T* __restrict p = t.param;
  const T* __restrict gr = t.grad;
  T* __restrict sum = t.state[0];
  with_flag(h.weight_decay != 0, [&](auto WD) {
    for (index_t i = i0; i < i1; ++i) {
      const T g = grad_of<WD()>(s, gr[i], p[i]);
      const T acc = sum[i] + g * g;
      sum[i] = acc;
      p[i] = p[i] + clr_neg * (g / (std::sqrt(acc) + s.eps));
    }
  });
}

template <class T>
void adadelta(const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  const Scalars<T> s(h);
  T* __restrict p = t.param;
  const T* __restrict gr = t.grad;
  T* __restrict sq = t.state[0];
  T* __restrict acc = t.state[1];
  with_flag(h.weight_decay != 0, [&](auto WD) {
    for (index_t i = i0; i < i1; ++i) {
      const T g = grad_of<WD()>(s, gr[i], p[i]);
      const T v = sq[i] * s.rho + s.rho_w * g * g;
      sq[i] = v;
      const T delta = std::sqrt(acc[i] + s.eps) / std::sqrt(v + s.eps) * g;
      acc[i] = acc[i] * s.rho + s.rho_w * delta * delta;
      p[i] = p[i] + s.lr_neg * delta;
    }
  });
}

template <class T>
void rmsprop(const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  const Scalars<T> s(h);
  T* __restrict p = t.param;
  const T* __restrict gr = t.grad;
  T* __restrict sq = t.state[0];
  T* __restrict gavg = t.state[1];
  T* __restrict buf = t.state[2];
  with_flag(h.weight_decay != 0, [&](auto WD) {
    with_flag(gavg != nullptr, [&](auto CENTERED) {
      with_flag(buf != nullptr, [&](auto MOMENTUM) {
        for (index_t i = i0; i < i1; ++i) {
          const T g = grad_of<WD()>(s, gr[i], p[i]);
          const T v = sq[i] * s.alpha + s.alpha_w * g * g;
          sq[i] = v;
          T avg;
          if constexpr (CENTERED()) {
            const T m = lerp(gavg[i], g, s.alpha_w, s.alpha_low);
            gavg[i] = m;
            avg = std::sqrt(v - m * m) + s.eps;
          } else {
            avg = std::sqrt(v) + s.eps;
          }
          if constexpr (MOMENTUM()) {
            const T b = buf[i] * s.mom + g / avg;
            buf[i] = b;
            p[i] = p[i] + s.lr_neg * b;
          } else {
            p[i] = p[i] + s.lr_neg * (g / avg);
          }
        }
      });
    });
  });
}

// Adam and AdamW (decoupled weight decay), with AMSGrad when state[2] is given.
template <class T>
void adam(const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  const Scalars<T> s(h);
  const T step_neg = T(-t.coef[0]), bc2_sqrt = T(t.coef[1]);
  T* __restrict p = t.param;
  const T* __restrict gr = t.grad;
  T* __restrict m1 = t.state[0];
  T* __restrict m2 = t.state[1];
  T* __restrict m2max = t.state[2];
  with_flag(h.weight_decay != 0 && !h.decoupled, [&](auto COUPLED) {
    with_flag(h.weight_decay != 0 && h.decoupled, [&](auto DECOUPLED) {
      with_flag(m2max != nullptr, [&](auto AMSGRAD) {
        for (index_t i = i0; i < i1; ++i) {
          T pi = p[i];
          if constexpr (DECOUPLED()) pi = pi * s.decay;
          const T g = grad_of<COUPLED()>(s, gr[i], pi);
          const T m = lerp(m1[i], g, s.b1w, s.b1_low);
          T v = m2[i] * s.b2 + s.b2w * g * g;
          m1[i] = m;
          m2[i] = v;
          if constexpr (AMSGRAD()) {
            v = std::max(m2max[i], v);
            m2max[i] = v;
          }
          p[i] = pi + step_neg * (m / (std::sqrt(v) / bc2_sqrt + s.eps));
        }
      });
    });
  });
}

template <class T>
void nadam(const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  const Scalars<T> s(h);
  const T bc2 = T(t.coef[0]), c_grad = T(t.coef[1]), c_avg = T(t.coef[2]);
  T* __restrict p = t.param;
  const T* __restrict gr = t.grad;
  T* __restrict m1 = t.state[0];
  T* __restrict m2 = t.state[1];
  with_flag(h.weight_decay != 0 && !h.decoupled, [&](auto COUPLED) {
    with_flag(h.weight_decay != 0 && h.decoupled, [&](auto DECOUPLED) {
      for (index_t i = i0; i < i1; ++i) {
        T pi = p[i];
        if constexpr (DECOUPLED()) pi = pi * s.decay;
        const T g = grad_of<COUPLED()>(s, gr[i], pi);
        const T m = lerp(m1[i], g, s.b1w, s.b1_low);
        const T v = m2[i] * s.b2 + s.b2w * g * g;
        m1[i] = m;
        m2[i] = v;
        const T denom = std::sqrt(v / bc2) + s.eps;
        const T q = pi + c_grad * (g / denom);
        p[i] = q + c_avg * (m / denom);
      }
    });
  });
}

template <class T>
void adamax(const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  const Scalars<T> s(h);
  const T clr_neg = T(-t.coef[0]);
  T* __restrict p = t.param;
  const T* __restrict gr = t.grad;
  T* __restrict m1 = t.state[0];
  T* __restrict uinf = t.state[1];
  with_flag(h.weight_decay != 0, [&](auto WD) {
    for (index_t i = i0; i < i1; ++i) {
      const T g = grad_of<WD()>(s, gr[i], p[i]);
      const T m = lerp(m1[i], g, s.b1w, s.b1_low);
      const T u = std::max(uinf[i] * s.b2, std::abs(g) + s.eps);
      m1[i] = m;
      uinf[i] = u;
      p[i] = p[i] + clr_neg * (m / u);
    }
  });
}

template <class T>
inline void span(OptimRule rule, const OptimHyper& h, const OptimTensor<T>& t, index_t i0, index_t i1) {
  switch (rule) {
    case OptimRule::sgd: return sgd(h, t, i0, i1);
    case OptimRule::adagrad: return adagrad(h, t, i0, i1);
    case OptimRule::adadelta: return adadelta(h, t, i0, i1);
    case OptimRule::rmsprop: return rmsprop(h, t, i0, i1);
    case OptimRule::adam: return adam(h, t, i0, i1);
    case OptimRule::nadam: return nadam(h, t, i0, i1);
    case OptimRule::adamax: return adamax(h, t, i0, i1);
  }
}

template <class T>
using SpanFunction = void (*)(OptimRule, const OptimHyper&, const OptimTensor<T>&, index_t, index_t);

FASTDL_TARGET_AVX512 FASTDL_FLATTEN void span_avx512_f32(OptimRule r, const OptimHyper& h,
                                                         const OptimTensor<float>& t, index_t a, index_t b) {
  span(r, h, t, a, b);
}
FASTDL_TARGET_AVX512 FASTDL_FLATTEN void span_avx512_f64(OptimRule r, const OptimHyper& h,
                                                         const OptimTensor<double>& t, index_t a, index_t b) {
  span(r, h, t, a, b);
}
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void span_avx2_f32(OptimRule r, const OptimHyper& h, const OptimTensor<float>& t,
                                                     index_t a, index_t b) {
  span(r, h, t, a, b);
}
FASTDL_TARGET_AVX2 FASTDL_FLATTEN void span_avx2_f64(OptimRule r, const OptimHyper& h,
                                                     const OptimTensor<double>& t, index_t a, index_t b) {
  span(r, h, t, a, b);
}
FASTDL_FLATTEN void span_portable_f32(OptimRule r, const OptimHyper& h, const OptimTensor<float>& t, index_t a,
                                      index_t b) {
  span(r, h, t, a, b);
}
FASTDL_FLATTEN void span_portable_f64(OptimRule r, const OptimHyper& h, const OptimTensor<double>& t, index_t a,
                                      index_t b) {
  span(r, h, t, a, b);
}

template <class T>
SpanFunction<T> span_for(CpuCapability level) {
  if constexpr (sizeof(T) == 4) {
    switch (level) {
      case CpuCapability::avx512: return span_avx512_f32;
      case CpuCapability::avx2: return span_avx2_f32;
      default: return span_portable_f32;
    }
  } else {
    switch (level) {
      case CpuCapability::avx512: return span_avx512_f64;
      case CpuCapability::avx2: return span_avx2_f64;
      default: return span_portable_f64;
    }
  }
}

// Which state slots a rule reads; the others must be null.
bool needs_state(OptimRule rule, const OptimHyper& h, int slot) {
  switch (rule) {
    case OptimRule::sgd: return slot == 0 && h.momentum != 0;
    case OptimRule::adagrad: return slot == 0;
    case OptimRule::adadelta: return slot < 2;
    case OptimRule::rmsprop: return slot == 0 || (slot == 1 && h.centered) || (slot == 2 && h.momentum > 0);
    case OptimRule::adam: return slot < 2 || (slot == 2 && h.amsgrad);
    case OptimRule::nadam: return slot < 2;
    case OptimRule::adamax: return slot < 2;
  }
  return false;
}

}  // namespace

const char* optim_rule_name(OptimRule rule) {
  switch (rule) {
    case OptimRule::sgd: return "sgd";
    case OptimRule::adagrad: return "adagrad";
    case OptimRule::adadelta: return "adadelta";
    case OptimRule::rmsprop: return "rmsprop";
    case OptimRule::adam: return "adam";
    case OptimRule::nadam: return "nadam";
    case OptimRule::adamax: return "adamax";
  }
  return "?";
}

OptimRule parse_optim_rule(const std::string& name) {
  for (int r = 0; r <= static_cast<int>(OptimRule::adamax); ++r)
    if (name == optim_rule_name(static_cast<OptimRule>(r))) return static_cast<OptimRule>(r);
  fail("optim_step: unknown rule '", name, "' (sgd, adagrad, adadelta, rmsprop, adam, nadam, adamax)");
}

template <class T>
void optim_step(OptimRule rule, const OptimHyper& h, const OptimTensor<T>* tensors, index_t count) {
  FASTDL_CHECK(count >= 0, "optim_step: negative tensor count ", count);
  struct Chunk {
    index_t tensor, begin, end;
  };
  std::vector<Chunk> chunks;
  for (index_t k = 0; k < count; ++k) {
    const OptimTensor<T>& t = tensors[k];
    FASTDL_CHECK(t.n >= 0, "optim_step(", optim_rule_name(rule), "): tensor ", k, " has negative size ", t.n);
    FASTDL_CHECK(t.n == 0 || (t.param && t.grad), "optim_step(", optim_rule_name(rule), "): tensor ", k,
                 " has no parameter or gradient data");
    for (int slot = 0; slot < 3; ++slot) {
      const bool needed = needs_state(rule, h, slot);
      FASTDL_CHECK(t.n == 0 || needed == (t.state[slot] != nullptr), "optim_step(", optim_rule_name(rule),
                   "): tensor ", k, " state slot ", slot, needed ? " is missing" : " must be empty");
    }
    for (index_t b = 0; b < t.n; b += kChunk) chunks.push_back({k, b, std::min(t.n, b + kChunk)});
  }
  const SpanFunction<T> fn = span_for<T>(capability());
  // Memory-bound: a thread needs a few chunks before it pays for waking up.
  parallel_for(static_cast<index_t>(chunks.size()), 4, [&](index_t c0, index_t c1) {
    for (index_t c = c0; c < c1; ++c) fn(rule, h, tensors[chunks[c].tensor], chunks[c].begin, chunks[c].end);
  });
}

template void optim_step<float>(OptimRule, const OptimHyper&, const OptimTensor<float>*, index_t);
template void optim_step<double>(OptimRule, const OptimHyper&, const OptimTensor<double>*, index_t);

}  // namespace fastdl::cpu
