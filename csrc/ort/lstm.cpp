// SparseLSTM: see lstm.h, docs/format.md (the op) and docs/sequence.md (the design).
#include "ort/lstm.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstring>

namespace skort {
namespace {

std::string s(int64_t v) { return std::to_string(v); }

enum LstmInput : size_t {
  kX = 0,
  kWValues = 1,
  kWIndices = 2,
  kRValues = 3,
  kRIndices = 4,
  kB = 5,
  kSeqLens = 6,
  kInitH = 7,
  kInitC = 8,
};

// A validated canonical bank-format matrix [rows, K] with block 1 (docs/format.md).
struct BankInput {
  int64_t rows = 0, K = 0, bs = 0, nbanks = 0, keep = 0;
  const float* v = nullptr;  // [rows, nbanks, keep] (the trailing B = 1 dropped)
  TensorView idx;
  int64_t off(size_t i) const {
    return idx.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 ? static_cast<const uint8_t*>(idx.data)[i]
                                                         : static_cast<const uint16_t*>(idx.data)[i];
  }
  size_t at(int64_t r, int64_t b, int64_t q) const { return size_t((r * nbanks + b) * keep + q); }
};

BankInput read_bank_input(const Api& api, const OrtKernelInfo* info, size_t vi, size_t ii,
                          const std::string& name, int64_t rows, const std::string& rows_desc,
                          int64_t K, const char* k_name, int64_t bs, const char* bs_name) {
  BankInput m;
  m.rows = rows;
  m.K = K;
  m.bs = bs;
  if (bs < 1 || bs > 65536)
    throw Error(std::string("attribute '") + bs_name + "' must be in [1, 65536], got " + s(bs));
  m.nbanks = (K + bs - 1) / bs;
  const std::string vname = name + "_values", iname = name + "_indices";
  TensorView vals = constant_input(api, info, vi, vname.c_str());
  if (vals.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(vname + " must be float32, got " + dtype_name(vals.type));
  if (vals.shape.size() != 4 || vals.shape[0] != rows || vals.shape[1] != m.nbanks ||
      vals.shape[3] != 1)
    throw Error(vname + " has shape " + vals.shape_str() + ", expected [rows, nbanks, keep, 1] = [" +
                s(rows) + ", " + s(m.nbanks) + ", keep, 1] (rows = " + rows_desc +
                ", nbanks = ceil(" + k_name + " / " + bs_name + ") = ceil(" + s(K) + " / " +
                s(bs) + "))");
  m.keep = vals.shape[2];
  if (m.keep > bs)
    throw Error(vname + ": keep = " + s(m.keep) + " entries per bank exceeds " + bs_name + " = " +
                s(bs));
  m.v = static_cast<const float*>(vals.data);
  m.idx = constant_input(api, info, ii, iname.c_str());
  if (m.idx.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 &&
      m.idx.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16)
    throw Error(iname + " must be uint8 or uint16, got " + dtype_name(m.idx.type));
  if (m.idx.shape != std::vector<int64_t>{rows, m.nbanks, m.keep})
    throw Error(iname + " has shape " + m.idx.shape_str() + ", expected " +
                shape_str({rows, m.nbanks, m.keep}) + " (one offset per entry of " + vname + ")");
  if (double(rows) * double(m.nbanks) * double(m.keep) > double(INT32_MAX))
    throw Error(vname + ": too many entries");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < m.nbanks; ++b) {
      const int64_t len = std::min(bs, K - b * bs);
      for (int64_t q = 0; q < m.keep; ++q) {
        const int64_t o = m.off(m.at(r, b, q));
        if (o >= len)
          throw Error(iname + "[" + s(r) + ", " + s(b) + ", " + s(q) + "] = " + s(o) +
                      " is not below the length of bank " + s(b) + " (" + s(len) + ")");
      }
    }
  return m;
}

// Row p of a direction's gate-interleaved order is ONNX row (p % 4)*H + p / 4 (gates i, o, f, c).
inline int64_t onnx_row(int64_t p, int64_t H) { return (p % 4) * H + p / 4; }

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

float* output(const Api& api, OrtKernelContext* ctx, size_t index,
              const std::vector<int64_t>& dims) {
  OrtValue* out = nullptr;
  check(api, api.KernelContext_GetOutput()(ctx, index, dims.data(), dims.size(), &out),
        "KernelContext_GetOutput");
  if (!out) return nullptr;
  void* data = nullptr;
  check(api, api.GetTensorMutableData()(out, &data), "GetTensorMutableData");
  size_t count = 1;
  for (int64_t d : dims) count *= size_t(d);
  if (count && !data) throw Error("output has no data", ORT_FAIL);
  return static_cast<float*>(data);
}

const float* state_input(const Api& api, OrtKernelContext* ctx, size_t index, const char* what,
                         const std::vector<int64_t>& want) {
  const OrtValue* v = get_input(api, ctx, index);
  if (!v) return nullptr;
  const TensorView t = view_tensor(api, v, what);
  if (t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string(what) + " must be float32, got " + dtype_name(t.type));
  if (t.shape != want)
    throw Error(std::string(what) + " has shape " + t.shape_str() + ", expected " +
                shape_str(want) + " [num_directions, batch, hidden_size]");
  return static_cast<const float*>(t.data);
}

}  // namespace

const std::vector<IoSpec>& SparseLSTMKernel::inputs() {
  static const std::vector<IoSpec> v = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},      // X
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},      // W_values
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, INPUT_OUTPUT_REQUIRED},  // W_indices (u8/u16)
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},      // R_values
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED, INPUT_OUTPUT_REQUIRED},  // R_indices (u8/u16)
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL},      // B
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, INPUT_OUTPUT_OPTIONAL},      // sequence_lens
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL},      // initial_h
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_OPTIONAL},      // initial_c
  };
  return v;
}

