// The only pybind11 file: array views, argument checks, GIL release, and cpu/cuda dispatch.
// Kernels get raw pointers, sizes and strides in elements; every size is checked here (and again
// in C++ where the kernel is called directly) before any memory is touched.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
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

// ---- conv2d family -------------------------------------------------------------------------------
// Arrays must be C-contiguous (the Python layer copies views); every size is checked here and again
// in the kernel.

std::string dtype_of(const py::array& a) { return py::str(a.dtype()).cast<std::string>(); }

void check_conv_array(const py::array& a, const char* op, const char* name, DType want) {
  if (float_dtype(a, op, name) != want)
    throw py::type_error(std::string(op) + ": " + name + " must have the input's dtype " +
                         (want == DType::f32 ? "float32" : "float64") + ", got " + dtype_of(a) + " " + shape_of(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(op) + ": " + name + " " + shape_of(a) + " must be C-contiguous");
}

void check_ndim(const py::array& a, py::ssize_t ndim, const char* op, const char* name) {
  if (a.ndim() != ndim)
    throw py::value_error(std::string(op) + ": " + name + " must be " + std::to_string(ndim) + "-D, got " +
                          shape_of(a));
}

struct ConvArgs {
  std::array<index_t, 2> stride;
  std::array<index_t, 4> padding;  // top, left, bottom, right
  std::array<index_t, 2> dilation;
  index_t groups;
};

// The Conv2dShape of input (N, C_in, H, W), weight (C_out, C_in/groups, KH, KW), output (N, C_out, OH, OW).
fastdl::cpu::Conv2dShape conv_shape(const py::array& input, const py::array& weight, const py::array& output,
                                    const ConvArgs& a, const char* op) {
  check_ndim(input, 4, op, "input");
  check_ndim(weight, 4, op, "weight");
  check_ndim(output, 4, op, "output");
  const auto s = fastdl::cpu::Conv2dShape{input.shape(0), input.shape(1), input.shape(2), input.shape(3),
                                          weight.shape(0), weight.shape(2), weight.shape(3), output.shape(2),
                                          output.shape(3), a.stride[0], a.stride[1], a.padding[0], a.padding[1],
                                          a.padding[2], a.padding[3], a.dilation[0], a.dilation[1], a.groups};
  const std::string shapes =
      "input " + shape_of(input) + ", weight " + shape_of(weight) + ", output " + shape_of(output);
  if (a.groups < 1) throw py::value_error(std::string(op) + ": groups must be >= 1, got " + std::to_string(a.groups));
  if (weight.shape(1) * a.groups != input.shape(1))
    throw py::value_error(std::string(op) + ": input channels " + std::to_string(input.shape(1)) +
                          " != weight.shape[1] * groups = " + std::to_string(weight.shape(1)) + " * " +
                          std::to_string(a.groups) + " for " + shapes);
  if (output.shape(0) != input.shape(0) || output.shape(1) != weight.shape(0))
    throw py::value_error(std::string(op) + ": output must be (N, C_out, OH, OW) = (" +
                          std::to_string(input.shape(0)) + ", " + std::to_string(weight.shape(0)) + ", ...) for " +
                          shapes);
  return s;
}

template <class T>
const T* data_or_null(const py::object& a) {
  return a.is_none() ? nullptr : static_cast<const T*>(a.cast<py::array>().data());
}

void conv2d_forward(const py::array& x, const py::array& w, const py::object& bias, py::array y, const ConvArgs& a) {
  const DType t = float_dtype(x, "conv2d", "input");
  check_conv_array(x, "conv2d", "input", t);
  check_conv_array(w, "conv2d", "weight", t);
  check_conv_array(y, "conv2d", "out", t);
  check_writable(y, "conv2d");
  const auto s = conv_shape(x, w, y, a, "conv2d");
  if (!bias.is_none()) {
    const auto b = bias.cast<py::array>();
    check_conv_array(b, "conv2d", "bias", t);
    if (b.ndim() != 1 || b.shape(0) != s.C_out)
      throw py::value_error("conv2d: bias must be (" + std::to_string(s.C_out) + ",), got " + shape_of(b));
  }
  if (t == DType::f32) {
    const float *px = static_cast<const float*>(x.data()), *pw = static_cast<const float*>(w.data());
    const float* pb = data_or_null<float>(bias);
    float* py_ = static_cast<float*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::conv2d_forward<float>(py_, px, pw, pb, s);
  } else {
    const double *px = static_cast<const double*>(x.data()), *pw = static_cast<const double*>(w.data());
    const double* pb = data_or_null<double>(bias);
    double* py_ = static_cast<double*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::conv2d_forward<double>(py_, px, pw, pb, s);
  }
}

void conv2d_backward_input(const py::array& dy, const py::array& w, py::array dx, const ConvArgs& a) {
  const char* op = "conv2d_backward_input";
  const DType t = float_dtype(dy, op, "grad_output");
  check_conv_array(dy, op, "grad_output", t);
  check_conv_array(w, op, "weight", t);
  check_conv_array(dx, op, "grad_input", t);
  check_writable(dx, op);
  const auto s = conv_shape(dx, w, dy, a, op);
  if (t == DType::f32) {
    const float *pdy = static_cast<const float*>(dy.data()), *pw = static_cast<const float*>(w.data());
    float* pdx = static_cast<float*>(dx.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::conv2d_backward_input<float>(pdx, pdy, pw, s);
  } else {
    const double *pdy = static_cast<const double*>(dy.data()), *pw = static_cast<const double*>(w.data());
    double* pdx = static_cast<double*>(dx.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::conv2d_backward_input<double>(pdx, pdy, pw, s);
  }
}

void conv2d_backward_weight(const py::array& dy, const py::array& x, py::array dw, const py::object& dbias,
                            const ConvArgs& a) {
  const char* op = "conv2d_backward_weight";
  const DType t = float_dtype(dy, op, "grad_output");
  check_conv_array(dy, op, "grad_output", t);
  check_conv_array(x, op, "input", t);
  check_conv_array(dw, op, "grad_weight", t);
  check_writable(dw, op);
  const auto s = conv_shape(x, dw, dy, a, op);
  py::array db;
  if (!dbias.is_none()) {
    db = dbias.cast<py::array>();
    check_conv_array(db, op, "grad_bias", t);
    check_writable(db, op);
    if (db.ndim() != 1 || db.shape(0) != s.C_out)
      throw py::value_error(std::string(op) + ": grad_bias must be (" + std::to_string(s.C_out) + ",), got " +
                            shape_of(db));
  }
  if (t == DType::f32) {
    const float *pdy = static_cast<const float*>(dy.data()), *px = static_cast<const float*>(x.data());
    float* pdw = static_cast<float*>(dw.mutable_data());
    float* pdb = dbias.is_none() ? nullptr : static_cast<float*>(db.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::conv2d_backward_weight<float>(pdw, pdb, pdy, px, s);
  } else {
    const double *pdy = static_cast<const double*>(dy.data()), *px = static_cast<const double*>(x.data());
    double* pdw = static_cast<double*>(dw.mutable_data());
    double* pdb = dbias.is_none() ? nullptr : static_cast<double*>(db.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::conv2d_backward_weight<double>(pdw, pdb, pdy, px, s);
  }
}

std::size_t conv2d_forward_workspace(const std::array<index_t, 4>& input, const std::array<index_t, 4>& weight,
                                     const std::array<index_t, 2>& output, const ConvArgs& a,
                                     const std::string& dtype, int threads) {
  FASTDL_CHECK(dtype == "float32" || dtype == "float64", "conv2d: dtype must be float32 or float64, got ", dtype);
  FASTDL_CHECK(a.groups >= 1 && weight[1] * a.groups == input[1], "conv2d: input channels ", input[1],
               " != weight.shape[1] * groups = ", weight[1], " * ", a.groups);
  const fastdl::cpu::Conv2dShape s{input[0],    input[1],    input[2],     input[3],     weight[0],
                                   weight[2],   weight[3],   output[0],    output[1],    a.stride[0],
                                   a.stride[1], a.padding[0], a.padding[1], a.padding[2], a.padding[3],
                                   a.dilation[0], a.dilation[1], a.groups};
  return dtype == "float32" ? fastdl::cpu::conv2d_forward_workspace<float>(s, threads)
                            : fastdl::cpu::conv2d_forward_workspace<double>(s, threads);
}

fastdl::cpu::Pool2dShape pool_shape(const py::array& input, const py::array& output,
                                    const std::array<index_t, 2>& kernel, const std::array<index_t, 2>& stride,
                                    const std::array<index_t, 2>& padding, const std::array<index_t, 2>& dilation,
                                    const char* op) {
  check_ndim(input, 4, op, "input");
  check_ndim(output, 4, op, "output");
  if (output.shape(0) != input.shape(0) || output.shape(1) != input.shape(1))
    throw py::value_error(std::string(op) + ": output " + shape_of(output) + " must keep the batch and channels of input " +
                          shape_of(input));
  return {input.shape(0), input.shape(1), input.shape(2), input.shape(3), output.shape(2), output.shape(3),
          kernel[0],      kernel[1],      stride[0],      stride[1],      padding[0],      padding[1],
          dilation[0],    dilation[1]};
}

template <class Fn>
void with_float(DType t, const Fn& fn) {
  if (t == DType::f32)
    fn(float{});
  else
    fn(double{});
}

void max_pool2d_forward(const py::array& x, py::array y, const py::object& indices, const std::array<index_t, 2>& k,
                        const std::array<index_t, 2>& st, const std::array<index_t, 2>& p,
                        const std::array<index_t, 2>& d) {
  const char* op = "max_pool2d";
  const DType t = float_dtype(x, op, "input");
  check_conv_array(x, op, "input", t);
  check_conv_array(y, op, "out", t);
  check_writable(y, op);
  const auto s = pool_shape(x, y, k, st, p, d, op);
  std::int64_t* pi = nullptr;
  if (!indices.is_none()) {
    auto idx = indices.cast<py::array>();
    if (!py::isinstance<py::array_t<std::int64_t>>(idx) || !(idx.flags() & py::array::c_style) ||
        idx.ndim() != 4 || idx.shape(0) != y.shape(0) || idx.shape(1) != y.shape(1) || idx.shape(2) != y.shape(2) ||
        idx.shape(3) != y.shape(3))
      throw py::value_error(std::string(op) + ": indices must be a C-contiguous int64 array shaped like out " +
                            shape_of(y) + ", got " + dtype_of(idx) + " " + shape_of(idx));
    check_writable(idx, op);
    pi = static_cast<std::int64_t*>(idx.mutable_data());
  }
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data());
    T* pyv = static_cast<T*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::max_pool2d_forward<T>(pyv, pi, px, s);
  });
}

void max_pool2d_backward(const py::array& dy, const py::array& indices, py::array dx, const std::array<index_t, 2>& k,
                         const std::array<index_t, 2>& st, const std::array<index_t, 2>& p,
                         const std::array<index_t, 2>& d) {
  const char* op = "max_pool2d_backward";
  const DType t = float_dtype(dy, op, "grad_output");
  check_conv_array(dy, op, "grad_output", t);
  check_conv_array(dx, op, "grad_input", t);
  check_writable(dx, op);
  const auto s = pool_shape(dx, dy, k, st, p, d, op);
  if (!py::isinstance<py::array_t<std::int64_t>>(indices) || !(indices.flags() & py::array::c_style) ||
      indices.ndim() != 4 || indices.shape(0) != dy.shape(0) || indices.shape(1) != dy.shape(1) ||
      indices.shape(2) != dy.shape(2) || indices.shape(3) != dy.shape(3))
    throw py::value_error(std::string(op) + ": indices must be a C-contiguous int64 array shaped like grad_output " +
                          shape_of(dy) + ", got " + dtype_of(indices) + " " + shape_of(indices));
  const auto* pi = static_cast<const std::int64_t*>(indices.data());
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    const T* pdy = static_cast<const T*>(dy.data());
    T* pdx = static_cast<T*>(dx.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::max_pool2d_backward<T>(pdx, pdy, pi, s);
  });
}

void avg_pool2d_forward(const py::array& x, py::array y, const std::array<index_t, 2>& k,
                        const std::array<index_t, 2>& st, const std::array<index_t, 2>& p, bool count_include_pad,
                        index_t divisor) {
  const char* op = "avg_pool2d";
  const DType t = float_dtype(x, op, "input");
  check_conv_array(x, op, "input", t);
  check_conv_array(y, op, "out", t);
  check_writable(y, op);
  const auto s = pool_shape(x, y, k, st, p, {1, 1}, op);
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data());
    T* pyv = static_cast<T*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::avg_pool2d_forward<T>(pyv, px, s, count_include_pad, divisor);
  });
}

