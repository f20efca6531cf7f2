// sparsekit._native: the kernels exposed to Python for tests and tooling.
//
// Every argument is validated here (the kernels trust their inputs, the way they trust the op
// that repacks and validates a model's tensors); bad input raises ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ort/work_split.h"

namespace py = pybind11;

namespace {

using FArr = py::array_t<float, py::array::c_style | py::array::forcecast>;
using IArr = py::array_t<int32_t, py::array::c_style | py::array::forcecast>;

const sk::KernelTable& table_for(const std::string& name) {
  for (sk::Isa isa : {sk::Isa::ref, sk::Isa::avx2, sk::Isa::avx512, sk::Isa::neon}) {
    if (name == sk::isa_name(isa)) {
      const sk::KernelTable* t = sk::kernels_for(isa);
      if (!t) throw py::value_error("ISA '" + name + "' is not available on this CPU/build");
      return *t;
    }
  }
  throw py::value_error("unknown ISA '" + name + "' (expected ref, avx2, avx512 or neon)");
}

// A validated SpMat plus the arrays it points into, for one X of K rows x n pixels.
struct Packed {
  sk::SpMat w;
  std::vector<int32_t> group_ptr, x_offset;
  std::vector<float> values;
  int K = 0;
};

Packed pack(int B, int rows, const IArr& group_ptr, const IArr& k_index, const FArr& values,
            int K, size_t n) {
  if (B != 1 && B != 4) throw py::value_error("B must be 1 or 4");
  if (rows < 0) throw py::value_error("rows must be >= 0");
  const int groups = (rows + B - 1) / B;
  if (group_ptr.ndim() != 1 || group_ptr.shape(0) != groups + 1)
    throw py::value_error("group_ptr must have ceil(rows/B) + 1 entries");
  const int32_t* gp = group_ptr.data();
  if (k_index.ndim() != 1) throw py::value_error("k_index must be 1-D");
  const ptrdiff_t nblocks = k_index.shape(0);
  if (gp[0] != 0 || gp[groups] != nblocks)
    throw py::value_error("group_ptr must start at 0 and end at len(k_index)");
  for (int g = 0; g < groups; ++g)
    if (gp[g + 1] < gp[g]) throw py::value_error("group_ptr must be non-decreasing");
  if (values.size() != nblocks * B)
    throw py::value_error("values must hold len(k_index) * B floats");
  if (static_cast<double>(K) * static_cast<double>(n) > std::numeric_limits<int32_t>::max())
    throw py::value_error("K * n must fit in int32 (x offsets are int32)");
  Packed p;
  p.K = K;
  p.group_ptr.assign(gp, gp + groups + 1);
  p.x_offset.resize(nblocks);
  const int32_t* ki = k_index.data();
  for (ptrdiff_t j = 0; j < nblocks; ++j) {
    if (ki[j] < 0 || ki[j] >= K) throw py::value_error("k_index out of range [0, K)");
    p.x_offset[j] = static_cast<int32_t>(ki[j] * static_cast<int64_t>(n));
  }
  p.values.assign(values.data(), values.data() + values.size());
  // rows past `rows` in the last group must be zero (the kernels may multiply by them)
  if (B > 1 && rows % B) {
    const int g = groups - 1;
    for (int32_t j = p.group_ptr[g]; j < p.group_ptr[g + 1]; ++j)
      for (int b = rows % B; b < B; ++b) p.values[static_cast<size_t>(j) * B + b] = 0.0f;
  }
  p.w.B = B;
  p.w.rows = rows;
  p.w.groups = groups;
  p.w.group_ptr = p.group_ptr.data();
  p.w.x_offset = p.x_offset.data();
  p.w.values = p.values.data();
  return p;
}

FArr check_x(const FArr& x) {
  if (x.ndim() != 2) throw py::value_error("x must be 2-D [K, n]");
  return x;
}

py::array_t<float> spmm(const std::string& isa, int B, int rows, const IArr& group_ptr,
                        const IArr& k_index, const FArr& values, const FArr& x,
                        const py::object& bias_o, const py::object& residual_o,
                        bool residual_after_act, float lo, float hi) {
  const sk::KernelTable& t = table_for(isa);
  check_x(x);
  const int K = static_cast<int>(x.shape(0));
  const size_t n = static_cast<size_t>(x.shape(1));
  Packed p = pack(B, rows, group_ptr, k_index, values, K, n);
  sk::Epilogue ep;
  FArr bias, residual;
  if (!bias_o.is_none()) {
    bias = FArr::ensure(bias_o);
    if (!bias || bias.ndim() != 1 || bias.shape(0) != rows)
      throw py::value_error("bias must be a float32 array of shape [rows]");
    ep.bias = bias.data();
  }
  if (!residual_o.is_none()) {
    residual = FArr::ensure(residual_o);
    if (!residual || residual.ndim() != 2 || residual.shape(0) != rows ||
        static_cast<size_t>(residual.shape(1)) != n)
      throw py::value_error("residual must be a float32 array of shape [rows, n]");
    ep.residual = residual.data();
    ep.residual_stride = static_cast<ptrdiff_t>(n);
  }
  ep.residual_after_act = residual_after_act;
  ep.lo = lo;
  ep.hi = hi;
  py::array_t<float> y({static_cast<py::ssize_t>(rows), static_cast<py::ssize_t>(n)});
  float* yp = y.mutable_data();
  const float* xp = x.data();
  sk::SpmmFn fn = B == 4 ? t.spmm_b4 : t.spmm_b1;
  {
    py::gil_scoped_release nogil;
    if (rows > 0 && n > 0) fn(n, p.w, 0, p.w.groups, xp, yp, static_cast<ptrdiff_t>(n), ep);
  }
  return y;
}

// Seconds per call (best of `repeats` timed calls after one warm-up), for benchmarks: the
// minimum is the stable statistic on a shared, noisy machine.
double time_spmm(const std::string& isa, int B, int rows, const IArr& group_ptr,
                 const IArr& k_index, const FArr& values, const FArr& x, int repeats) {
  const sk::KernelTable& t = table_for(isa);
  check_x(x);
  const int K = static_cast<int>(x.shape(0));
  const size_t n = static_cast<size_t>(x.shape(1));
  Packed p = pack(B, rows, group_ptr, k_index, values, K, n);
  std::vector<float> y(static_cast<size_t>(rows) * n + 1);
  std::vector<double> times;
  sk::SpmmFn fn = B == 4 ? t.spmm_b4 : t.spmm_b1;
  sk::Epilogue ep;
  py::gil_scoped_release nogil;
  for (int i = 0; i <= std::max(repeats, 1); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn(n, p.w, 0, p.w.groups, x.data(), y.data(), static_cast<ptrdiff_t>(n), ep);
    const auto t1 = std::chrono::steady_clock::now();
    if (i) times.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return *std::min_element(times.begin(), times.end());
}

// Seconds per spmm_b4_blocked call (best of `repeats` after one warm-up) on x [K, n] reordered
// into 8-channel blocks, reading it through panels of `panel_stride` pixels: the kernel-level
// half of the op's panel-stride choice (benchmarks/bench_panel_stride.py).
double time_spmm_blocked(const std::string& isa, int rows, const IArr& group_ptr,
                         const IArr& k_index, const FArr& values, const FArr& x,
                         int panel_stride, int repeats) {
  constexpr int L = sk::kChannelBlock;
  const sk::KernelTable& t = table_for(isa);
  check_x(x);
  if (panel_stride < 8 || panel_stride % 8 || panel_stride > 4096)
    throw py::value_error("panel_stride must be a multiple of 8 in [8, 4096]");
  const int K = static_cast<int>(x.shape(0));
  const size_t n = static_cast<size_t>(x.shape(1));
  Packed p = pack(4, rows, group_ptr, k_index, values, K, static_cast<size_t>(panel_stride));
  const int kb = (K + L - 1) / L, mb = (rows + L - 1) / L;
  std::vector<float> xb(static_cast<size_t>(kb) * n * L, 0.0f);
  for (int k = 0; k < K; ++k)
    for (size_t q = 0; q < n; ++q) xb[((k / L) * n + q) * L + k % L] = x.data()[k * n + q];
  std::vector<float> y(static_cast<size_t>(mb) * n * L + 1);
  std::vector<float> panel(static_cast<size_t>(kb) * L * panel_stride);
  const ptrdiff_t bs = static_cast<ptrdiff_t>(n) * L;
  std::vector<double> times;
  sk::Epilogue ep;
  py::gil_scoped_release nogil;
  for (int i = 0; i <= std::max(repeats, 1); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    t.spmm_b4_blocked(n, p.w, 0, 2 * mb, xb.data(), bs, kb, y.data(), bs, ep, panel.data(),
                      panel_stride);
    const auto t1 = std::chrono::steady_clock::now();
    if (i) times.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return *std::min_element(times.begin(), times.end());
}

// The blocked SparseConv's panel for a P-pixel image of K input and M output channels, as the
// op decides it (ort/work_split.h): (widest work item in pixels, its panel stride, the
// one-chunk stride for K).
py::tuple blocked_panel(const std::string& isa, int64_t P, int64_t K, int64_t M) {
  const sk::KernelTable& t = table_for(isa);
  if (P < 1 || K < 1 || M < 1) throw py::value_error("P, K and M must be >= 1");
  const int64_t K8 = (K + sk::kChannelBlock - 1) / sk::kChannelBlock * sk::kChannelBlock;
  return py::make_tuple(skort::blocked_widest_item(&t, P, K),
                        skort::blocked_panel_stride(&t, P, K, M),
                        skort::blocked_whole_stride(K8));
}

sk::DwShape dw_shape(const FArr& x, const FArr& w, int stride, int pad_t, int pad_l, int OH,
                     int OW) {
  if (x.ndim() != 2) throw py::value_error("x must be 2-D [H, W]");
  if (w.ndim() != 2 || w.shape(0) != w.shape(1) || w.shape(0) < 1)
    throw py::value_error("w must be a square 2-D [k, k] array");
  if (stride < 1) throw py::value_error("stride must be >= 1");
  if (pad_t < 0 || pad_l < 0) throw py::value_error("pads must be >= 0");
  if (OH < 0 || OW < 0) throw py::value_error("OH and OW must be >= 0");
  if (x.shape(0) < 1 || x.shape(1) < 1) throw py::value_error("x must not be empty");
  const double big = 1 << 24;
  if (x.shape(0) > big || x.shape(1) > big || w.shape(0) > 4096 || OH > big || OW > big ||
      static_cast<double>(OH) * stride + w.shape(0) + pad_t > big ||
      static_cast<double>(OW) * stride + w.shape(0) + pad_l > big)
    throw py::value_error("dwconv shape too large");
  sk::DwShape s;
  s.H = static_cast<int>(x.shape(0));
  s.W = static_cast<int>(x.shape(1));
  s.OH = OH;
  s.OW = OW;
  s.k = static_cast<int>(w.shape(0));
  s.stride = stride;
  s.pad_t = pad_t;
  s.pad_l = pad_l;
  return s;
}

py::array_t<float> dwconv(const std::string& isa, const FArr& x, const FArr& w, int stride,
                          int pad_t, int pad_l, int OH, int OW, float bias, float lo, float hi) {
  const sk::KernelTable& t = table_for(isa);
  const sk::DwShape s = dw_shape(x, w, stride, pad_t, pad_l, OH, OW);
  py::array_t<float> y({static_cast<py::ssize_t>(OH), static_cast<py::ssize_t>(OW)});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (OH > 0 && OW > 0) t.dwconv(s, x.data(), w.data(), bias, lo, hi, yp);
  }
  return y;
}

py::array_t<float> dwconv_multi(const std::string& isa, const FArr& x, const FArr& w,
                                const FArr& bias, int stride, int pad_t, int pad_l, int OH,
                                int OW, float lo, float hi) {
  const sk::KernelTable& t = table_for(isa);
  if (x.ndim() != 3 || w.ndim() != 3 || w.shape(0) != x.shape(0) || bias.ndim() != 1 ||
      bias.shape(0) != x.shape(0))
    throw py::value_error("x must be [C, H, W], w [C, k, k] and bias [C]");
  if (x.shape(0) < 1 || x.shape(0) > (1 << 24)) throw py::value_error("bad channel count");
  const int C = static_cast<int>(x.shape(0));
  FArr x0 = x[py::make_tuple(0)].cast<FArr>(), w0 = w[py::make_tuple(0)].cast<FArr>();
  const sk::DwShape s = dw_shape(x0, w0, stride, pad_t, pad_l, OH, OW);
  py::array_t<float> y({static_cast<py::ssize_t>(C), static_cast<py::ssize_t>(OH),
                        static_cast<py::ssize_t>(OW)});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    if (OH > 0 && OW > 0) t.dwconv_multi(s, C, x.data(), w.data(), bias.data(), lo, hi, yp);
  }
  return y;
}

// Seconds per call of dwconv over every plane of x [C, H, W] (best of `repeats`).
// x [C, H, W] -> [ceil(C/8)][H][W][8], padding lanes zero (also for weights [C, k, k] as
// [ceil(C/8)][k*k][8] and bias [C] as [ceil(C/8)][8]).
std::vector<float> to_blocked(const float* x, int C, size_t plane) {
  constexpr int L = sk::kChannelBlock;
  const size_t nblk = (static_cast<size_t>(C) + L - 1) / L;
  std::vector<float> out(nblk * plane * L, 0.0f);
  for (int c = 0; c < C; ++c)
    for (size_t p = 0; p < plane; ++p)
      out[((c / L) * plane + p) * L + c % L] = x[c * plane + p];
  return out;
}

// Depthwise conv of x [C, H, W] through dwconv_blocked: x, w and bias reordered into 8-channel
// blocks here, the kernel run over `parts` row ranges, the output reordered back to [C, OH, OW].
py::array_t<float> dwconv_blocked(const std::string& isa, const FArr& x, const FArr& w,
                                  const FArr& bias, int stride, int pad_t, int pad_l, int OH,
                                  int OW, float lo, float hi, int parts) {
  const sk::KernelTable& t = table_for(isa);
  if (x.ndim() != 3 || w.ndim() != 3 || w.shape(0) != x.shape(0) || bias.ndim() != 1 ||
      bias.shape(0) != x.shape(0))
    throw py::value_error("x must be [C, H, W], w [C, k, k] and bias [C]");
  if (x.shape(0) < 1 || x.shape(0) > (1 << 24)) throw py::value_error("bad channel count");
  if (parts < 1) throw py::value_error("parts must be >= 1");
  const int C = static_cast<int>(x.shape(0));
  FArr x0 = x[py::make_tuple(0)].cast<FArr>(), w0 = w[py::make_tuple(0)].cast<FArr>();
  const sk::DwShape s = dw_shape(x0, w0, stride, pad_t, pad_l, OH, OW);
  constexpr int L = sk::kChannelBlock;
  const int nblk = (C + L - 1) / L;
  const size_t plane = static_cast<size_t>(s.H) * s.W, oplane = static_cast<size_t>(OH) * OW;
  const std::vector<float> xb = to_blocked(x.data(), C, plane);
  const std::vector<float> wb = to_blocked(w.data(), C, static_cast<size_t>(s.k) * s.k);
  const std::vector<float> bb = to_blocked(bias.data(), C, 1);
  std::vector<float> yb(static_cast<size_t>(nblk) * oplane * L + 1);
  py::array_t<float> y({static_cast<py::ssize_t>(C), static_cast<py::ssize_t>(OH),
                        static_cast<py::ssize_t>(OW)});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    for (int q = 0; q < parts && OH > 0 && OW > 0; ++q)
      t.dwconv_blocked(s, nblk, xb.data(), wb.data(), bb.data(), lo, hi, yb.data(),
                       OH * q / parts, OH * (q + 1) / parts);
    for (int c = 0; c < C; ++c)
      for (size_t p = 0; p < oplane; ++p) yp[c * oplane + p] = yb[((c / L) * oplane + p) * L + c % L];
  }
  return y;
}

