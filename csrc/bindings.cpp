// The only pybind11 file: array views, argument checks, GIL release, and cpu/cuda dispatch.
// Kernels get raw pointers, sizes and strides in elements; every size is checked here (and again
// in C++ where the kernel is called directly) before any memory is touched.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "fastdl.h"

namespace py = pybind11;
using fastdl::index_t;

namespace {

enum class DType { f32, f64 };

std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

DType float_dtype(const py::array& a, const char* op, const char* name) {
  if (py::isinstance<py::array_t<float>>(a)) return DType::f32;
  if (py::isinstance<py::array_t<double>>(a)) return DType::f64;
  throw py::type_error(std::string(op) + ": " + name + " must be float32 or float64, got " +
                       py::str(a.dtype()).cast<std::string>() + " " + shape_of(a));
}

// Stride of dimension d in elements (NumPy stores bytes).
index_t stride_of(const py::array& a, py::ssize_t d, const char* op) {
  const auto bytes = a.strides(d);
  FASTDL_CHECK(bytes % static_cast<py::ssize_t>(a.itemsize()) == 0, op,
               ": array strides must be multiples of the item size, got ", bytes, " bytes");
  return static_cast<index_t>(bytes / static_cast<py::ssize_t>(a.itemsize()));
}

// out (M×N) = alpha · op(a) · op(b) + beta · out on any strides.
template <class T>
void gemm_2d(const py::array& a, const py::array& b, py::array& out, bool trans_a, bool trans_b, double alpha,
             double beta) {
  const index_t M = out.shape(0), N = out.shape(1), K = trans_a ? a.shape(0) : a.shape(1);
  const index_t rsa = stride_of(a, trans_a ? 1 : 0, "gemm"), csa = stride_of(a, trans_a ? 0 : 1, "gemm");
  const index_t rsb = stride_of(b, trans_b ? 1 : 0, "gemm"), csb = stride_of(b, trans_b ? 0 : 1, "gemm");
  const index_t rsc = stride_of(out, 0, "gemm"), csc = stride_of(out, 1, "gemm");
  const T* pa = static_cast<const T*>(a.data());
  const T* pb = static_cast<const T*>(b.data());
  T* pc = static_cast<T*>(out.mutable_data());
  py::gil_scoped_release release;
  fastdl::cpu::gemm_strided<T>(M, N, K, static_cast<T>(alpha), pa, rsa, csa, pb, rsb, csb, static_cast<T>(beta), pc,
                               rsc, csc);
}

void check_writable(const py::array& out, const char* op) {
  if (!out.writeable()) throw py::value_error(std::string(op) + ": out " + shape_of(out) + " is read-only");
}

void gemm(const py::array& a, const py::array& b, py::array out, bool trans_a, bool trans_b, double alpha,
          double beta) {
  const DType ta = float_dtype(a, "gemm", "a"), tb = float_dtype(b, "gemm", "b"), tc = float_dtype(out, "gemm", "out");
  if (ta != tb || ta != tc)
    throw py::type_error("gemm: dtypes differ: a " + py::str(a.dtype()).cast<std::string>() + " " + shape_of(a) +
                         ", b " + py::str(b.dtype()).cast<std::string>() + " " + shape_of(b) + ", out " +
                         py::str(out.dtype()).cast<std::string>() + " " + shape_of(out));
  if (a.ndim() != 2 || b.ndim() != 2 || out.ndim() != 2)
    throw py::value_error("gemm: a, b and out must be 2-D, got a " + shape_of(a) + ", b " + shape_of(b) + ", out " +
                          shape_of(out));
  const index_t M = trans_a ? a.shape(1) : a.shape(0), K = trans_a ? a.shape(0) : a.shape(1);
  const index_t Kb = trans_b ? b.shape(1) : b.shape(0), N = trans_b ? b.shape(0) : b.shape(1);
  if (K != Kb)
    throw py::value_error("gemm: inner dimensions differ: op(a) is (" + std::to_string(M) + ", " + std::to_string(K) +
                          ") and op(b) is (" + std::to_string(Kb) + ", " + std::to_string(N) + ") for a " +
                          shape_of(a) + ", b " + shape_of(b));
  if (out.shape(0) != M || out.shape(1) != N)
    throw py::value_error("gemm: out must have shape (" + std::to_string(M) + ", " + std::to_string(N) + "), got " +
                          shape_of(out));
  check_writable(out, "gemm");
  if (ta == DType::f32)
    gemm_2d<float>(a, b, out, trans_a, trans_b, alpha, beta);
  else
    gemm_2d<double>(a, b, out, trans_a, trans_b, alpha, beta);
}

// Batched product over the leading dimensions of a (..., M, K), b (..., K, N), out (..., M, N),
// all with the same batch shape (the caller broadcasts with zero strides).
template <class T>
void matmul_batched_typed(const py::array& a, const py::array& b, py::array& out) {
  const py::ssize_t nd = out.ndim(), batch_dims = nd - 2;
  const index_t M = out.shape(nd - 2), N = out.shape(nd - 1), K = a.shape(nd - 1);
  index_t batch = 1;
  for (py::ssize_t d = 0; d < batch_dims; ++d) batch *= out.shape(d);
  std::vector<index_t> offA(batch), offB(batch), offC(batch);
  std::vector<index_t> idx(batch_dims, 0);
  for (index_t i = 0; i < batch; ++i) {
    index_t oa = 0, ob = 0, oc = 0;
    for (py::ssize_t d = 0; d < batch_dims; ++d) {
      oa += idx[d] * stride_of(a, d, "matmul");
      ob += idx[d] * stride_of(b, d, "matmul");
      oc += idx[d] * stride_of(out, d, "matmul");
    }
    offA[i] = oa, offB[i] = ob, offC[i] = oc;
    for (py::ssize_t d = batch_dims - 1; d >= 0; --d) {
      if (++idx[d] < out.shape(d)) break;
      idx[d] = 0;
    }
  }
  const index_t rsa = stride_of(a, nd - 2, "matmul"), csa = stride_of(a, nd - 1, "matmul");
  const index_t rsb = stride_of(b, nd - 2, "matmul"), csb = stride_of(b, nd - 1, "matmul");
  const index_t rsc = stride_of(out, nd - 2, "matmul"), csc = stride_of(out, nd - 1, "matmul");
  const T* pa = static_cast<const T*>(a.data());
  const T* pb = static_cast<const T*>(b.data());
  T* pc = static_cast<T*>(out.mutable_data());
  py::gil_scoped_release release;
  fastdl::cpu::gemm_batched<T>(batch, offA.data(), offB.data(), offC.data(), M, N, K, T(1), pa, rsa, csa, pb, rsb,
                               csb, T(0), pc, rsc, csc);
}

void matmul_batched(const py::array& a, const py::array& b, py::array out) {
  const DType ta = float_dtype(a, "matmul", "a"), tb = float_dtype(b, "matmul", "b");
  const DType tc = float_dtype(out, "matmul", "out");
  if (ta != tb || ta != tc)
    throw py::type_error("matmul: dtypes differ: a " + py::str(a.dtype()).cast<std::string>() + " " + shape_of(a) +
                         ", b " + py::str(b.dtype()).cast<std::string>() + " " + shape_of(b));
  const py::ssize_t nd = out.ndim();
  bool ok = nd >= 2 && a.ndim() == nd && b.ndim() == nd && a.shape(nd - 1) == b.shape(nd - 2) &&
            out.shape(nd - 2) == a.shape(nd - 2) && out.shape(nd - 1) == b.shape(nd - 1);
  for (py::ssize_t d = 0; ok && d < nd - 2; ++d) ok = a.shape(d) == out.shape(d) && b.shape(d) == out.shape(d);
  if (!ok)
    throw py::value_error("matmul: shapes do not match: a " + shape_of(a) + ", b " + shape_of(b) + ", out " +
                          shape_of(out));
  check_writable(out, "matmul");
  if (ta == DType::f32)
    matmul_batched_typed<float>(a, b, out);
  else
    matmul_batched_typed<double>(a, b, out);
}

// ---- attention ---------------------------------------------------------------------------------
bool c_contiguous(const py::array& a) {
  if (a.size() == 0) return true;
  py::ssize_t expected = a.itemsize();
  for (py::ssize_t d = a.ndim() - 1; d >= 0; --d) {
    if (a.shape(d) != 1 && a.strides(d) != expected) return false;
    expected *= a.shape(d);
  }
  return true;
}

std::string dtype_of(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

// Checks an output array: dtype, shape, C-contiguous, writeable.
void check_output(const char* op, const char* name, const py::array& a, const py::array& like,
                  const std::vector<index_t>& shape) {
  if (!a.dtype().is(like.dtype()))
    throw py::type_error(std::string(op) + ": " + name + " must be " + dtype_of(like) + ", got " + dtype_of(a));
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (py::ssize_t d = 0; ok && d < a.ndim(); ++d) ok = a.shape(d) == shape[d];
  if (!ok) {
    std::string want = "(";
    for (std::size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + std::to_string(shape[d]);
    throw py::value_error(std::string(op) + ": " + name + " must have shape " + want + "), got " + shape_of(a));
  }
  if (!c_contiguous(a)) throw py::value_error(std::string(op) + ": " + name + " " + shape_of(a) + " must be C-contiguous");
  check_writable(a, op);
}

// q (B, NH, Lq, D), k (B, NHK, Lk, D), v (B, NHK, Lk, Dv), mask None or (B, NH, Lq, Lk) bool or q's
// dtype: checked here; any strides.
DType check_attention_inputs(const char* op, const py::array& q, const py::array& k, const py::array& v,
                             const py::object& mask) {
  const DType tq = float_dtype(q, op, "q"), tk = float_dtype(k, op, "k"), tv = float_dtype(v, op, "v");
  const std::string shapes = "q " + shape_of(q) + ", k " + shape_of(k) + ", v " + shape_of(v);
  if (tq != tk || tq != tv)
    throw py::type_error(std::string(op) + ": dtypes differ: q " + dtype_of(q) + ", k " + dtype_of(k) + ", v " +
                         dtype_of(v) + " for " + shapes);
  if (q.ndim() != 4 || k.ndim() != 4 || v.ndim() != 4)
    throw py::value_error(std::string(op) + ": q, k and v must be 4-D (B, heads, L, D), got " + shapes);
  const bool heads_ok = k.shape(1) == v.shape(1) && (q.shape(1) == 0 || (k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0));
  if (q.shape(0) != k.shape(0) || q.shape(0) != v.shape(0) || !heads_ok || k.shape(2) != v.shape(2) ||
      q.shape(3) != k.shape(3))
    throw py::value_error(std::string(op) + ": shapes do not match: " + shapes +
                          " (need equal B, equal k/v heads dividing q's heads, equal k/v length, equal q/k D)");
  if (!mask.is_none()) {
    const py::array m = mask.cast<py::array>();
    if (!py::isinstance<py::array_t<bool>>(m) && !m.dtype().is(q.dtype()))
      throw py::type_error(std::string(op) + ": mask must be bool or " + dtype_of(q) + ", got " + dtype_of(m) + " " +
                           shape_of(m));
    if (m.ndim() != 4 || m.shape(0) != q.shape(0) || m.shape(1) != q.shape(1) || m.shape(2) != q.shape(2) ||
        m.shape(3) != k.shape(2))
      throw py::value_error(std::string(op) + ": mask " + shape_of(m) + " must have shape (B, NH, Lq, Lk) for " + shapes);
  }
  return tq;
}

template <class T>
fastdl::cpu::AttentionProblem<T> attention_problem(const char* op, const py::array& q, const py::array& k,
                                                   const py::array& v, const py::object& mask, bool causal,
                                                   double scale, double dropout_p, std::uint64_t seed) {
  fastdl::cpu::AttentionProblem<T> p{};
  p.B = q.shape(0), p.NH = q.shape(1), p.NHK = k.shape(1), p.Lq = q.shape(2), p.Lk = k.shape(2);
  p.D = q.shape(3), p.Dv = v.shape(3);
  p.Q = static_cast<const T*>(q.data());
  p.K = static_cast<const T*>(k.data());
  p.V = static_cast<const T*>(v.data());
  for (int d = 0; d < 4; ++d) {
    p.q_strides[d] = stride_of(q, d, op);
    p.k_strides[d] = stride_of(k, d, op);
    p.v_strides[d] = stride_of(v, d, op);
    p.mask_strides[d] = 0;
  }
  p.mask_kind = fastdl::cpu::AttentionMask::none;
  p.mask = nullptr;
  if (!mask.is_none()) {
    const py::array m = mask.cast<py::array>();
    p.mask_kind = py::isinstance<py::array_t<bool>>(m) ? fastdl::cpu::AttentionMask::boolean
                                                         : fastdl::cpu::AttentionMask::additive;
    p.mask = m.data();
    for (int d = 0; d < 4; ++d) p.mask_strides[d] = stride_of(m, d, op);
  }
  p.causal = causal;
  p.scale = scale;
  p.dropout_p = dropout_p;
  p.seed = seed;
  return p;
}

void attention_forward(const py::array& q, const py::array& k, const py::array& v, const py::object& mask,
                       py::array out, py::array lse, bool causal, double scale, double dropout_p, std::uint64_t seed) {
  const char* op = "attention_forward";
  const DType dt = check_attention_inputs(op, q, k, v, mask);
  check_output(op, "out", out, q, {q.shape(0), q.shape(1), q.shape(2), v.shape(3)});
  check_output(op, "lse", lse, q, {q.shape(0), q.shape(1), q.shape(2)});
  if (dt == DType::f32) {
    const auto p = attention_problem<float>(op, q, k, v, mask, causal, scale, dropout_p, seed);
    float* o = static_cast<float*>(out.mutable_data());
    float* l = static_cast<float*>(lse.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::attention_forward<float>(p, o, l);
  } else {
    const auto p = attention_problem<double>(op, q, k, v, mask, causal, scale, dropout_p, seed);
    double* o = static_cast<double*>(out.mutable_data());
    double* l = static_cast<double*>(lse.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::attention_forward<double>(p, o, l);
  }
}

template <class T>
void attention_backward_typed(const fastdl::cpu::AttentionProblem<T>& p, const py::array& grad_out,
                              const py::array& out, const py::array& lse, py::array& grad_q, py::array& grad_k,
                              py::array& grad_v, const py::object& grad_mask) {
  const T* dO = static_cast<const T*>(grad_out.data());
  const T* O = static_cast<const T*>(out.data());
  const T* L = static_cast<const T*>(lse.data());
  T* dQ = static_cast<T*>(grad_q.mutable_data());
  T* dK = static_cast<T*>(grad_k.mutable_data());
  T* dV = static_cast<T*>(grad_v.mutable_data());
  T* dM = grad_mask.is_none() ? nullptr : static_cast<T*>(grad_mask.cast<py::array>().mutable_data());
  py::gil_scoped_release release;
  fastdl::cpu::attention_backward<T>(p, O, dO, L, dQ, dK, dV, dM);
}

void attention_backward(const py::array& grad_out, const py::array& q, const py::array& k, const py::array& v,
                        const py::array& out, const py::array& lse, const py::object& mask, py::array grad_q,
                        py::array grad_k, py::array grad_v, const py::object& grad_mask, bool causal, double scale,
                        double dropout_p, std::uint64_t seed) {
  const char* op = "attention_backward";
  const DType dt = check_attention_inputs(op, q, k, v, mask);
  const index_t B = q.shape(0), NH = q.shape(1), NHK = k.shape(1), Lq = q.shape(2), Lk = k.shape(2);
  const index_t D = q.shape(3), Dv = v.shape(3);
  for (const auto& [name, a] : {std::pair<const char*, const py::array*>{"grad_out", &grad_out}, {"out", &out}}) {
    if (!a->dtype().is(q.dtype()) || a->ndim() != 4 || a->shape(0) != B || a->shape(1) != NH || a->shape(2) != Lq ||
        a->shape(3) != Dv || !c_contiguous(*a))
      throw py::value_error(std::string(op) + ": " + name + " must be a C-contiguous " + dtype_of(q) + " array of shape (" +
                            std::to_string(B) + ", " + std::to_string(NH) + ", " + std::to_string(Lq) + ", " +
                            std::to_string(Dv) + "), got " + dtype_of(*a) + " " + shape_of(*a));
  }
  if (!lse.dtype().is(q.dtype()) || lse.ndim() != 3 || lse.shape(0) != B || lse.shape(1) != NH || lse.shape(2) != Lq ||
      !c_contiguous(lse))
    throw py::value_error(std::string(op) + ": lse must be a C-contiguous " + dtype_of(q) + " array of shape (" +
                          std::to_string(B) + ", " + std::to_string(NH) + ", " + std::to_string(Lq) + "), got " +
                          dtype_of(lse) + " " + shape_of(lse));
  check_output(op, "grad_q", grad_q, q, {B, NH, Lq, D});
  check_output(op, "grad_k", grad_k, q, {B, NHK, Lk, D});
  check_output(op, "grad_v", grad_v, q, {B, NHK, Lk, Dv});
  if (!grad_mask.is_none()) check_output(op, "grad_mask", grad_mask.cast<py::array>(), q, {B, NH, Lq, Lk});
  if (dt == DType::f32)
    attention_backward_typed<float>(attention_problem<float>(op, q, k, v, mask, causal, scale, dropout_p, seed),
                                    grad_out, out, lse, grad_q, grad_k, grad_v, grad_mask);
  else
    attention_backward_typed<double>(attention_problem<double>(op, q, k, v, mask, causal, scale, dropout_p, seed),
                                     grad_out, out, lse, grad_q, grad_k, grad_v, grad_mask);
}

py::array attention_exp2(const py::array& x) {
  const DType t = float_dtype(x, "attention_exp2", "x");
  if (x.ndim() != 1 || !c_contiguous(x)) throw py::value_error("attention_exp2: x must be 1-D contiguous, got " + shape_of(x));
  py::array y(x.dtype(), std::vector<py::ssize_t>{x.shape(0)});
  const index_t n = x.shape(0);
  if (t == DType::f32) {
    const float* px = static_cast<const float*>(x.data());
    float* py_ = static_cast<float*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::attention_exp2<float>(px, py_, n);
  } else {
    const double* px = static_cast<const double*>(x.data());
    double* py_ = static_cast<double*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::attention_exp2<double>(px, py_, n);
  }
  return y;
}

py::dict cuda_info() {
  py::dict info;
#ifdef FASTDL_WITH_CUDA
  std::string why;
  const auto found = fastdl::cuda::devices(&why);
  py::list devices;
  for (const auto& d : found) {
    py::dict dev;
    dev["index"] = d.index;
    dev["name"] = d.name;
    dev["compute_capability"] = std::to_string(d.major) + "." + std::to_string(d.minor);
    dev["multiprocessors"] = d.multiprocessors;
    dev["total_memory"] = d.total_memory;
    devices.append(dev);
  }
  info["built"] = true;
  info["architectures"] = std::string(FASTDL_CUDA_ARCHS);
  info["runtime_version"] = fastdl::cuda::runtime_version();
  info["devices"] = devices;
  info["why_no_device"] = found.empty() ? py::object(py::str(why)) : py::object(py::none());
#else
  info["built"] = false;
  info["architectures"] = std::string();
  info["runtime_version"] = 0;
  info["devices"] = py::list();
  info["why_no_device"] = py::str("fastdl was built without CUDA (no nvcc at build time, or FASTDL_CUDA=OFF)");
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastdl native kernels (CPU: portable/AVX2/AVX-512; CUDA when built)";

  m.def("cpu_capability", [] { return std::string(fastdl::cpu::capability_name(fastdl::cpu::capability())); });
  m.def("detected_cpu_capability",
        [] { return std::string(fastdl::cpu::capability_name(fastdl::cpu::detected_capability())); });
  m.def("set_cpu_capability",
        [](const std::string& name) { fastdl::cpu::set_capability(fastdl::cpu::parse_capability(name)); });
  m.def("cpu_model_name", &fastdl::cpu::cpu_model_name);
  m.def(
      "measure_peak_gflops",
      [](const std::string& level, bool float64, int threads, double seconds) {
        const auto cap = fastdl::cpu::parse_capability(level);
        py::gil_scoped_release release;
        return fastdl::cpu::measure_peak_gflops(cap, float64, threads, seconds);
      },
      py::arg("level"), py::arg("float64") = false, py::arg("threads") = 1, py::arg("seconds") = 0.2);
  m.def("set_num_threads", [](int n) {
    FASTDL_CHECK(n >= 1, "set_num_threads: n must be >= 1, got ", n);
    omp_set_num_threads(n);
  });
  m.def("get_num_threads", [] { return omp_get_max_threads(); });
  m.def("gemm_blocking", [](const std::string& dtype) {
    FASTDL_CHECK(dtype == "float32" || dtype == "float64", "gemm_blocking: dtype must be float32 or float64");
    const auto b = dtype == "float32" ? fastdl::cpu::gemm_blocking<float>() : fastdl::cpu::gemm_blocking<double>();
    py::dict d;
    d["MR"] = b.MR, d["NR"] = b.NR, d["MC"] = b.MC, d["KC"] = b.KC, d["NC"] = b.NC;
    return d;
  });

  m.def("gemm", &gemm, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("alpha") = 1.0, py::arg("beta") = 0.0,
        "out = alpha * op(a) @ op(b) + beta * out for 2-D float32/float64 arrays of any strides");
  m.def("matmul_batched", &matmul_batched, py::arg("a"), py::arg("b"), py::arg("out"),
        "out[...] = a[...] @ b[...] over equal batch shapes (broadcast with zero strides)");

  m.def("attention_forward", &attention_forward, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("mask"),
        py::arg("out"), py::arg("lse"), py::arg("causal"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"),
        "fused attention on 4-D (B, heads, L, D) arrays of any strides into contiguous out and lse");
  m.def("attention_backward", &attention_backward, py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"),
        py::arg("out"), py::arg("lse"), py::arg("mask"), py::arg("grad_q"), py::arg("grad_k"), py::arg("grad_v"),
        py::arg("grad_mask"), py::arg("causal"), py::arg("scale"), py::arg("dropout_p"), py::arg("seed"),
        "gradients of attention_forward (P recomputed from lse) into contiguous grad arrays");
  m.def("attention_exp2", &attention_exp2, py::arg("x"), "2^x by the attention kernels' vectorised exp2");
  m.def("attention_blocking", [](const std::string& dtype, index_t D, index_t Dv) {
    FASTDL_CHECK(dtype == "float32" || dtype == "float64", "attention_blocking: dtype must be float32 or float64");
    const auto b = dtype == "float32" ? fastdl::cpu::attention_blocking<float>(D, Dv)
                                      : fastdl::cpu::attention_blocking<double>(D, Dv);
    py::dict d;
    d["MR"] = b.MR, d["W"] = b.W, d["Br"] = b.Br, d["Bc"] = b.Bc;
    return d;
  }, py::arg("dtype"), py::arg("D") = 64, py::arg("Dv") = 64);

  m.def("cuda_info", &cuda_info);
}