void avg_pool2d_backward(const py::array& dy, py::array dx, const std::array<index_t, 2>& k,
                         const std::array<index_t, 2>& st, const std::array<index_t, 2>& p, bool count_include_pad,
                         index_t divisor) {
  const char* op = "avg_pool2d_backward";
  const DType t = float_dtype(dy, op, "grad_output");
  check_conv_array(dy, op, "grad_output", t);
  check_conv_array(dx, op, "grad_input", t);
  check_writable(dx, op);
  const auto s = pool_shape(dx, dy, k, st, p, {1, 1}, op);
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    const T* pdy = static_cast<const T*>(dy.data());
    T* pdx = static_cast<T*>(dx.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::avg_pool2d_backward<T>(pdx, pdy, s, count_include_pad, divisor);
  });
}

void adaptive_avg_pool2d(const py::array& src, py::array dst, bool backward) {
  const char* op = backward ? "adaptive_avg_pool2d_backward" : "adaptive_avg_pool2d";
  const DType t = float_dtype(src, op, backward ? "grad_output" : "input");
  check_conv_array(src, op, backward ? "grad_output" : "input", t);
  check_conv_array(dst, op, backward ? "grad_input" : "out", t);
  check_writable(dst, op);
  check_ndim(src, 4, op, "input");
  check_ndim(dst, 4, op, "output");
  const py::array& in = backward ? dst : src;
  const py::array& out = backward ? src : dst;
  if (out.shape(0) != in.shape(0) || out.shape(1) != in.shape(1))
    throw py::value_error(std::string(op) + ": output " + shape_of(out) + " must keep the batch and channels of input " +
                          shape_of(in));
  const index_t N = in.shape(0), C = in.shape(1), H = in.shape(2), W = in.shape(3), OH = out.shape(2), OW = out.shape(3);
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    const T* ps = static_cast<const T*>(src.data());
    T* pd = static_cast<T*>(dst.mutable_data());
    py::gil_scoped_release release;
    if (backward)
      fastdl::cpu::adaptive_avg_pool2d_backward<T>(pd, ps, N, C, H, W, OH, OW);
    else
      fastdl::cpu::adaptive_avg_pool2d_forward<T>(pd, ps, N, C, H, W, OH, OW);
  });
}

