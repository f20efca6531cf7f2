// SparseLSTM and SparseGRU: see lstm.h, docs/format.md (the ops) and docs/sequence.md (the
// design).
#include "ort/lstm.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cfloat>
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
  require_finite(m.v, vals.count, vname);
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

using RowMap = std::function<int64_t(int64_t)>;  // op row -> row of the packed input

// Rows [0, rows) of R, row p taken from R's row src(p), in the SpMV kernel's interleaved form.
Recurrent banked_recurrent(const BankInput& R, int64_t rows, const RowMap& src, int L) {
  Recurrent rec;
  rec.banked = true;
  const int64_t groups = (rows + L - 1) / L;
  const size_t n = size_t(groups * R.nbanks * R.keep * L);
  rec.values.assign(n, 0.0f);
  rec.offs.assign(n, 0);
  for (int64_t p = 0; p < rows; ++p) {
    const int64_t r = src(p);
    for (int64_t b = 0; b < R.nbanks; ++b)
      for (int64_t q = 0; q < R.keep; ++q) {
        const size_t i = R.at(r, b, q);
        const size_t dst = size_t(((p / L * R.nbanks + b) * R.keep + q) * L + p % L);
        rec.values[dst] = R.v[i];
        rec.offs[dst] = uint8_t(R.off(i));
      }
  }
  rec.m.rows = int(rows);
  rec.m.lanes = L;
  rec.m.groups = int(groups);
  rec.m.nbanks = int(R.nbanks);
  rec.m.bank_size = int(R.bs);
  rec.m.keep = int(R.keep);
  rec.m.values = rec.values.data();
  rec.m.offs = rec.offs.data();
  return rec;
}

// Rows [0, rows) of a bank input as general sparse weights (zeros dropped), row p from src(p).
SparseWeights bank_rows(const BankInput& A, int64_t rows, const RowMap& src) {
  SparseWeights g;
  g.format = "bank";
  g.B = 1;
  g.M = int(rows);
  g.G = int(rows);
  g.K = A.K;
  g.bank_size = A.bs;
  g.stored_blocks = rows * A.nbanks * A.keep;
  g.m_name = "rows";
  g.group_ptr.assign(size_t(rows) + 1, 0);
  for (int64_t p = 0; p < rows; ++p) {
    const int64_t r = src(p);
    for (int64_t b = 0; b < A.nbanks; ++b)
      for (int64_t q = 0; q < A.keep; ++q) {
        const size_t i = A.at(r, b, q);
        if (A.v[i] == 0.0f) continue;
        g.k.push_back(int32_t(b * A.bs + A.off(i)));
        g.values.push_back(A.v[i]);
      }
    g.group_ptr[size_t(p) + 1] = g.nblocks();
  }
  return g;
}

Projection make_projection(const BankInput& W, int64_t rows, const RowMap& src,
                           AVec<float> bias, const sk::KernelTable* kt) {
  Projection pr;
  pr.w = bank_rows(W, rows, src);
  pr.panel = make_panel(pr.w, kt);
  pr.kchunks = make_panel_kchunks(pr.w, pr.panel, kt);
  pr.bias = std::move(bias);
  if (W.bs <= 256) {
    pr.few = banked_recurrent(W, rows, src, kt->spmv_lanes);
    pr.x_padded = W.nbanks * W.bs + 64;
  }
  return pr;
}

// The constant bias input [D, width] (zeros when absent), checked.
std::vector<float> bias_input(const Api& api, const OrtKernelInfo* info, size_t index,
                              int64_t D, int64_t width, const char* what) {
  std::vector<float> out(size_t(D * width), 0.0f);
  if (!input_present(api, info, index)) return out;
  TensorView b = constant_input(api, info, index, "B");
  if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("B must be float32, got ") + dtype_name(b.type));
  if (b.shape != std::vector<int64_t>{D, width})
    throw Error("B has shape " + b.shape_str() + ", expected [" + s(D) + ", " + s(width) +
                "] [num_directions, " + what + "]");
  const float* bp = static_cast<const float*>(b.data);
  require_finite(bp, size_t(D * width), "B");
  out.assign(bp, bp + D * width);
  return out;
}

