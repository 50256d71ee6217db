// The only pybind11 file: array views, argument checks, GIL release, and cpu/cuda dispatch.
// Kernels get raw pointers, sizes and strides in elements; every size is checked here (and again
// in C++ where the kernel is called directly) before any memory is touched.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

// ---- lstm ----------------------------------------------------------------------------------------
// Arrays arrive as py::object so that None means "absent" (zero state, no bias, gradient not wanted).
// Every array must be C-contiguous with the shape derived from x (T, B, I) and w_hh (4H, H).
struct LstmArrays {
  std::string op;
  DType dtype;
  index_t T = 0, B = 0, I = 0, H = 0;
  std::vector<py::array> keep;  // holds the checked arrays while the kernel runs

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
  auto in = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<const S*>(a.get(o, n, std::move(s), false, opt));
  };
  auto out = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<S*>(a.get(o, n, std::move(s), true, opt));
  };
  const S* px = in(x, "x", {T, B, I}, false);
  const S* pw_ih = in(w_ih, "w_ih", {4 * H, I}, false);
  const S* pw_hh = in(w_hh, "w_hh", {4 * H, H}, false);
  const S* pb_ih = in(b_ih, "b_ih", {4 * H}, true);
  const S* pb_hh = in(b_hh, "b_hh", {4 * H}, true);
  const S* ph0 = in(h0, "h0", {B, H}, true);
  const S* pc0 = in(c0, "c0", {B, H}, true);
  S* py_ = out(y, "y", {T, B, H}, false);
  S* ph_n = out(h_n, "h_n", {B, H}, false);
  S* pc_n = out(c_n, "c_n", {B, H}, false);
  S* pgates = out(gates, "gates", {T, B, 4 * H}, false);
  S* pcell = out(cell, "cell", {T, B, H}, true);
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
  auto in = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<const S*>(a.get(o, n, std::move(s), false, opt));
  };
  auto out = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<S*>(a.get(o, n, std::move(s), true, opt));
  };
  const S* pdy = in(dy, "dy", {T, B, H}, true);
  const S* pdh_n = in(dh_n, "dh_n", {B, H}, true);
  const S* pdc_n = in(dc_n, "dc_n", {B, H}, true);
  const S* px = in(x, "x", {T, B, I}, false);
  const S* pw_ih = in(w_ih, "w_ih", {4 * H, I}, false);
  const S* pw_hh = in(w_hh, "w_hh", {4 * H, H}, false);
  const S* ph0 = in(h0, "h0", {B, H}, true);
  const S* pc0 = in(c0, "c0", {B, H}, true);
  const S* py_ = in(y, "y", {T, B, H}, false);
  const S* pgates = in(gates, "gates", {T, B, 4 * H}, false);
  const S* pcell = in(cell, "cell", {T, B, H}, false);
  S* pdx = out(dx, "dx", {T, B, I}, true);
  S* pdh0 = out(dh0, "dh0", {B, H}, true);
  S* pdc0 = out(dc0, "dc0", {B, H}, true);
  S* pdw_ih = out(dw_ih, "dw_ih", {4 * H, I}, true);
  S* pdw_hh = out(dw_hh, "dw_hh", {4 * H, H}, true);
  S* pdb = out(db, "db", {4 * H}, true);
  S* pdgates = out(dgates, "dgates", {T, B, 4 * H}, false);
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
  auto in = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<const S*>(a.get(o, n, std::move(s), false, opt));
  };
  auto out = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<S*>(a.get(o, n, std::move(s), true, opt));
  };
  const S* px = in(x, "x", {T, B, I}, false);
  const S* pw_ih = in(w_ih, "w_ih", {3 * H, I}, false);
  const S* pw_hh = in(w_hh, "w_hh", {3 * H, H}, false);
  const S* pb_ih = in(b_ih, "b_ih", {3 * H}, true);
  const S* pb_hh = in(b_hh, "b_hh", {3 * H}, true);
  const S* ph0 = in(h0, "h0", {B, H}, true);
  S* py_ = out(y, "y", {T, B, H}, false);
  S* ph_n = out(h_n, "h_n", {B, H}, false);
  S* pgates = out(gates, "gates", {T, B, 3 * H}, false);
  S* phn = out(hn, "hn", {T, B, H}, true);
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
  auto in = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<const S*>(a.get(o, n, std::move(s), false, opt));
  };
  auto out = [&](const py::object& o, const char* n, std::vector<index_t> s, bool opt) {
    return static_cast<S*>(a.get(o, n, std::move(s), true, opt));
  };
  const S* pdy = in(dy, "dy", {T, B, H}, true);
  const S* pdh_n = in(dh_n, "dh_n", {B, H}, true);
  const S* px = in(x, "x", {T, B, I}, false);
  const S* pw_ih = in(w_ih, "w_ih", {3 * H, I}, false);
  const S* pw_hh = in(w_hh, "w_hh", {3 * H, H}, false);
  const S* ph0 = in(h0, "h0", {B, H}, true);
  const S* py_ = in(y, "y", {T, B, H}, false);
  const S* pgates = in(gates, "gates", {T, B, 3 * H}, false);
  const S* phn = in(hn, "hn", {T, B, H}, false);
  S* pdx = out(dx, "dx", {T, B, I}, true);
  S* pdh0 = out(dh0, "dh0", {B, H}, true);
  S* pdw_ih = out(dw_ih, "dw_ih", {3 * H, I}, true);
  S* pdw_hh = out(dw_hh, "dw_hh", {3 * H, H}, true);
  S* pdb_ih = out(db_ih, "db_ih", {3 * H}, true);
  S* pdb_hh = out(db_hh, "db_hh", {3 * H}, true);
  S* pdgx = out(dgx, "dgx", {T, B, 3 * H}, false);
  S* pdgh = out(dgh, "dgh", {T, B, 3 * H}, false);
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

  m.def("optim_step", &optim_step, py::arg("rule"), py::arg("hyper"), py::arg("params"), py::arg("grads"),
        py::arg("states"), py::arg("coefs"),
        "one fused optimizer step over a parameter group (rules: sgd adagrad adadelta rmsprop adam nadam adamax)");

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