// ---- lstm ----------------------------------------------------------------------------------------
// Arrays arrive as py::object so that None means "absent" (zero state, no bias, gradient not wanted).
// Every array must be C-contiguous with the shape derived from x (T, B, I) and w_hh (4H, H).
struct LstmArrays {
  std::string op;
  DType dtype;
  index_t T = 0, B = 0, I = 0, H = 0;
  std::vector<py::array> keep;  // holds the checked arrays while the kernel runs

  template <class S>
  const S* input(const py::object& obj, const char* name, std::vector<index_t> shape, bool optional) {
    return static_cast<const S*>(get(obj, name, std::move(shape), false, optional));
  }
  template <class S>
  S* output(const py::object& obj, const char* name, std::vector<index_t> shape, bool optional) {
    return static_cast<S*>(get(obj, name, std::move(shape), true, optional));
  }

  // The data pointer of `obj` (null for None) after checking dtype, shape, layout and writability.
  void* get(const py::object& obj, const char* name, std::vector<index_t> shape, bool writable, bool optional) {
    if (obj.is_none()) {
      if (optional) return nullptr;
      throw py::value_error(op + ": " + name + " is required");
    }
    if (!py::isinstance<py::array>(obj))
      throw py::type_error(op + ": " + name + " must be a NumPy array, got " +
                           py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
    py::array a = py::reinterpret_borrow<py::array>(obj);
    if (float_dtype(a, op.c_str(), name) != dtype)
      throw py::type_error(op + ": " + name + " " + py::str(a.dtype()).cast<std::string>() + " " + shape_of(a) +
                           " does not match x's dtype");
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    for (std::size_t d = 0; ok && d < shape.size(); ++d) ok = a.shape(d) == shape[d];
    if (!ok) {
      std::string want = "(";
      for (std::size_t d = 0; d < shape.size(); ++d) want += (d ? ", " : "") + std::to_string(shape[d]);
      want += shape.size() == 1 ? ",)" : ")";
      throw py::value_error(op + ": " + name + " must have shape " + want + " for T=" + std::to_string(T) + " B=" +
                            std::to_string(B) + " I=" + std::to_string(I) + " H=" + std::to_string(H) + ", got " +
                            shape_of(a));
    }
    if (!(a.flags() & py::array::c_style))
      throw py::value_error(op + ": " + name + " " + shape_of(a) + " must be C-contiguous (copy it first)");
    if (writable) check_writable(a, op.c_str());
    // An output must not overlap an input: the kernel reads inputs after writing outputs.
    const char* begin = static_cast<const char*>(a.data());
    const Span span{begin, begin + a.nbytes(), name, writable};
    for (const Span& other : spans)
      if (other.writable != writable && span.begin < other.end && other.begin < span.end)
        throw py::value_error(op + ": " + name + " " + shape_of(a) + " overlaps " + other.name +
                              " in memory (outputs must not alias inputs)");
    spans.push_back(span);
    keep.push_back(a);
    return writable ? a.mutable_data() : const_cast<void*>(a.data());
  }

  struct Span {
    const char *begin, *end;
    const char* name;
    bool writable;
  };
  std::vector<Span> spans;

  // Sizes from x (T, B, I) and w_hh (gates·H, H): 4 gates for the LSTM, 3 for the GRU.
  LstmArrays(const char* name, const py::array& x, const py::array& w_hh, int gates = 4)
      : op(name), dtype(float_dtype(x, name, "x")) {
    if (x.ndim() != 3 || w_hh.ndim() != 2 || w_hh.shape(0) != gates * w_hh.shape(1))
      throw py::value_error(op + ": x must be (T, B, I) and w_hh (" + std::to_string(gates) + "H, H), got x " +
                            shape_of(x) + ", w_hh " + shape_of(w_hh));
    T = x.shape(0), B = x.shape(1), I = x.shape(2), H = w_hh.shape(1);
    if (T < 1 || B < 1 || I < 1 || H < 1)
      throw py::value_error(op + ": sizes must be positive, got x " + shape_of(x) + ", w_hh " + shape_of(w_hh));
  }
};

fastdl::cpu::LstmPath lstm_path(const std::string& path) {
  if (path == "auto") return fastdl::cpu::LstmPath::automatic;
  if (path == "fused") return fastdl::cpu::LstmPath::fused;
  if (path == "stepwise") return fastdl::cpu::LstmPath::stepwise;
  throw py::value_error("lstm: path must be 'auto', 'fused' or 'stepwise', got '" + path + "'");
}

template <class S>
void lstm_forward_typed(LstmArrays& a, const py::array& x, const py::array& w_ih, const py::array& w_hh,
                        const py::object& b_ih, const py::object& b_hh, const py::object& h0, const py::object& c0,
                        const py::object& y, const py::object& h_n, const py::object& c_n, const py::object& gates,
                        const py::object& cell, fastdl::cpu::LstmPath path) {
  const index_t T = a.T, B = a.B, I = a.I, H = a.H;
  const S* px = a.input<S>(x, "x", {T, B, I}, false);
  const S* pw_ih = a.input<S>(w_ih, "w_ih", {4 * H, I}, false);
  const S* pw_hh = a.input<S>(w_hh, "w_hh", {4 * H, H}, false);
  const S* pb_ih = a.input<S>(b_ih, "b_ih", {4 * H}, true);
  const S* pb_hh = a.input<S>(b_hh, "b_hh", {4 * H}, true);
  const S* ph0 = a.input<S>(h0, "h0", {B, H}, true);
  const S* pc0 = a.input<S>(c0, "c0", {B, H}, true);
  S* py_ = a.output<S>(y, "y", {T, B, H}, false);
  S* ph_n = a.output<S>(h_n, "h_n", {B, H}, false);
  S* pc_n = a.output<S>(c_n, "c_n", {B, H}, false);
  S* pgates = a.output<S>(gates, "gates", {T, B, 4 * H}, false);
  S* pcell = a.output<S>(cell, "cell", {T, B, H}, true);
  py::gil_scoped_release release;
  fastdl::cpu::lstm_forward<S>(py_, ph_n, pc_n, pgates, pcell, px, ph0, pc0, pw_ih, pw_hh, pb_ih, pb_hh, T, B, I, H,
                               path);
}

void lstm_forward(const py::array& x, const py::array& w_ih, const py::array& w_hh, const py::object& b_ih,
                  const py::object& b_hh, const py::object& h0, const py::object& c0, const py::object& y,
                  const py::object& h_n, const py::object& c_n, const py::object& gates, const py::object& cell,
                  const std::string& path) {
  LstmArrays a("lstm_forward", x, w_hh);
  const auto p = lstm_path(path);
  if (a.dtype == DType::f32)
    lstm_forward_typed<float>(a, x, w_ih, w_hh, b_ih, b_hh, h0, c0, y, h_n, c_n, gates, cell, p);
  else
    lstm_forward_typed<double>(a, x, w_ih, w_hh, b_ih, b_hh, h0, c0, y, h_n, c_n, gates, cell, p);
}

template <class S>
void lstm_backward_typed(LstmArrays& a, const py::object& dy, const py::object& dh_n, const py::object& dc_n,
                         const py::array& x, const py::array& w_ih, const py::array& w_hh, const py::object& h0,
                         const py::object& c0, const py::object& y, const py::object& gates, const py::object& cell,
                         const py::object& dx, const py::object& dh0, const py::object& dc0, const py::object& dw_ih,
                         const py::object& dw_hh, const py::object& db, const py::object& dgates,
                         fastdl::cpu::LstmPath path) {
  const index_t T = a.T, B = a.B, I = a.I, H = a.H;
  const S* pdy = a.input<S>(dy, "dy", {T, B, H}, true);
  const S* pdh_n = a.input<S>(dh_n, "dh_n", {B, H}, true);
  const S* pdc_n = a.input<S>(dc_n, "dc_n", {B, H}, true);
  const S* px = a.input<S>(x, "x", {T, B, I}, false);
  const S* pw_ih = a.input<S>(w_ih, "w_ih", {4 * H, I}, false);
  const S* pw_hh = a.input<S>(w_hh, "w_hh", {4 * H, H}, false);
  const S* ph0 = a.input<S>(h0, "h0", {B, H}, true);
  const S* pc0 = a.input<S>(c0, "c0", {B, H}, true);
  const S* py_ = a.input<S>(y, "y", {T, B, H}, false);
  const S* pgates = a.input<S>(gates, "gates", {T, B, 4 * H}, false);
  const S* pcell = a.input<S>(cell, "cell", {T, B, H}, false);
  S* pdx = a.output<S>(dx, "dx", {T, B, I}, true);
  S* pdh0 = a.output<S>(dh0, "dh0", {B, H}, true);
  S* pdc0 = a.output<S>(dc0, "dc0", {B, H}, true);
  S* pdw_ih = a.output<S>(dw_ih, "dw_ih", {4 * H, I}, true);
  S* pdw_hh = a.output<S>(dw_hh, "dw_hh", {4 * H, H}, true);
  S* pdb = a.output<S>(db, "db", {4 * H}, true);
  S* pdgates = a.output<S>(dgates, "dgates", {T, B, 4 * H}, false);
  py::gil_scoped_release release;
  fastdl::cpu::lstm_backward<S>(pdx, pdh0, pdc0, pdw_ih, pdw_hh, pdb, pdgates, pdy, pdh_n, pdc_n, px, ph0, pc0, pw_ih,
                                pw_hh, py_, pgates, pcell, T, B, I, H, path);
}

void lstm_backward(const py::object& dy, const py::object& dh_n, const py::object& dc_n, const py::array& x,
                   const py::array& w_ih, const py::array& w_hh, const py::object& h0, const py::object& c0,
                   const py::object& y, const py::object& gates, const py::object& cell, const py::object& dx,
                   const py::object& dh0, const py::object& dc0, const py::object& dw_ih, const py::object& dw_hh,
                   const py::object& db, const py::object& dgates, const std::string& path) {
  LstmArrays a("lstm_backward", x, w_hh);
  const auto p = lstm_path(path);
  if (a.dtype == DType::f32)
    lstm_backward_typed<float>(a, dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cell, dx, dh0, dc0, dw_ih, dw_hh,
                               db, dgates, p);
  else
    lstm_backward_typed<double>(a, dy, dh_n, dc_n, x, w_ih, w_hh, h0, c0, y, gates, cell, dx, dh0, dc0, dw_ih, dw_hh,
                                db, dgates, p);
}

template <class S>
void gru_forward_typed(LstmArrays& a, const py::array& x, const py::array& w_ih, const py::array& w_hh,
                       const py::object& b_ih, const py::object& b_hh, const py::object& h0, const py::object& y,
                       const py::object& h_n, const py::object& gates, const py::object& hn) {
  const index_t T = a.T, B = a.B, I = a.I, H = a.H;
  const S* px = a.input<S>(x, "x", {T, B, I}, false);
  const S* pw_ih = a.input<S>(w_ih, "w_ih", {3 * H, I}, false);
  const S* pw_hh = a.input<S>(w_hh, "w_hh", {3 * H, H}, false);
  const S* pb_ih = a.input<S>(b_ih, "b_ih", {3 * H}, true);
  const S* pb_hh = a.input<S>(b_hh, "b_hh", {3 * H}, true);
  const S* ph0 = a.input<S>(h0, "h0", {B, H}, true);
  S* py_ = a.output<S>(y, "y", {T, B, H}, false);
  S* ph_n = a.output<S>(h_n, "h_n", {B, H}, false);
  S* pgates = a.output<S>(gates, "gates", {T, B, 3 * H}, false);
  S* phn = a.output<S>(hn, "hn", {T, B, H}, true);
  py::gil_scoped_release release;
  fastdl::cpu::gru_forward<S>(py_, ph_n, pgates, phn, px, ph0, pw_ih, pw_hh, pb_ih, pb_hh, T, B, I, H);
}

void gru_forward(const py::array& x, const py::array& w_ih, const py::array& w_hh, const py::object& b_ih,
                 const py::object& b_hh, const py::object& h0, const py::object& y, const py::object& h_n,
                 const py::object& gates, const py::object& hn) {
  LstmArrays a("gru_forward", x, w_hh, 3);
  if (a.dtype == DType::f32)
    gru_forward_typed<float>(a, x, w_ih, w_hh, b_ih, b_hh, h0, y, h_n, gates, hn);
  else
    gru_forward_typed<double>(a, x, w_ih, w_hh, b_ih, b_hh, h0, y, h_n, gates, hn);
}

template <class S>
void gru_backward_typed(LstmArrays& a, const py::object& dy, const py::object& dh_n, const py::array& x,
                        const py::array& w_ih, const py::array& w_hh, const py::object& h0, const py::object& y,
                        const py::object& gates, const py::object& hn, const py::object& dx, const py::object& dh0,
                        const py::object& dw_ih, const py::object& dw_hh, const py::object& db_ih,
                        const py::object& db_hh, const py::object& dgx, const py::object& dgh) {
  const index_t T = a.T, B = a.B, I = a.I, H = a.H;
  const S* pdy = a.input<S>(dy, "dy", {T, B, H}, true);
  const S* pdh_n = a.input<S>(dh_n, "dh_n", {B, H}, true);
  const S* px = a.input<S>(x, "x", {T, B, I}, false);
  const S* pw_ih = a.input<S>(w_ih, "w_ih", {3 * H, I}, false);
  const S* pw_hh = a.input<S>(w_hh, "w_hh", {3 * H, H}, false);
  const S* ph0 = a.input<S>(h0, "h0", {B, H}, true);
  const S* py_ = a.input<S>(y, "y", {T, B, H}, false);
  const S* pgates = a.input<S>(gates, "gates", {T, B, 3 * H}, false);
  const S* phn = a.input<S>(hn, "hn", {T, B, H}, false);
  S* pdx = a.output<S>(dx, "dx", {T, B, I}, true);
  S* pdh0 = a.output<S>(dh0, "dh0", {B, H}, true);
  S* pdw_ih = a.output<S>(dw_ih, "dw_ih", {3 * H, I}, true);
  S* pdw_hh = a.output<S>(dw_hh, "dw_hh", {3 * H, H}, true);
  S* pdb_ih = a.output<S>(db_ih, "db_ih", {3 * H}, true);
  S* pdb_hh = a.output<S>(db_hh, "db_hh", {3 * H}, true);
  S* pdgx = a.output<S>(dgx, "dgx", {T, B, 3 * H}, false);
  S* pdgh = a.output<S>(dgh, "dgh", {T, B, 3 * H}, false);
  py::gil_scoped_release release;
  fastdl::cpu::gru_backward<S>(pdx, pdh0, pdw_ih, pdw_hh, pdb_ih, pdb_hh, pdgx, pdgh, pdy, pdh_n, px, ph0, pw_ih,
                               pw_hh, py_, pgates, phn, T, B, I, H);
}

void gru_backward(const py::object& dy, const py::object& dh_n, const py::array& x, const py::array& w_ih,
                  const py::array& w_hh, const py::object& h0, const py::object& y, const py::object& gates,
                  const py::object& hn, const py::object& dx, const py::object& dh0, const py::object& dw_ih,
                  const py::object& dw_hh, const py::object& db_ih, const py::object& db_hh, const py::object& dgx,
                  const py::object& dgh) {
  LstmArrays a("gru_backward", x, w_hh, 3);
  if (a.dtype == DType::f32)
    gru_backward_typed<float>(a, dy, dh_n, x, w_ih, w_hh, h0, y, gates, hn, dx, dh0, dw_ih, dw_hh, db_ih, db_hh,
                              dgx, dgh);
  else
    gru_backward_typed<double>(a, dy, dh_n, x, w_ih, w_hh, h0, y, gates, hn, dx, dh0, dw_ih, dw_hh, db_ih, db_hh,
                               dgx, dgh);
}

py::array lstm_vector_math(const std::string& fn, const py::array& x) {
  const DType t = float_dtype(x, "lstm_vector_math", "x");
  if (!(x.flags() & py::array::c_style))
    throw py::value_error("lstm_vector_math: x " + shape_of(x) + " must be C-contiguous");
  py::array y(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
  const index_t n = static_cast<index_t>(x.size());
  if (t == DType::f32) {
    const float* px = static_cast<const float*>(x.data());
    float* py_ = static_cast<float*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::lstm_vector_math<float>(fn, px, py_, n);
  } else {
    const double* px = static_cast<const double*>(x.data());
    double* py_ = static_cast<double*>(y.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::lstm_vector_math<double>(fn, px, py_, n);
  }
  return y;
}

// ---- elementwise ----------------------------------------------------------------------------
// gelu_forward(x, y, cdf) and gelu_backward(x, cdf, grad, dx): C-contiguous arrays of one dtype and
// one size (any shape).

void check_like(const py::array& a, const py::array& x, const char* op, const char* name, DType t) {
  check_conv_array(a, op, name, t);
  if (a.size() != x.size())
    throw py::value_error(std::string(op) + ": " + name + " " + shape_of(a) + " must have the size of x " +
                          shape_of(x));
}

void gelu_forward(const py::array& x, py::array y, py::array cdf) {
  const char* op = "gelu";
  const DType t = float_dtype(x, op, "x");
  check_conv_array(x, op, "x", t);
  check_like(y, x, op, "y", t);
  check_like(cdf, x, op, "cdf", t);
  check_writable(y, op);
  check_writable(cdf, op);
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data());
    T* py_ = static_cast<T*>(y.mutable_data());
    T* pc = static_cast<T*>(cdf.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::gelu_forward<T>(px, py_, pc, static_cast<index_t>(x.size()));
  });
}

void gelu_backward(const py::array& x, const py::array& cdf, const py::array& grad, py::array dx) {
  const char* op = "gelu_backward";
  const DType t = float_dtype(x, op, "x");
  check_conv_array(x, op, "x", t);
  check_like(cdf, x, op, "cdf", t);
  check_like(grad, x, op, "grad", t);
  check_like(dx, x, op, "dx", t);
  check_writable(dx, op);
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    const T* px = static_cast<const T*>(x.data());
    const T* pc = static_cast<const T*>(cdf.data());
    const T* pg = static_cast<const T*>(grad.data());
    T* pd = static_cast<T*>(dx.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::gelu_backward<T>(px, pc, pg, pd, static_cast<index_t>(x.size()));
  });
}