const std::vector<IoSpec>& SparseLSTMKernel::outputs() {
  static const std::vector<IoSpec> v = {
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // Y
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // Y_h
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED},  // Y_c
  };
  return v;
}

SparseLSTMKernel::SparseLSTMKernel(const Api& api, const OrtKernelInfo* info) : api_(api) {
  Attrs a(api, info);
  kt_ = select_table();
  H_ = a.get_int("hidden_size");
  I_ = a.get_int("input_size");
  const std::string dir = a.get_string("direction", "forward");
  if (dir != "forward" && dir != "reverse" && dir != "bidirectional")
    throw Error("attribute 'direction' must be \"forward\", \"reverse\" or \"bidirectional\", got \"" +
                dir + "\"");
  D_ = dir == "bidirectional" ? 2 : 1;
  reverse_only_ = dir == "reverse";
  if (H_ < 1 || H_ > (1 << 26))
    throw Error("attribute 'hidden_size' must be in [1, 2^26], got " + s(H_));
  if (I_ < 1 || I_ > INT32_MAX) throw Error("attribute 'input_size' must be >= 1, got " + s(I_));
  if (input_present(api, info, kSeqLens))
    throw Error("sequence_lens (input 6) is not supported: every batch entry runs the full "
                "sequence (convert leaves such LSTMs dense)");
  const int64_t M = D_ * 4 * H_;
  const std::string rows_desc = "num_directions*4*hidden_size = " + s(D_) + "*4*" + s(H_);
  const int64_t wbs = a.get_int("w_bank_size");
  const int64_t rbs = a.get_int("r_bank_size");
  const BankInput W = read_bank_input(api, info, kWValues, kWIndices, "W", M, rows_desc, I_,
                                      "input_size", wbs, "w_bank_size");
  const BankInput R = read_bank_input(api, info, kRValues, kRIndices, "R", M, rows_desc, H_,
                                      "hidden_size", rbs, "r_bank_size");

  // W: a general sparse matrix (zeros dropped) in the gate-interleaved row order, for SpMM.
  w_.format = "bank";
  w_.B = 1;
  w_.M = int(M);
  w_.G = int(M);
  w_.K = I_;
  w_.bank_size = wbs;
  w_.stored_blocks = M * W.nbanks * W.keep;
  w_.m_name = "rows";
  w_.group_ptr.assign(size_t(M) + 1, 0);
  for (int64_t d = 0; d < D_; ++d)
    for (int64_t p = 0; p < 4 * H_; ++p) {
      const int64_t src = d * 4 * H_ + onnx_row(p, H_);
      for (int64_t b = 0; b < W.nbanks; ++b)
        for (int64_t q = 0; q < W.keep; ++q) {
          const size_t i = W.at(src, b, q);
          if (W.v[i] == 0.0f) continue;
          w_.k.push_back(int32_t(b * wbs + W.off(i)));
          w_.values.push_back(W.v[i]);
        }
      w_.group_ptr[size_t(d * 4 * H_ + p) + 1] = w_.nblocks();
    }
  panel_ = make_panel(w_, kt_);

  // Bias: Wb + Rb, permuted the same way.
  bias_.assign(size_t(M), 0.0f);
  if (input_present(api, info, kB)) {
    TensorView b = constant_input(api, info, kB, "B");
    if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw Error(std::string("B must be float32, got ") + dtype_name(b.type));
    if (b.shape != std::vector<int64_t>{D_, 8 * H_})
      throw Error("B has shape " + b.shape_str() + ", expected [" + s(D_) + ", " + s(8 * H_) +
                  "] [num_directions, 8*hidden_size]");
    const float* bp = static_cast<const float*>(b.data);
    for (int64_t d = 0; d < D_; ++d)
      for (int64_t p = 0; p < 4 * H_; ++p) {
        const int64_t src = onnx_row(p, H_);
        bias_[size_t(d * 4 * H_ + p)] = bp[d * 8 * H_ + src] + bp[d * 8 * H_ + 4 * H_ + src];
      }
  }

  // R: per direction, interleaved for the SpMV kernel (banks <= 256), else general.
  r_bank_ = rbs;
  r_nbanks_ = R.nbanks;
  const int L = kt_->spmv_lanes;
  r_.resize(size_t(D_));
  for (int64_t d = 0; d < D_; ++d) {
    Recurrent& rec = r_[size_t(d)];
    const int64_t rows = 4 * H_;
    if (rbs <= 256) {
      rec.banked = true;
      const int64_t groups = (rows + L - 1) / L;
      const size_t n = size_t(groups * R.nbanks * R.keep * L);
      rec.values.assign(n, 0.0f);
      rec.offs.assign(n, 0);
      for (int64_t p = 0; p < rows; ++p) {
        const int64_t src = d * rows + onnx_row(p, H_);
        for (int64_t b = 0; b < R.nbanks; ++b)
          for (int64_t q = 0; q < R.keep; ++q) {
            const size_t i = R.at(src, b, q);
            const size_t dst = size_t(((p / L * R.nbanks + b) * R.keep + q) * L + p % L);
            rec.values[dst] = R.v[i];
            rec.offs[dst] = uint8_t(R.off(i));
          }
      }
      rec.m.rows = int(rows);
      rec.m.lanes = L;
      rec.m.groups = int(groups);
      rec.m.nbanks = int(R.nbanks);
      rec.m.bank_size = int(rbs);
      rec.m.keep = int(R.keep);
      rec.m.values = rec.values.data();
      rec.m.offs = rec.offs.data();
    } else {
      SparseWeights& g = rec.general;
      g.format = "bank";
      g.B = 1;
      g.M = int(rows);
      g.G = int(rows);
      g.K = H_;
      g.bank_size = rbs;
      g.group_ptr.assign(size_t(rows) + 1, 0);
      for (int64_t p = 0; p < rows; ++p) {
        const int64_t src = d * rows + onnx_row(p, H_);
        for (int64_t b = 0; b < R.nbanks; ++b)
          for (int64_t q = 0; q < R.keep; ++q) {
            const size_t i = R.at(src, b, q);
            if (R.v[i] == 0.0f) continue;
            g.k.push_back(int32_t(b * rbs + R.off(i)));
            g.values.push_back(R.v[i]);
          }
        g.group_ptr[size_t(p) + 1] = g.nblocks();
      }
      rec.x_offset.assign(g.k.begin(), g.k.end());
    }
  }
  log_verbose(api, info,
              std::string("sparsekit SparseLSTM '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", hidden " + s(H_) + ", " + dir + ", W " + s(w_.nblocks()) +
                  " nonzeros, R bank " + s(rbs) + " keep " + s(R.keep) +
                  (rbs <= 256 ? " (SpMV kernel)" : " (general SpMM path)"));
}

// xw[p, :] = W·x[p] + bias for P rows x[p] of length I (all steps and batch entries at once).
void SparseLSTMKernel::project(OrtKernelContext* ctx, const float* x, int64_t P,
                               float* xw) const {
  const int64_t T = panel_.T, K = I_, M = D_ * 4 * H_;
  const int64_t nrows = int64_t(panel_.rows.size());
  const int64_t panel_size = std::max<int64_t>(1, nrows * T);
  const int64_t ntiles = (P + T - 1) / T;
  const int32_t* rows = panel_.rows.data();
  Scratch<float> buf(size_t(ntiles * (panel_size + M * T)));
  float* panels = buf.get();
  float* yts = panels + ntiles * panel_size;
  parallel_for(api_, ctx, size_t(ntiles), [&](size_t i) {
    const int64_t r0 = int64_t(i) * T, len = std::min(T, P - r0);
    float* panel = panels + int64_t(i) * panel_size;
    for (int64_t t = 0; t < len; ++t) {
      const float* xr = x + (r0 + t) * K;
      for (int64_t u = 0; u < nrows; ++u) panel[u * T + t] = xr[rows[u]];
    }
  });
  const sk::SpMat m = spmat(w_, panel_.x_offset.data());
  const GroupChunks gc = group_chunks(w_.G);
  sk::Epilogue ep;
  ep.bias = bias_.data();
  parallel_for(api_, ctx, size_t(ntiles * gc.n), [&](size_t i) {
    const int64_t t = int64_t(i) / gc.n;
    const int c = int(int64_t(i) % gc.n);
    const int64_t r0 = t * T, len = std::min(T, P - r0);
    float* yt = yts + t * M * T;
    kt_->spmm_b1(size_t(len), m, gc.begin(c), gc.end(c), panels + t * panel_size, yt, T, ep);
    for (int64_t tt = 0; tt < len; ++tt)
      for (int64_t mm = gc.begin(c); mm < gc.end(c); ++mm) xw[(r0 + tt) * M + mm] = yt[mm * T + tt];
  });
}

void SparseLSTMKernel::compute(OrtKernelContext* ctx) const {
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 3 || X.shape[2] != I_)
    throw Error("X has shape " + X.shape_str() + ", expected [seq_length, batch_size, " + s(I_) +
                "] (input_size = " + s(I_) + ")");
  const int64_t S = X.shape[0], N = X.shape[1], H = H_, D = D_, G4 = 4 * H_;
  const std::vector<int64_t> sdims = {D, N, H};
  const float* h0 = state_input(api_, ctx, kInitH, "initial_h", sdims);
  const float* c0 = state_input(api_, ctx, kInitC, "initial_c", sdims);
  float* Y = output(api_, ctx, 0, {S, D, N, H});
  float* Yh = output(api_, ctx, 1, sdims);
  float* Yc = output(api_, ctx, 2, sdims);
  if (N == 0) return;

  // Padded state buffers: h ping-pong [2][D][N][HP] (zero tail: the kernels load whole
  // banks), c [D][N][H], gates [D][N][4H].
  const int64_t HP = std::max<int64_t>(H, r_nbanks_ * r_bank_) + 64;
  Scratch<float> hbuf(size_t(2 * D * N * HP)), cbuf(size_t(D * N * H)),
      gbuf(size_t(D * N * G4));
  std::memset(hbuf.get(), 0, sizeof(float) * size_t(2 * D * N * HP));
  for (int64_t i = 0; i < D * N; ++i) {
    if (h0) std::memcpy(hbuf.get() + i * HP, h0 + i * H, sizeof(float) * size_t(H));
    if (c0)
      std::memcpy(cbuf.get() + i * H, c0 + i * H, sizeof(float) * size_t(H));
    else
      std::memset(cbuf.get() + i * H, 0, sizeof(float) * size_t(H));
  }

  Scratch<float> xwbuf(size_t(std::max<int64_t>(1, S * N * D * G4)));
  if (S > 0) project(ctx, static_cast<const float*>(X.data), S * N, xwbuf.get());

  // Work per step: (direction, batch entry, chunk of row groups); a chunk covers whole hidden
  // units (groups hold lanes/4 units; the general path uses groups of 4 rows = 1 unit).
  const int Lg = r_[0].banked ? kt_->spmv_lanes : 4;
  const int64_t ngroups = (G4 + Lg - 1) / Lg;
  const int64_t nch = std::min<int64_t>(ngroups, 8);
  const float* xw = xwbuf.get();
  for (int64_t step = 0; step < S; ++step) {
    const int64_t cur = step & 1, nxt = cur ^ 1;
    parallel_for(api_, ctx, size_t(D * N * nch), [&](size_t item) {
      const int64_t d = int64_t(item) / (N * nch);
      const int64_t b = int64_t(item) / nch % N;
      const int64_t c = int64_t(item) % nch;
      const bool rev = reverse_only_ || d == 1;
      const int64_t t = rev ? S - 1 - step : step;
      const int64_t g0 = ngroups * c / nch, g1 = ngroups * (c + 1) / nch;
      const Recurrent& rec = r_[size_t(d)];
      const float* hprev = hbuf.get() + ((cur * D + d) * N + b) * HP;
      float* hnext = hbuf.get() + ((nxt * D + d) * N + b) * HP;
      const float* init = xw + (t * N + b) * D * G4 + d * G4;
      float* gates = gbuf.get() + (d * N + b) * G4;
      if (rec.banked) {
        kt_->spmv_bank(rec.m, int(g0), int(g1), hprev, init, gates);
      } else {
        sk::Epilogue ep;
        ep.bias = init;
        const sk::SpMat m = spmat(rec.general, rec.x_offset.data());
        kt_->spmm_b1(1, m, int(g0 * Lg), int(std::min<int64_t>(g1 * Lg, G4)), hprev, gates, 1,
                     ep);
      }
      float* cc = cbuf.get() + (d * N + b) * H;
      float* y = Y + ((t * D + d) * N + b) * H;
      const int64_t u1 = std::min<int64_t>(g1 * Lg / 4, H);
      for (int64_t j = g0 * Lg / 4; j < u1; ++j) {
        const float* g = gates + 4 * j;
        const float i = sigmoid(g[0]), o = sigmoid(g[1]), f = sigmoid(g[2]);
        const float cn = f * cc[j] + i * std::tanh(g[3]);
        cc[j] = cn;
        const float h = o * std::tanh(cn);
        hnext[j] = h;
        y[j] = h;
      }
    });
  }
  const int64_t fin = S & 1;
  for (int64_t i = 0; i < D * N; ++i) {
    std::memcpy(Yh + i * H, hbuf.get() + (fin * D * N + i) * HP, sizeof(float) * size_t(H));
    std::memcpy(Yc + i * H, cbuf.get() + i * H, sizeof(float) * size_t(H));
  }
}

}  // namespace skort
