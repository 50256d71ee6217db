// The only pybind11 file: array views, argument checks, GIL release, and cpu/cuda dispatch.
// Kernels get raw pointers, sizes and strides in elements; every size is checked here (and again
// in C++ where the kernel is called directly) before any memory is touched.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
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

  m.def("cuda_info", &cuda_info);
}