void dropout_mask(py::array mask, double p, std::uint64_t seed) {
  const char* op = "dropout";
  const DType t = float_dtype(mask, op, "mask");
  check_conv_array(mask, op, "mask", t);
  check_writable(mask, op);
  if (!(p >= 0 && p < 1)) throw py::value_error("dropout: p must be in [0, 1), got " + std::to_string(p));
  with_float(t, [&](auto zero) {
    using T = decltype(zero);
    T* pm = static_cast<T*>(mask.mutable_data());
    py::gil_scoped_release release;
    fastdl::cpu::dropout_mask<T>(pm, static_cast<index_t>(mask.size()), p, seed);
  });
}

// ---- optim ----------------------------------------------------------------------------------
// optim_step(rule, hyper, params, grads, states, coefs): one fused step over a parameter group.
// params/grads are lists of arrays; states is a list of 3 lists (each empty or one array per
// parameter); coefs a (count, 4) float64 array. Every array must be C-contiguous (the Python layer
// copies where it is not) and have its parameter's dtype and size; params and states are written.
fastdl::cpu::OptimHyper optim_hyper(const py::dict& d) {
  fastdl::cpu::OptimHyper h;
  for (const auto& item : d) {
    const std::string key = py::str(item.first);
    const py::handle v = item.second;
    if (key == "lr") h.lr = v.cast<double>();
    else if (key == "beta1") h.beta1 = v.cast<double>();
    else if (key == "beta2") h.beta2 = v.cast<double>();
    else if (key == "eps") h.eps = v.cast<double>();
    else if (key == "weight_decay") h.weight_decay = v.cast<double>();
    else if (key == "momentum") h.momentum = v.cast<double>();
    else if (key == "dampening") h.dampening = v.cast<double>();
    else if (key == "alpha") h.alpha = v.cast<double>();
    else if (key == "rho") h.rho = v.cast<double>();
    else if (key == "nesterov") h.nesterov = v.cast<bool>();
    else if (key == "maximize") h.maximize = v.cast<bool>();
    else if (key == "amsgrad") h.amsgrad = v.cast<bool>();
    else if (key == "decoupled") h.decoupled = v.cast<bool>();
    else if (key == "centered") h.centered = v.cast<bool>();
    else throw py::value_error("optim_step: unknown hyperparameter '" + key + "'");
  }
  return h;
}