// Inputs: X, W_values, W_indices, R_values, R_indices, B, sequence_lens, initial_h, and for
// the LSTM initial_c.  GRU's R offsets are one byte (its recurrence is SpMV-only).
std::vector<IoSpec> recurrent_inputs(bool lstm) {
  const auto F = ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, ANY = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<IoSpec> v = {
      {F, INPUT_OUTPUT_REQUIRED},                                        // X
      {F, INPUT_OUTPUT_REQUIRED},                                        // W_values
      {ANY, INPUT_OUTPUT_REQUIRED},                                      // W_indices (u8/u16)
      {F, INPUT_OUTPUT_REQUIRED},                                        // R_values
      {lstm ? ANY : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8, INPUT_OUTPUT_REQUIRED},  // R_indices
      {F, INPUT_OUTPUT_OPTIONAL},                                        // B
      {ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, INPUT_OUTPUT_OPTIONAL},      // sequence_lens
      {F, INPUT_OUTPUT_OPTIONAL},                                        // initial_h
  };
  if (lstm) v.push_back({F, INPUT_OUTPUT_OPTIONAL});                    // initial_c
  return v;
}

// Y, Y_h (and the LSTM's Y_c), all required.
std::vector<IoSpec> recurrent_outputs(size_t n) {
  return std::vector<IoSpec>(n, IoSpec{ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED});
}

// The attributes and packed W, R of a SparseLSTM (4 gates) / SparseGRU (3 gates) node.
struct RecurrentSpec {
  int64_t H, I, D;
  bool reverse_only;  // direction "reverse"
  BankInput W, R;
};

RecurrentSpec read_recurrent(const Api& api, const OrtKernelInfo* info, const Attrs& a,
                             int64_t gates, const char* op, int64_t max_r_bank) {
  // max_r_bank: SparseGRU's recurrence runs only on the SpMV kernel (one-byte offsets)
  RecurrentSpec r;
  // input_forget and layout are accepted at their default 0 (refuse_unimplemented)
  refuse_unimplemented(a, gates == 3 ? std::initializer_list<const char*>{
                                           "hidden_size", "input_size", "direction",
                                           "w_bank_size", "r_bank_size", "linear_before_reset"}
                                     : std::initializer_list<const char*>{
                                           "hidden_size", "input_size", "direction",
                                           "w_bank_size", "r_bank_size"});
  r.H = a.get_int("hidden_size");
  r.I = a.get_int("input_size");
  const std::string dir = a.get_string("direction", "forward");
  if (dir != "forward" && dir != "reverse" && dir != "bidirectional")
    throw Error("attribute 'direction' must be \"forward\", \"reverse\" or \"bidirectional\", got \"" +
                dir + "\"");
  r.D = dir == "bidirectional" ? 2 : 1;
  r.reverse_only = dir == "reverse";
  if (r.H < 1 || r.H > (1 << 26))
    throw Error("attribute 'hidden_size' must be in [1, 2^26], got " + s(r.H));
  if (r.I < 1 || r.I > INT32_MAX)
    throw Error("attribute 'input_size' must be >= 1, got " + s(r.I));
  if (input_present(api, info, kSeqLens))
    throw Error(std::string("sequence_lens (input 6) is not supported: every batch entry runs "
                            "the full sequence (convert leaves such ") + op + "s dense)");
  const int64_t M = r.D * gates * r.H;
  const std::string rows_desc = "num_directions*" + s(gates) + "*hidden_size = " + s(r.D) +
                                "*" + s(gates) + "*" + s(r.H);
  const int64_t wbs = a.get_int("w_bank_size");
  const int64_t rbs = a.get_int("r_bank_size");
  if (rbs > max_r_bank)
    throw Error("attribute 'r_bank_size' must be in [1, " + s(max_r_bank) + "] for Sparse" +
                op + ", got " + s(rbs));
  r.W = read_bank_input(api, info, kWValues, kWIndices, "W", M, rows_desc, r.I, "input_size",
                        wbs, "w_bank_size");
  r.R = read_bank_input(api, info, kRValues, kRIndices, "R", M, rows_desc, r.H, "hidden_size",
                        rbs, "r_bank_size");
  return r;
}