double time_dwconv(const std::string& isa, const FArr& x, const FArr& w, int stride, int pad_t,
                   int pad_l, int OH, int OW, int repeats, bool multi,
                   bool blocked) {
  const sk::KernelTable& t = table_for(isa);
  if (x.ndim() != 3 || w.ndim() != 3 || w.shape(0) != x.shape(0))
    throw py::value_error("x must be [C, H, W] and w [C, k, k]");
  const int C = static_cast<int>(x.shape(0));
  FArr x0 = x[py::make_tuple(0)].cast<FArr>(), w0 = w[py::make_tuple(0)].cast<FArr>();
  const sk::DwShape s = dw_shape(x0, w0, stride, pad_t, pad_l, OH, OW);
  const size_t plane = static_cast<size_t>(s.H) * s.W, oplane = static_cast<size_t>(OH) * OW;
  const size_t kk = static_cast<size_t>(s.k) * s.k;
  std::vector<float> y(oplane * C + 1), bias(static_cast<size_t>(C), 0.1f);
  std::vector<double> times;
  constexpr int L = sk::kChannelBlock;
  const int nblk = (C + L - 1) / L;
  std::vector<float> xb, wb, bb, yb;
  if (blocked) {  // the same data in 8-channel blocks; only the kernel is timed
    xb = to_blocked(x.data(), C, plane);
    wb = to_blocked(w.data(), C, kk);
    bb = to_blocked(bias.data(), C, 1);
    yb.resize(static_cast<size_t>(nblk) * oplane * L + 1);
  }
  py::gil_scoped_release nogil;
  for (int i = 0; i <= std::max(repeats, 1); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    if (blocked)
      t.dwconv_blocked(s, nblk, xb.data(), wb.data(), bb.data(), 0.0f, 6.0f, yb.data(), 0, OH);
    else if (multi)
      t.dwconv_multi(s, C, x.data(), w.data(), bias.data(), 0.0f, 6.0f, y.data());
    else
      for (int c = 0; c < C; ++c)
        t.dwconv(s, x.data() + c * plane, w.data() + c * kk, 0.1f, 0.0f, 6.0f,
                 y.data() + c * oplane);
    const auto t1 = std::chrono::steady_clock::now();
    if (i) times.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return *std::min_element(times.begin(), times.end());
}

// ---- bank-balanced SpMV: canonical [rows, nbanks, keep] in, the table's interleaved layout --
using U8Arr = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

struct PackedBank {
  sk::BankMat w;
  std::vector<float> values;
  std::vector<uint8_t> offs;
  std::vector<float> x;  // padded to nbanks*bank_size + 64
};

PackedBank pack_bank_rows(const sk::KernelTable& t, const FArr& values, const U8Arr& offs,
                          int bank_size, int K, const FArr& x) {
  if (values.ndim() != 3) throw py::value_error("values must be 3-D [rows, nbanks, keep]");
  if (offs.ndim() != 3 || offs.shape(0) != values.shape(0) || offs.shape(1) != values.shape(1) ||
      offs.shape(2) != values.shape(2))
    throw py::value_error("offs must have values' shape");
  if (bank_size < 1 || bank_size > 256) throw py::value_error("bank_size must be in [1, 256]");
  if (K < 1 || K > (1 << 24)) throw py::value_error("K must be in [1, 2^24]");
  const int rows = static_cast<int>(values.shape(0));
  const int nbanks = (K + bank_size - 1) / bank_size;
  const int keep = static_cast<int>(values.shape(2));
  if (values.shape(1) != nbanks) throw py::value_error("values.shape[1] must be ceil(K / bank_size)");
  if (keep > bank_size) throw py::value_error("keep must be <= bank_size");
  if (rows < 1 || static_cast<double>(rows) * nbanks * keep > 1e9)
    throw py::value_error("rows must be >= 1 (and the matrix not huge)");
  if (x.ndim() != 1 || x.shape(0) != K) throw py::value_error("x must be 1-D [K]");
  PackedBank p;
  const int L = t.spmv_lanes;
  const int groups = (rows + L - 1) / L;
  const size_t n = static_cast<size_t>(groups) * nbanks * keep * L;
  p.values.assign(n, 0.0f);
  p.offs.assign(n, 0);
  const float* v = values.data();
  const uint8_t* o = offs.data();
  for (int r = 0; r < rows; ++r)
    for (int b = 0; b < nbanks; ++b) {
      const int len = std::min(bank_size, K - b * bank_size);
      for (int q = 0; q < keep; ++q) {
        const size_t src = (static_cast<size_t>(r) * nbanks + b) * keep + q;
        if (o[src] >= len) throw py::value_error("an offset is not below its bank's length");
        const size_t dst =
            ((static_cast<size_t>(r / L) * nbanks + b) * keep + q) * L + static_cast<size_t>(r % L);
        p.values[dst] = v[src];
        p.offs[dst] = o[src];
      }
    }
  p.x.assign(static_cast<size_t>(nbanks) * bank_size + 64, 0.0f);
  std::copy(x.data(), x.data() + K, p.x.begin());
  p.w.rows = rows;
  p.w.lanes = L;
  p.w.groups = groups;
  p.w.nbanks = nbanks;
  p.w.bank_size = bank_size;
  p.w.keep = keep;
  p.w.values = p.values.data();
  p.w.offs = p.offs.data();
  return p;
}

py::array_t<float> spmv_bank(const std::string& isa, const FArr& values, const U8Arr& offs,
                             int bank_size, int K, const FArr& x, const py::object& init_o) {
  const sk::KernelTable& t = table_for(isa);
  PackedBank p = pack_bank_rows(t, values, offs, bank_size, K, x);
  FArr init;
  if (!init_o.is_none()) {
    init = FArr::ensure(init_o);
    if (!init || init.ndim() != 1 || init.shape(0) != p.w.rows)
      throw py::value_error("init must be a float32 array of shape [rows]");
  }
  py::array_t<float> y(static_cast<py::ssize_t>(p.w.rows));
  float* yp = y.mutable_data();
  const float* ip = init_o.is_none() ? nullptr : init.data();
  {
    py::gil_scoped_release nogil;
    t.spmv_bank(p.w, 0, p.w.groups, p.x.data(), ip, yp);
  }
  return y;
}

double time_spmv_bank(const std::string& isa, const FArr& values, const U8Arr& offs,
                      int bank_size, int K, const FArr& x, int repeats) {
  const sk::KernelTable& t = table_for(isa);
  PackedBank p = pack_bank_rows(t, values, offs, bank_size, K, x);
  std::vector<float> y(static_cast<size_t>(p.w.rows));
  std::vector<double> times;
  py::gil_scoped_release nogil;
  for (int i = 0; i <= std::max(repeats, 1); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    t.spmv_bank(p.w, 0, p.w.groups, p.x.data(), nullptr, y.data());
    const auto t1 = std::chrono::steady_clock::now();
    if (i) times.push_back(std::chrono::duration<double>(t1 - t0).count());
  }
  return *std::min_element(times.begin(), times.end());
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "sparsekit kernels (per ISA) for tests, benchmarks and tooling";
  m.def("available_isas", []() {
    py::list out;
    for (sk::Isa isa : {sk::Isa::ref, sk::Isa::avx2, sk::Isa::avx512, sk::Isa::neon})
      if (sk::kernels_for(isa)) out.append(sk::isa_name(isa));
    return out;
  }, "ISAs whose kernels this build has and this CPU runs, reference first.");
  m.def("selected_isa", []() {
    const char* err = nullptr;
    const sk::KernelTable* t = sk::select_kernels(&err);
    if (!t) throw py::value_error(err ? err : "no kernels selected");
    return std::string(t->name);
  }, "The ISA the ops would use (best available, or SPARSEKIT_ISA); ValueError if that "
     "variable names an unknown or unavailable ISA.");
  const float inf = std::numeric_limits<float>::infinity();
  m.def("spmm", &spmm, py::arg("isa"), py::arg("B"), py::arg("rows"), py::arg("group_ptr"),
        py::arg("k_index"), py::arg("values"), py::arg("x"), py::arg("bias") = py::none(),
        py::arg("residual") = py::none(), py::arg("residual_after_act") = false,
        py::arg("lo") = -inf, py::arg("hi") = inf,
        "y[rows, n] = clamp(W @ x + bias (+ residual)) (+ residual after act) with W given as "
        "1xB row blocks: group g's blocks are group_ptr[g]:group_ptr[g+1], block j sits at "
        "reduction index k_index[j] with weights values[j*B:(j+1)*B].");
  m.def("time_spmm", &time_spmm, py::arg("isa"), py::arg("B"), py::arg("rows"),
        py::arg("group_ptr"), py::arg("k_index"), py::arg("values"), py::arg("x"),
        py::arg("repeats") = 20, "Best-of-repeats seconds per spmm call (no epilogue).");
  m.def("time_spmm_blocked", &time_spmm_blocked, py::arg("isa"), py::arg("rows"),
        py::arg("group_ptr"), py::arg("k_index"), py::arg("values"), py::arg("x"),
        py::arg("panel_stride"), py::arg("repeats") = 20,
        "Best-of-repeats seconds per spmm_b4_blocked call on x [K, n] in 8-channel blocks, "
        "through panels of panel_stride pixels (no epilogue).");
  m.def("blocked_panel", &blocked_panel, py::arg("isa"), py::arg("P"), py::arg("K"),
        py::arg("M"),
        "The blocked SparseConv's (widest work item, its panel stride, one-chunk stride) for a "
        "P-pixel image with K input and M output channels.");
  m.def("dwconv", &dwconv, py::arg("isa"), py::arg("x"), py::arg("w"), py::arg("stride"),
        py::arg("pad_t"), py::arg("pad_l"), py::arg("OH"), py::arg("OW"),
        py::arg("bias") = 0.0f, py::arg("lo") = -inf, py::arg("hi") = inf,
        "Depthwise conv of one plane x[H, W] with w[k, k]; out-of-range input is zero.");
  m.def("time_dwconv", &time_dwconv, py::arg("isa"), py::arg("x"), py::arg("w"),
        py::arg("stride"), py::arg("pad_t"), py::arg("pad_l"), py::arg("OH"), py::arg("OW"),
        py::arg("repeats") = 20, py::arg("multi") = false, py::arg("blocked") = false,
        "Best-of-repeats seconds for dwconv (bias+ReLU6) over every plane of x[C, H, W]; "
        "multi: one dwconv_multi call for all planes instead of dwconv plane by plane; "
        "blocked: one dwconv_blocked call on the same data in 8-channel blocks (NCHWc).");
  m.def("dwconv_blocked", &dwconv_blocked, py::arg("isa"), py::arg("x"), py::arg("w"),
        py::arg("bias"), py::arg("stride"), py::arg("pad_t"), py::arg("pad_l"), py::arg("OH"),
        py::arg("OW"), py::arg("lo") = -inf, py::arg("hi") = inf, py::arg("parts") = 1,
        "Depthwise conv of x[C, H, W] with w[C, k, k] and bias[C] through dwconv_blocked (data "
        "reordered into 8-channel blocks and back here; output rows in `parts` ranges).");
  m.def("dwconv_multi", &dwconv_multi, py::arg("isa"), py::arg("x"), py::arg("w"),
        py::arg("bias"), py::arg("stride"), py::arg("pad_t"), py::arg("pad_l"), py::arg("OH"),
        py::arg("OW"), py::arg("lo") = -inf, py::arg("hi") = inf,
        "Depthwise conv of x[C, H, W] with w[C, k, k] and bias[C] in one dwconv_multi call.");
  m.def("spmv_bank", &spmv_bank, py::arg("isa"), py::arg("values"), py::arg("offs"),
        py::arg("bank_size"), py::arg("K"), py::arg("x"), py::arg("init") = py::none(),
        "y[rows] = init + W @ x for a bank-balanced W given as values/offs [rows, nbanks, keep] "
        "(entry (r, b, q) sits at k = b*bank_size + offs[r, b, q]; bank_size <= 256).");
  m.def("time_spmv_bank", &time_spmv_bank, py::arg("isa"), py::arg("values"), py::arg("offs"),
        py::arg("bank_size"), py::arg("K"), py::arg("x"), py::arg("repeats") = 20,
        "Best-of-repeats seconds per spmv_bank call.");
}