py::array optim_array(const py::handle& obj, const char* what, std::size_t k, bool writable) {
  if (!py::isinstance<py::array>(obj))
    throw py::type_error(std::string("optim_step: ") + what + " " + std::to_string(k) + " must be a NumPy array, got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>());
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string("optim_step: ") + what + " " + std::to_string(k) + " " + shape_of(a) +
                          " must be C-contiguous");
  if (writable) check_writable(a, "optim_step");
  return a;
}

template <class T>
void optim_step_typed(fastdl::cpu::OptimRule rule, const fastdl::cpu::OptimHyper& h, const py::list& params,
                      const py::list& grads, const py::list& states, const py::array_t<double>& coefs) {
  const std::size_t count = params.size();
  std::vector<fastdl::cpu::OptimTensor<T>> tensors(count);
  const std::string dtype_name = py::str(py::dtype::of<T>()).cast<std::string>();
  for (std::size_t k = 0; k < count; ++k) {
    py::array p = optim_array(params[k], "param", k, true);
    py::array g = optim_array(grads[k], "grad", k, false);
    auto& t = tensors[k];
    t.n = static_cast<index_t>(p.size());
    auto check = [&](const py::array& a, const char* what) {
      if (!py::isinstance<py::array_t<T>>(a))
        throw py::type_error(std::string("optim_step: ") + what + " " + std::to_string(k) + " is " +
                             py::str(a.dtype()).cast<std::string>() + ", parameter is " + dtype_name);
      if (a.size() != p.size())
        throw py::value_error(std::string("optim_step: ") + what + " " + std::to_string(k) + " " + shape_of(a) +
                              " does not match parameter " + shape_of(p));
    };
    check(p, "param");
    check(g, "grad");
    t.param = static_cast<T*>(p.mutable_data());
    t.grad = static_cast<const T*>(g.data());
    for (int slot = 0; slot < 3; ++slot) {
      const py::list lst = states[slot].cast<py::list>();
      t.state[slot] = nullptr;
      if (lst.size() == 0) continue;
      if (lst.size() != count)
        throw py::value_error("optim_step: state list " + std::to_string(slot) + " has " +
                              std::to_string(lst.size()) + " arrays for " + std::to_string(count) + " parameters");
      py::array s = optim_array(lst[k], "state", k, true);
      check(s, "state");
      t.state[slot] = static_cast<T*>(s.mutable_data());
    }
    for (int c = 0; c < 4; ++c) t.coef[c] = coefs.at(k, c);
  }
  py::gil_scoped_release release;
  fastdl::cpu::optim_step<T>(rule, h, tensors.data(), static_cast<index_t>(count));
}