// Row p of a direction's LSTM gate-interleaved order is ONNX row (p % 4)*H + p / 4 (gates
// i, o, f, c).
inline int64_t onnx_row(int64_t p, int64_t H) { return (p % 4) * H + p / 4; }

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// Extreme but finite inputs (|x| ~ 3e38) overflow a gate's float sum to inf, or inf - inf =
// NaN, in an order that differs per ISA (issue 21: NaN from AVX2, finite from stock
// onnxruntime).  Such a pre-activation is recomputed exactly in double from the weights, the
// same way on every ISA, and saturated to the float range, so sigmoid/tanh saturate as the
// true value says.  A NaN in X or the state still gives NaN (IEEE on the exact sum).
double dot_row(const SparseWeights& w, int64_t r, const float* x) {
  double acc = 0.0;
  for (int32_t j = w.group_ptr[size_t(r)]; j < w.group_ptr[size_t(r) + 1]; ++j)
    acc += double(w.values[size_t(j)]) * double(x[w.k[size_t(j)]]);
  return acc;
}

double dot_row(const Recurrent& rec, int64_t r, const float* x) {
  if (!rec.banked) return dot_row(rec.general, r, x);
  const sk::BankMat& m = rec.m;
  const int64_t L = m.lanes, per_bank = int64_t(m.keep) * L, per_group = m.nbanks * per_bank;
  const int64_t base = r / L * per_group + r % L;
  double acc = 0.0;
  for (int64_t b = 0; b < m.nbanks; ++b)
    for (int64_t q = 0; q < m.keep; ++q) {
      const size_t i = size_t(base + b * per_bank + q * L);
      acc += double(m.values[i]) * double(x[b * m.bank_size + m.offs[i]]);
    }
  return acc;
}

inline float saturate(double v) {  // NaN stays NaN
  return v > double(FLT_MAX) ? FLT_MAX : v < -double(FLT_MAX) ? -FLT_MAX : float(v);
}

// Row p of the projection (op order): bias + W·x, exactly.
inline double proj_exact(const Projection& pr, int64_t p, const float* x) {
  return double(pr.bias[size_t(p)]) + dot_row(pr.w, p, x);
}