void optim_step(const std::string& rule_name, const py::dict& hyper, const py::list& params, const py::list& grads,
                const py::list& states, const py::array_t<double, py::array::c_style>& coefs) {
  const fastdl::cpu::OptimRule rule = fastdl::cpu::parse_optim_rule(rule_name);
  const fastdl::cpu::OptimHyper h = optim_hyper(hyper);
  const std::size_t count = params.size();
  if (grads.size() != count)
    throw py::value_error("optim_step: " + std::to_string(count) + " params but " + std::to_string(grads.size()) +
                          " grads");
  if (states.size() != 3) throw py::value_error("optim_step: states must be a list of 3 lists");
  if (coefs.ndim() != 2 || coefs.shape(0) != static_cast<py::ssize_t>(count) || coefs.shape(1) != 4)
    throw py::value_error("optim_step: coefs must have shape (" + std::to_string(count) + ", 4), got " +
                          shape_of(coefs));
  if (count == 0) return;
  const DType dt = float_dtype(optim_array(params[0], "param", 0, true), "optim_step", "param 0");
  if (dt == DType::f32)
    optim_step_typed<float>(rule, h, params, grads, states, coefs);
  else
    optim_step_typed<double>(rule, h, params, grads, states, coefs);
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
  if (!c_contiguous(a))
    throw py::value_error(std::string(op) + ": " + name + " " + shape_of(a) + " must be C-contiguous");
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
  const bool heads_ok =
      k.shape(1) == v.shape(1) && (q.shape(1) == 0 || (k.shape(1) > 0 && q.shape(1) % k.shape(1) == 0));
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
      throw py::value_error(std::string(op) + ": mask " + shape_of(m) + " must have shape (B, NH, Lq, Lk) for " +
                            shapes);
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
      throw py::value_error(std::string(op) + ": " + name + " must be a C-contiguous " + dtype_of(q) +
                            " array of shape (" + std::to_string(B) + ", " + std::to_string(NH) + ", " +
                            std::to_string(Lq) + ", " + std::to_string(Dv) + "), got " + dtype_of(*a) + " " +
                            shape_of(*a));
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
  if (x.ndim() != 1 || !c_contiguous(x))
    throw py::value_error("attention_exp2: x must be 1-D contiguous, got " + shape_of(x));
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

// ---- CUDA arrays: CuPy (or any producer) through __cuda_array_interface__ ---------------------

// A device array as the interface describes it: pointer, shape, strides in elements, dtype.
struct CudaView {
  void* ptr = nullptr;
  bool readonly = false;
  std::vector<index_t> shape, strides;
  fastdl::cuda::DType dtype = fastdl::cuda::DType::float32;
  std::string dtype_name;
  index_t size = 1;

  std::string shape_str() const {
    std::string s = "(";
    for (std::size_t d = 0; d < shape.size(); ++d) s += (d ? ", " : "") + std::to_string(shape[d]);
    return s + (shape.size() == 1 ? ",)" : ")");
  }
};

bool is_cuda_array(const py::handle& obj) {
  return !py::isinstance<py::array>(obj) && py::hasattr(obj, "__cuda_array_interface__");
}

// Reads and checks the interface dict (version 2 or 3): typestr float32/float64/float16, or a
// 2-byte void type whose dtype is named bfloat16 (ml_dtypes, as CuPy exports it); strides must be
// whole elements; a mask is refused.
CudaView cuda_view(const py::handle& obj, const char* op, const char* name) {
  if (!is_cuda_array(obj))
    throw py::type_error(std::string(op) + ": " + name + " must be a CUDA array (CuPy), got " +
                         py::str(py::type::of(obj).attr("__name__")).cast<std::string>() +
                         "; do not mix CPU and CUDA arrays");
  const py::dict cai = obj.attr("__cuda_array_interface__");
  CudaView v;
  const py::tuple data = cai["data"];
  v.ptr = reinterpret_cast<void*>(data[0].cast<std::uintptr_t>());
  v.readonly = data[1].cast<bool>();
  for (const auto& d : cai["shape"].cast<py::tuple>()) v.shape.push_back(d.cast<index_t>());
  if (cai.contains("mask") && !cai["mask"].is_none())
    throw py::value_error(std::string(op) + ": " + name + " has a mask; masked arrays are not supported");
  const std::string typestr = cai["typestr"].cast<std::string>();
  const std::string kind = typestr.substr(1);
  std::size_t itemsize = 0;
  if (kind == "f4") {
    v.dtype = fastdl::cuda::DType::float32, v.dtype_name = "float32", itemsize = 4;
  } else if (kind == "f8") {
    v.dtype = fastdl::cuda::DType::float64, v.dtype_name = "float64", itemsize = 8;
  } else if (kind == "f2") {
    v.dtype = fastdl::cuda::DType::float16, v.dtype_name = "float16", itemsize = 2;
  } else if (kind == "V2" && py::hasattr(obj, "dtype") &&
             py::str(obj.attr("dtype").attr("name")).cast<std::string>() == "bfloat16") {
    v.dtype = fastdl::cuda::DType::bfloat16, v.dtype_name = "bfloat16", itemsize = 2;
  } else {
    const std::string shown = py::hasattr(obj, "dtype") ? py::str(obj.attr("dtype")).cast<std::string>() : typestr;
    throw py::type_error(std::string(op) + ": " + name + " must be float32, float64, float16 or bfloat16, got " +
                         shown);
  }
  for (const auto n : v.shape) v.size *= n;
  if (!cai.contains("strides") || cai["strides"].is_none()) {  // C-contiguous
    v.strides.assign(v.shape.size(), 1);
    for (int d = static_cast<int>(v.shape.size()) - 2; d >= 0; --d)
      v.strides[d] = v.strides[d + 1] * (v.shape[d + 1] > 1 ? v.shape[d + 1] : 1);
  } else {
    for (const auto& st : cai["strides"].cast<py::tuple>()) {
      const auto bytes = st.cast<index_t>();
      FASTDL_CHECK(bytes % static_cast<index_t>(itemsize) == 0, op, ": ", name,
                   " strides must be multiples of the item size, got ", bytes, " bytes");
      v.strides.push_back(bytes / static_cast<index_t>(itemsize));
    }
    FASTDL_CHECK(v.strides.size() == v.shape.size(), op, ": ", name, " has ", v.strides.size(), " strides for ",
                 v.shape.size(), " dimensions");
  }
  return v;
}

#ifdef FASTDL_WITH_CUDA
// Every non-empty operand must live on the current device (the one the stream belongs to).
void check_same_device(const char* op, std::initializer_list<std::pair<const char*, const CudaView*>> views) {
  const int current = fastdl::cuda::current_device();
  for (const auto& [name, v] : views) {
    if (v->size == 0) continue;
    const int dev = fastdl::cuda::device_of_pointer(v->ptr, op);
    FASTDL_CHECK(dev == current, op, ": ", name, " ", v->shape_str(), " is on cuda:", dev,
                 " but the current device is cuda:", current, " (use `with cupy.cuda.Device(", dev, "):`)");
  }
}
#endif

#ifndef FASTDL_WITH_CUDA
[[noreturn]] void cuda_not_built(const char* op) {
  throw py::value_error(std::string(op) +
                        ": fastdl was built without CUDA (no nvcc at build time, or FASTDL_CUDA=OFF); reinstall "
                        "from source on a machine with the CUDA toolkit: FASTDL_CUDA=ON pip install .");
}
#endif

void check_cuda_dtypes(const char* op, const CudaView& a, const CudaView& b, const CudaView& out) {
  if (a.dtype != b.dtype || a.dtype != out.dtype)
    throw py::type_error(std::string(op) + ": dtypes differ: a " + a.dtype_name + " " + a.shape_str() + ", b " +
                         b.dtype_name + " " + b.shape_str() + ", out " + out.dtype_name + " " + out.shape_str());
  if (out.readonly) throw py::value_error(std::string(op) + ": out " + out.shape_str() + " is read-only");
}

// out = alpha · op(a) · op(b) + beta · out for 2-D CUDA arrays, on `stream`.
void gemm_cuda(const py::object& a_obj, const py::object& b_obj, const py::object& out_obj, bool trans_a,
               bool trans_b, double alpha, double beta, bool allow_tf32, std::uintptr_t stream) {
  const CudaView a = cuda_view(a_obj, "gemm", "a"), b = cuda_view(b_obj, "gemm", "b");
  const CudaView out = cuda_view(out_obj, "gemm", "out");
  check_cuda_dtypes("gemm", a, b, out);
  if (a.shape.size() != 2 || b.shape.size() != 2 || out.shape.size() != 2)
    throw py::value_error("gemm: a, b and out must be 2-D, got a " + a.shape_str() + ", b " + b.shape_str() +
                          ", out " + out.shape_str());
  const index_t M = trans_a ? a.shape[1] : a.shape[0], K = trans_a ? a.shape[0] : a.shape[1];
  const index_t Kb = trans_b ? b.shape[1] : b.shape[0], N = trans_b ? b.shape[0] : b.shape[1];
  if (K != Kb)
    throw py::value_error("gemm: inner dimensions differ: op(a) is (" + std::to_string(M) + ", " + std::to_string(K) +
                          ") and op(b) is (" + std::to_string(Kb) + ", " + std::to_string(N) + ") for a " +
                          a.shape_str() + ", b " + b.shape_str());
  if (out.shape[0] != M || out.shape[1] != N)
    throw py::value_error("gemm: out must have shape (" + std::to_string(M) + ", " + std::to_string(N) + "), got " +
                          out.shape_str());
#ifdef FASTDL_WITH_CUDA
  check_same_device("gemm", {{"a", &a}, {"b", &b}, {"out", &out}});
  const index_t rsa = a.strides[trans_a ? 1 : 0], csa = a.strides[trans_a ? 0 : 1];
  const index_t rsb = b.strides[trans_b ? 1 : 0], csb = b.strides[trans_b ? 0 : 1];
  py::gil_scoped_release release;
  fastdl::cuda::gemm_strided(a.dtype, allow_tf32, M, N, K, alpha, a.ptr, rsa, csa, b.ptr, rsb, csb, beta, out.ptr,
                             out.strides[0], out.strides[1], stream);
#else
  cuda_not_built("gemm");
#endif
}

// out[...] = a[...] @ b[...] over equal batch shapes (zero strides broadcast), on `stream`.
void matmul_batched_cuda(const py::object& a_obj, const py::object& b_obj, const py::object& out_obj,
                         bool allow_tf32, std::uintptr_t stream) {
  const CudaView a = cuda_view(a_obj, "matmul", "a"), b = cuda_view(b_obj, "matmul", "b");
  const CudaView out = cuda_view(out_obj, "matmul", "out");
  check_cuda_dtypes("matmul", a, b, out);
  const std::size_t nd = out.shape.size();
  bool ok = nd >= 2 && a.shape.size() == nd && b.shape.size() == nd && a.shape[nd - 1] == b.shape[nd - 2] &&
            out.shape[nd - 2] == a.shape[nd - 2] && out.shape[nd - 1] == b.shape[nd - 1];
  for (std::size_t d = 0; ok && d + 2 < nd; ++d) ok = a.shape[d] == out.shape[d] && b.shape[d] == out.shape[d];
  if (!ok)
    throw py::value_error("matmul: shapes do not match: a " + a.shape_str() + ", b " + b.shape_str() + ", out " +
                          out.shape_str());
  if (nd - 2 > static_cast<std::size_t>(fastdl::cuda::kMaxBatchDims))
    throw py::value_error("matmul: at most " + std::to_string(fastdl::cuda::kMaxBatchDims) +
                          " batch dimensions on CUDA, got out " + out.shape_str());
#ifdef FASTDL_WITH_CUDA
  check_same_device("matmul", {{"a", &a}, {"b", &b}, {"out", &out}});
  fastdl::cuda::GemmBatch batch;
  batch.ndim = static_cast<int>(nd - 2);
  for (int d = 0; d < batch.ndim; ++d)
    batch.size[d] = out.shape[d], batch.a[d] = a.strides[d], batch.b[d] = b.strides[d], batch.c[d] = out.strides[d];
  py::gil_scoped_release release;
  fastdl::cuda::gemm_batched(batch, a.dtype, allow_tf32, out.shape[nd - 2], out.shape[nd - 1], a.shape[nd - 1], 1.0,
                             a.ptr, a.strides[nd - 2], a.strides[nd - 1], b.ptr, b.strides[nd - 2],
                             b.strides[nd - 1], 0.0, out.ptr, out.strides[nd - 2], out.strides[nd - 1], stream);
#else
  cuda_not_built("matmul");
#endif
}

std::string cuda_gemm_path(const std::string& dtype, bool allow_tf32, index_t M, index_t N, index_t batch) {
#ifdef FASTDL_WITH_CUDA
  using fastdl::cuda::DType;
  const DType d = dtype == "float64" ? DType::float64
                  : dtype == "float16" ? DType::float16
                  : dtype == "bfloat16" ? DType::bfloat16
                  : DType::float32;
  FASTDL_CHECK(dtype == "float32" || dtype == "float64" || dtype == "float16" || dtype == "bfloat16",
               "cuda_gemm_path: unknown dtype ", dtype);
  return fastdl::cuda::gemm_path(d, allow_tf32, M, N, batch);
#else
  cuda_not_built("gemm");
#endif
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

  py::class_<ConvArgs>(m, "ConvArgs", "stride (2), padding (top, left, bottom, right), dilation (2), groups")
      .def(py::init([](std::array<index_t, 2> stride, std::array<index_t, 4> padding,
                       std::array<index_t, 2> dilation, index_t groups) {
             return ConvArgs{stride, padding, dilation, groups};
           }),
           py::arg("stride"), py::arg("padding"), py::arg("dilation"), py::arg("groups"));
  m.def("conv2d_forward", &conv2d_forward, py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("y"), py::arg("args"),
        "y = conv2d(x, w) + bias, NCHW, C-contiguous float32/float64");
  m.def("conv2d_backward_input", &conv2d_backward_input, py::arg("grad_output"), py::arg("w"), py::arg("grad_input"),
        py::arg("args"), "grad_input = d(conv2d)/dx · grad_output (conv_transpose2d's forward)");
  m.def("conv2d_backward_weight", &conv2d_backward_weight, py::arg("grad_output"), py::arg("x"),
        py::arg("grad_weight"), py::arg("grad_bias"), py::arg("args"),
        "grad_weight (and grad_bias when not None) of conv2d, overwritten");
  m.def("conv2d_forward_workspace", &conv2d_forward_workspace, py::arg("input_shape"), py::arg("weight_shape"),
        py::arg("output_hw"), py::arg("args"), py::arg("dtype"), py::arg("threads"),
        "scratch bytes a conv2d forward call allocates");
  m.def("max_pool2d_forward", &max_pool2d_forward, py::arg("x"), py::arg("y"), py::arg("indices"),
        py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("dilation"));
  m.def("max_pool2d_backward", &max_pool2d_backward, py::arg("grad_output"), py::arg("indices"),
        py::arg("grad_input"), py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("dilation"));
  m.def("avg_pool2d_forward", &avg_pool2d_forward, py::arg("x"), py::arg("y"), py::arg("kernel"), py::arg("stride"),
        py::arg("padding"), py::arg("count_include_pad"), py::arg("divisor"));
  m.def("avg_pool2d_backward", &avg_pool2d_backward, py::arg("grad_output"), py::arg("grad_input"),
        py::arg("kernel"), py::arg("stride"), py::arg("padding"), py::arg("count_include_pad"), py::arg("divisor"));
  m.def("adaptive_avg_pool2d_forward", [](const py::array& x, py::array y) { adaptive_avg_pool2d(x, y, false); },
        py::arg("x"), py::arg("y"));
  m.def("adaptive_avg_pool2d_backward", [](const py::array& dy, py::array dx) { adaptive_avg_pool2d(dy, dx, true); },
        py::arg("grad_output"), py::arg("grad_input"));

  m.def("lstm_forward", &lstm_forward, py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"),
        py::arg("b_hh"), py::arg("h0"), py::arg("c0"), py::arg("y"), py::arg("h_n"), py::arg("c_n"),
        py::arg("gates"), py::arg("cell"), py::arg("path") = "auto",
        "one LSTM layer over a sequence into y, h_n, c_n; gates/cell are saved for lstm_backward (None: optional)");
  m.def("lstm_backward", &lstm_backward, py::arg("dy"), py::arg("dh_n"), py::arg("dc_n"), py::arg("x"),
        py::arg("w_ih"), py::arg("w_hh"), py::arg("h0"), py::arg("c0"), py::arg("y"), py::arg("gates"),
        py::arg("cell"), py::arg("dx"), py::arg("dh0"), py::arg("dc0"), py::arg("dw_ih"), py::arg("dw_hh"),
        py::arg("db"), py::arg("dgates"), py::arg("path") = "auto",
        "LSTM backward through time into the given gradient arrays (None: not wanted)");
  m.def("gru_forward", &gru_forward, py::arg("x"), py::arg("w_ih"), py::arg("w_hh"), py::arg("b_ih"), py::arg("b_hh"),
        py::arg("h0"), py::arg("y"), py::arg("h_n"), py::arg("gates"), py::arg("hn"),
        "one GRU layer over a sequence into y, h_n; gates/hn are saved for gru_backward (None: optional)");
  m.def("gru_backward", &gru_backward, py::arg("dy"), py::arg("dh_n"), py::arg("x"), py::arg("w_ih"),
        py::arg("w_hh"), py::arg("h0"), py::arg("y"), py::arg("gates"), py::arg("hn"), py::arg("dx"), py::arg("dh0"),
        py::arg("dw_ih"), py::arg("dw_hh"), py::arg("db_ih"), py::arg("db_hh"), py::arg("dgx"), py::arg("dgh"),
        "GRU backward through time into the given gradient arrays (None: not wanted)");
  m.def("lstm_vector_math", &lstm_vector_math, py::arg("fn"), py::arg("x"),
        "the gate kernels' vectorised exp/sigmoid/tanh at the current CPU level (accuracy tests)");

  m.def("gelu_forward", &gelu_forward, py::arg("x"), py::arg("y"), py::arg("cdf"),
        "the exact GELU: y = x·Φ(x), and Φ(x) into cdf (contiguous arrays of one dtype and size)");
  m.def("gelu_backward", &gelu_backward, py::arg("x"), py::arg("cdf"), py::arg("grad"), py::arg("dx"),
        "dx = grad·(Φ(x) + x·φ(x)) from gelu_forward's cdf");

  m.def("dropout_mask", &dropout_mask, py::arg("mask"), py::arg("p"), py::arg("seed"),
        "fill a contiguous float array with 1/(1-p) or 0 (probability p), a pure function of (seed, index)");

  m.def("optim_step", &optim_step, py::arg("rule"), py::arg("hyper"), py::arg("params"), py::arg("grads"),
        py::arg("states"), py::arg("coefs"),
        "one fused optimizer step over a parameter group (rules: sgd adagrad adadelta rmsprop adam nadam adamax)");

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
  m.def("gemm_cuda", &gemm_cuda, py::arg("a"), py::arg("b"), py::arg("out"), py::arg("trans_a") = false,
        py::arg("trans_b") = false, py::arg("alpha") = 1.0, py::arg("beta") = 0.0, py::arg("allow_tf32") = false,
        py::arg("stream") = 0,
        "gemm on CUDA arrays (__cuda_array_interface__), launched on the stream handle `stream`");
  m.def("matmul_batched_cuda", &matmul_batched_cuda, py::arg("a"), py::arg("b"), py::arg("out"),
        py::arg("allow_tf32") = false, py::arg("stream") = 0,
        "matmul_batched on CUDA arrays, launched on the stream handle `stream`");
  m.def("cuda_gemm_path", &cuda_gemm_path, py::arg("dtype"), py::arg("allow_tf32"), py::arg("M"), py::arg("N"),
        py::arg("batch") = 1, "which CUDA GEMM kernel runs for these arguments on the current device");
}