float* output(const Api& api, OrtKernelContext* ctx, size_t index,
              const std::vector<int64_t>& dims) {
  static const char* const kNames[] = {"output Y", "output Y_h", "output Y_c"};
  check_output_size(dims, kNames[index < 3 ? index : 0]);
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

void Projection::run(const Api& api, OrtKernelContext* ctx, const sk::KernelTable* kt,
                     const float* x, int64_t P, float* xw) const {
  const int64_t T = panel.T, K = w.K, M = w.M;
  if (P <= kFewRows && few.banked) {
    // x rows copied into zero-padded buffers (the kernel loads whole banks), then one SpMV
    // per row and chunk of row groups.
    Scratch<float> xp(size_t(P * x_padded));
    std::memset(xp.get(), 0, sizeof(float) * size_t(P * x_padded));
    for (int64_t p = 0; p < P; ++p)
      std::memcpy(xp.get() + p * x_padded, x + p * K, sizeof(float) * size_t(K));
    const int64_t groups = few.m.groups, nch = std::min<int64_t>(groups, 8);
    parallel_for(api, ctx, size_t(P * nch), [&](size_t i) {
      const int64_t p = int64_t(i) / nch, c = int64_t(i) % nch;
      kt->spmv_bank(few.m, int(groups * c / nch), int(groups * (c + 1) / nch),
                    xp.get() + p * x_padded, bias.data(), xw + p * M);
    });
    return;
  }
  const int64_t nrows = int64_t(panel.rows.size());
  const int64_t panel_size = std::max<int64_t>(1, nrows * T);
  const int64_t ntiles = (P + T - 1) / T;
  Scratch<float> buf(size_t(ntiles * (panel_size + M * T)));
  float* panels = buf.get();
  float* yts = panels + ntiles * panel_size;
  parallel_for(api, ctx, size_t(ntiles), [&](size_t i) {
    const int64_t r0 = int64_t(i) * T, len = std::min(T, P - r0);
    gather_panel(panel, x, K, r0, len, panels + int64_t(i) * panel_size);
  });
  const sk::SpMat m = spmat(w, panel.x_offset.data());
  const GroupChunks gc = group_chunks(w.G);
  sk::Epilogue ep;
  ep.bias = bias.data();
  parallel_for(api, ctx, size_t(ntiles * gc.n), [&](size_t i) {
    const int64_t t = int64_t(i) / gc.n;
    const int c = int(int64_t(i) % gc.n);
    const int64_t r0 = t * T, len = std::min(T, P - r0);
    float* yt = yts + t * M * T;
    const float* pn = panels + t * panel_size;
    spmm_maybe_chunked(kchunks, kt->spmm_b1, m, size_t(len), gc.begin(c), gc.end(c), pn, yt, T,
                       ep);
    transpose(yt + int64_t(gc.begin(c)) * T, T, xw + r0 * M + gc.begin(c), M,
              gc.end(c) - gc.begin(c), len);
  });
}

// ---------------------------------------------------------------------------------------------
// SparseLSTM

const std::vector<IoSpec>& SparseLSTMKernel::inputs() {
  static const std::vector<IoSpec> v = recurrent_inputs(true);
  return v;
}

const std::vector<IoSpec>& SparseLSTMKernel::outputs() {
  static const std::vector<IoSpec> v = recurrent_outputs(3);
  return v;
}

SparseLSTMKernel::SparseLSTMKernel(const Api& api, const OrtKernelInfo* info) : api_(api) {
  Attrs a(api, info);
  kt_ = select_table();
  const RecurrentSpec spec = read_recurrent(api, info, a, 4, "LSTM", 65536);
  H_ = spec.H, I_ = spec.I, D_ = spec.D, reverse_only_ = spec.reverse_only;
  const BankInput &W = spec.W, &R = spec.R;
  const int64_t M = D_ * 4 * H_, H = H_, G4 = 4 * H_, rbs = R.bs;
  // Rows gate-interleaved per direction; bias Wb + Rb, permuted the same way.
  const RowMap src = [H, G4](int64_t p) { return p / G4 * G4 + onnx_row(p % G4, H); };
  const std::vector<float> b = bias_input(api, info, kB, D_, 8 * H_, "8*hidden_size");
  AVec<float> bias(static_cast<size_t>(M), 0.0f);
  for (int64_t p = 0; p < M; ++p) {
    const int64_t d = p / G4, r = onnx_row(p % G4, H);
    bias[size_t(p)] = b[size_t(d * 8 * H + r)] + b[size_t(d * 8 * H + G4 + r)];
  }
  proj_ = make_projection(W, M, src, std::move(bias), kt_);

  // R: per direction, interleaved for the SpMV kernel (banks <= 256), else general.
  r_bank_ = rbs;
  r_nbanks_ = R.nbanks;
  for (int64_t d = 0; d < D_; ++d) {
    const RowMap rsrc = [d, H, G4](int64_t p) { return d * G4 + onnx_row(p, H); };
    if (rbs <= 256) {
      r_.push_back(banked_recurrent(R, G4, rsrc, kt_->spmv_lanes));
    } else {
      Recurrent rec;
      rec.general = bank_rows(R, G4, rsrc);
      rec.x_offset.assign(rec.general.k.begin(), rec.general.k.end());
      r_.push_back(std::move(rec));
    }
  }
  log_verbose(api, info,
              std::string("sparsekit SparseLSTM '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", hidden " + s(H_) + ", " + s(D_) + " direction(s), W " +
                  s(proj_.w.nblocks()) + " nonzeros, R bank " + s(rbs) + " keep " + s(R.keep) +
                  (rbs <= 256 ? " (SpMV kernel)" : " (general SpMM path)"));
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
  // the input projection's scratch is 4x Y: bounded like an output, before anything is made
  check_output_size({S, N, D, G4}, "the input projection X*W^T (4x Y, scratch)");
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
  if (S > 0) proj_.run(api_, ctx, kt_, static_cast<const float*>(X.data), S * N, xwbuf.get());

  // Work per step: (direction, batch entry, chunk of row groups); a chunk covers whole hidden
  // units (groups hold lanes/4 units; the general path uses groups of 4 rows = 1 unit).
  const int Lg = r_[0].banked ? kt_->spmv_lanes : 4;
  const int64_t ngroups = (G4 + Lg - 1) / Lg;
  const int64_t nch = std::min<int64_t>(ngroups, 8);
  const float* xw = xwbuf.get();
  const float* xdata = static_cast<const float*>(X.data);
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
      const float* xt = xdata + (t * N + b) * I_;
      for (int64_t j = g0 * Lg / 4; j < u1; ++j) {
        float g[4];
        for (int64_t k = 0; k < 4; ++k) {
          g[k] = gates[4 * j + k];
          if (!std::isfinite(g[k]))  // overflowed (or a NaN input): exactly, see dot_row
            g[k] = saturate(proj_exact(proj_, d * G4 + 4 * j + k, xt) +
                            dot_row(rec, 4 * j + k, hprev));
        }
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

// ---------------------------------------------------------------------------------------------
// SparseGRU

const std::vector<IoSpec>& SparseGRUKernel::inputs() {
  static const std::vector<IoSpec> v = recurrent_inputs(false);
  return v;
}

const std::vector<IoSpec>& SparseGRUKernel::outputs() {
  static const std::vector<IoSpec> v = recurrent_outputs(2);
  return v;
}

SparseGRUKernel::SparseGRUKernel(const Api& api, const OrtKernelInfo* info) : api_(api) {
  Attrs a(api, info);
  kt_ = select_table();
  const RecurrentSpec spec = read_recurrent(api, info, a, 3, "GRU", 256);
  H_ = spec.H, I_ = spec.I, D_ = spec.D, reverse_only_ = spec.reverse_only;
  const BankInput &W = spec.W, &R = spec.R;
  const int64_t lbr = a.get_int("linear_before_reset", 0);
  if (lbr != 0 && lbr != 1)
    throw Error("attribute 'linear_before_reset' must be 0 or 1, got " + s(lbr));
  linear_before_reset_ = lbr == 1;
  const int64_t H = H_, G3 = 3 * H_, M = D_ * G3, rbs = R.bs;
  // Op row q of a direction: zr rows 2j (z_j), 2j+1 (r_j) for q < 2H, then h_j = q - 2H.
  auto gate_row = [H](int64_t q) { return q < 2 * H ? (q % 2) * H + q / 2 : q; };
  const RowMap src = [G3, gate_row](int64_t p) { return p / G3 * G3 + gate_row(p % G3); };
  // B = [Wb_z, Wb_r, Wb_h, Rb_z, Rb_r, Rb_h] per direction.  Rb_h joins the projection's bias
  // unless linear_before_reset = 1 (then r multiplies it).
  const std::vector<float> b = bias_input(api, info, kB, D_, 6 * H_, "6*hidden_size");
  AVec<float> bias(static_cast<size_t>(M), 0.0f);
  rbh_.assign(size_t(D_ * H), 0.0f);
  for (int64_t p = 0; p < M; ++p) {
    const int64_t d = p / G3, q = p % G3, r = gate_row(q);
    const float rb = b[size_t(d * 6 * H + G3 + r)];
    const bool keep_rb_apart = linear_before_reset_ && q >= 2 * H;
    bias[size_t(p)] = b[size_t(d * 6 * H + r)] + (keep_rb_apart ? 0.0f : rb);
    if (keep_rb_apart) rbh_[size_t(d * H + q - 2 * H)] = rb;
  }
  proj_ = make_projection(W, M, src, std::move(bias), kt_);
  r_bank_ = rbs;
  r_nbanks_ = R.nbanks;
  const int L = kt_->spmv_lanes;
  for (int64_t d = 0; d < D_; ++d) {
    zr_.push_back(banked_recurrent(
        R, 2 * H, [d, G3, gate_row](int64_t q) { return d * G3 + gate_row(q); }, L));
    h_.push_back(banked_recurrent(
        R, H, [d, G3, H](int64_t j) { return d * G3 + 2 * H + j; }, L));
  }
  log_verbose(api, info,
              std::string("sparsekit SparseGRU '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", hidden " + s(H_) + ", " + s(D_) + " direction(s), W " +
                  s(proj_.w.nblocks()) + " nonzeros, R bank " + s(rbs) + " keep " + s(R.keep) +
                  ", linear_before_reset " + s(lbr));
}

void SparseGRUKernel::compute(OrtKernelContext* ctx) const {
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.size() != 3 || X.shape[2] != I_)
    throw Error("X has shape " + X.shape_str() + ", expected [seq_length, batch_size, " + s(I_) +
                "] (input_size = " + s(I_) + ")");
  const int64_t S = X.shape[0], N = X.shape[1], H = H_, D = D_, G3 = 3 * H_;
  const std::vector<int64_t> sdims = {D, N, H};
  const float* h0 = state_input(api_, ctx, kInitH, "initial_h", sdims);
  check_output_size({S, N, D, G3}, "the input projection X*W^T (3x Y, scratch)");
  float* Y = output(api_, ctx, 0, {S, D, N, H});
  float* Yh = output(api_, ctx, 1, sdims);
  if (N == 0) return;

  // h ping-pong [2][D][N][HP] and r⊙h [D][N][HP], zero tails (the kernels load whole banks);
  // gates [D][N][3H]: zr pre-activations, then R_h·(·) + init.
  const int64_t HP = std::max<int64_t>(H, r_nbanks_ * r_bank_) + 64;
  Scratch<float> hbuf(size_t(2 * D * N * HP)), rhbuf(size_t(D * N * HP)),
      gbuf(size_t(D * N * G3));
  std::memset(hbuf.get(), 0, sizeof(float) * size_t(2 * D * N * HP));
  std::memset(rhbuf.get(), 0, sizeof(float) * size_t(D * N * HP));
  if (h0)
    for (int64_t i = 0; i < D * N; ++i)
      std::memcpy(hbuf.get() + i * HP, h0 + i * H, sizeof(float) * size_t(H));
  Scratch<float> xwbuf(size_t(std::max<int64_t>(1, S * N * D * G3)));
  if (S > 0) proj_.run(api_, ctx, kt_, static_cast<const float*>(X.data), S * N, xwbuf.get());

  // Items per step: (direction, batch entry, chunk of hidden units).  Chunk bounds are
  // multiples of L units, so zr rows (2 per unit) and h rows (1 per unit) both start on group
  // boundaries of the SpMV kernel (L rows per group).
  const int64_t L = kt_->spmv_lanes;
  const int64_t ublocks = (H + L - 1) / L;
  const int64_t nch = std::min<int64_t>(ublocks, 8);
  const float* xw = xwbuf.get();
  const float* xdata = static_cast<const float*>(X.data);
  auto unit_range = [&](int64_t c, int64_t* u0, int64_t* u1) {
    *u0 = std::min(H, ublocks * c / nch * L);
    *u1 = std::min(H, ublocks * (c + 1) / nch * L);
  };
  auto groups = [L](int64_t r0, int64_t r1, int* g0, int* g1) {
    *g0 = int(r0 / L);
    *g1 = int((r1 + L - 1) / L);
  };
  for (int64_t step = 0; step < S; ++step) {
    const int64_t cur = step & 1, nxt = cur ^ 1;
    // The parts of one item: d, b, units, and its buffers.
    struct Item {
      int64_t d, b, t, u0, u1;
      const float* hprev;
      float* hnext;
      const float* xw;  // [3H] this step's projection (+ biases)
      const float* x;   // [I] this step's input row
      float* gates;     // [3H]
      float* rh;        // [HP]
    };
    auto item_of = [&](size_t i) {
      Item it;
      it.d = int64_t(i) / (N * nch);
      it.b = int64_t(i) / nch % N;
      const int64_t c = int64_t(i) % nch;
      it.t = (reverse_only_ || it.d == 1) ? S - 1 - step : step;
      unit_range(c, &it.u0, &it.u1);
      it.hprev = hbuf.get() + ((cur * D + it.d) * N + it.b) * HP;
      it.hnext = hbuf.get() + ((nxt * D + it.d) * N + it.b) * HP;
      it.xw = xw + (it.t * N + it.b) * D * G3 + it.d * G3;
      it.x = xdata + (it.t * N + it.b) * I_;
      it.gates = gbuf.get() + (it.d * N + it.b) * G3;
      it.rh = rhbuf.get() + (it.d * N + it.b) * HP;
      return it;
    };
    auto zr_pass = [&](const Item& it) {  // gates[0, 2H) = xw_zr + R_zr·h
      int g0, g1;
      groups(2 * it.u0, 2 * it.u1, &g0, &g1);
      kt_->spmv_bank(zr_[size_t(it.d)].m, g0, g1, it.hprev, it.xw, it.gates);
    };
    auto h_pass = [&](const Item& it, const float* x, const float* init) {
      int g0, g1;
      groups(it.u0, it.u1, &g0, &g1);
      kt_->spmv_bank(h_[size_t(it.d)].m, g0, g1, x, init, it.gates + 2 * H);
    };
    // z_j and r_j pre-activations, recomputed exactly where they overflowed (dot_row).
    auto fix_zr = [&](const Item& it, int64_t j) {
      for (int64_t q = 2 * j; q < 2 * j + 2; ++q)
        if (!std::isfinite(it.gates[q]))
          it.gates[q] = saturate(proj_exact(proj_, it.d * G3 + q, it.x) +
                                 dot_row(zr_[size_t(it.d)], q, it.hprev));
    };
    auto finish = [&](const Item& it, int64_t j, float z, float hh) {
      const float h = (1.0f - z) * hh + z * it.hprev[j];
      it.hnext[j] = h;
      Y[((it.t * D + it.d) * N + it.b) * H + j] = h;
    };
    if (linear_before_reset_) {
      // One pass: hh = tanh(xw_h + r ⊙ (R_h·h + Rb_h)).
      parallel_for(api_, ctx, size_t(D * N * nch), [&](size_t i) {
        const Item it = item_of(i);
        zr_pass(it);
        h_pass(it, it.hprev, rbh_.data() + it.d * H);
        for (int64_t j = it.u0; j < it.u1; ++j) {
          fix_zr(it, j);
          const float z = sigmoid(it.gates[2 * j]), r = sigmoid(it.gates[2 * j + 1]);
          float a = it.xw[2 * H + j] + r * it.gates[2 * H + j];
          if (!std::isfinite(a))
            a = saturate(proj_exact(proj_, it.d * G3 + 2 * H + j, it.x) +
                         double(r) * (double(rbh_[size_t(it.d * H + j)]) +
                                      dot_row(h_[size_t(it.d)], j, it.hprev)));
          finish(it, j, z, std::tanh(a));
        }
      });
    } else {
      // Two passes: r first (all units), then hh = tanh(xw_h + R_h·(r ⊙ h)).
      parallel_for(api_, ctx, size_t(D * N * nch), [&](size_t i) {
        const Item it = item_of(i);
        zr_pass(it);
        for (int64_t j = it.u0; j < it.u1; ++j) {
          fix_zr(it, j);  // z_j is read again by the second pass
          it.rh[j] = sigmoid(it.gates[2 * j + 1]) * it.hprev[j];
        }
      });
      parallel_for(api_, ctx, size_t(D * N * nch), [&](size_t i) {
        const Item it = item_of(i);
        h_pass(it, it.rh, it.xw + 2 * H);
        for (int64_t j = it.u0; j < it.u1; ++j) {
          float a = it.gates[2 * H + j];
          if (!std::isfinite(a))
            a = saturate(proj_exact(proj_, it.d * G3 + 2 * H + j, it.x) +
                         dot_row(h_[size_t(it.d)], j, it.rh));
          finish(it, j, sigmoid(it.gates[2 * j]), std::tanh(a));
        }
      });
    }
  }
  const int64_t fin = S & 1;
  for (int64_t i = 0; i < D * N; ++i)
    std::memcpy(Yh + i * H, hbuf.get() + (fin * D * N + i) * HP, sizeof(float) * size_t(H));
}

}  // namespace skort
