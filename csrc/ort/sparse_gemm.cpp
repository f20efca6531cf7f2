// SparseGemm: Y = act(X·Wᵀ + bias [+ residual]), X [..., K] -> Y [..., M].
//
// The kernels compute Yᵀ[m, p] over "pixels" p, so rows of X are pixels: a tile of T rows is
// gathered (transposed) into a panel [K', T] of the reduction rows the weights use, spmm writes
// Yᵀ [M, T] into scratch, and the tile is transposed back into Y.
#include <algorithm>
#include <climits>

#include "ort/ops.h"

namespace skort {
namespace {
std::string s(int64_t v) { return std::to_string(v); }
}  // namespace

const std::vector<IoSpec>& SparseGemmKernel::inputs() { return SparseConvKernel::inputs(); }

SparseGemmKernel::SparseGemmKernel(const Api& api, const OrtKernelInfo* info) : api_(api) {
  Attrs a(api, info);
  refuse_unimplemented(a, {"format", "block", "bank_size", "activation", "clip_min", "clip_max",
                           "residual_after_act", "out_features", "in_features"});
  kt_ = select_table();
  M_ = a.get_int("out_features");
  K_ = a.get_int("in_features");
  if (M_ < 1 || M_ > INT32_MAX - 4)
    throw Error("attribute 'out_features' must be >= 1, got " + s(M_));
  if (K_ < 1 || K_ > INT32_MAX) throw Error("attribute 'in_features' must be >= 1, got " + s(K_));
  act_ = read_activation(a);
  const int64_t raa = a.get_int("residual_after_act", 0);
  if (raa != 0 && raa != 1)
    throw Error("attribute 'residual_after_act' must be 0 or 1, got " + s(raa));
  residual_after_act_ = raa == 1;
  if (residual_after_act_ && !input_present(api, info, kInResidual))
    throw Error("residual_after_act = 1 needs a residual input (input 5)");
  w_ = read_sparse_weights(api, info, a, M_, "out_features", K_, "in_features");
  bias_ = read_bias(api, info, kInBias, M_, "out_features");
  panel_ = make_panel(w_, kt_);
  if (!residual_after_act_) kchunks_ = make_panel_kchunks(w_, panel_, kt_);
  row_xoff_.resize(w_.k.size());
  direct_offsets(w_, 1, row_xoff_.data());
  log_verbose(api, info,
              std::string("sparsekit SparseGemm '") + node_name(api, info) + "': kernels " +
                  kt_->name + ", " + s(w_.nblocks()) + " nonzero blocks of " + s(w_.B) +
                  ", panel T=" + s(panel_.T) +
                  (kchunks_.active() ? ", " + s(int64_t(kchunks_.chunks.size())) + " K chunks" : ""));
}

void SparseGemmKernel::compute(OrtKernelContext* ctx) const {
  const TensorView X = view_tensor(api_, get_input(api_, ctx, kInX), "X");
  if (X.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("X must be float32, got ") + dtype_name(X.type));
  if (X.shape.empty() || X.shape.back() != K_)
    throw Error("X has shape " + X.shape_str() + ", expected [..., " + s(K_) +
                "] (in_features = " + s(K_) + ")");
  std::vector<int64_t> ydims = X.shape;
  ydims.back() = M_;
  const int64_t R = int64_t(X.count) / K_;  // rows (product of the leading dims)
  const float* res = get_residual(api_, ctx, kInResidual, ydims);
  float* y = get_output(api_, ctx, ydims);
  if (R == 0) return;
  const float* x = static_cast<const float*>(X.data);

  const int64_t T = panel_.T, K = K_, M = M_, G = w_.G;
  const int64_t nrows = int64_t(panel_.rows.size());
  const int64_t panel_size = std::max<int64_t>(1, nrows * T);
  const int64_t ntiles = (R + T - 1) / T;
  const sk::SpMat m = spmat(w_, panel_.x_offset.data());
  const sk::SpmmFn spmm = spmm_fn(kt_, w_.B);
  sk::Epilogue ep0;
  ep0.bias = bias_.empty() ? nullptr : bias_.data();
  ep0.lo = act_.lo;
  ep0.hi = act_.hi;
  ep0.residual_after_act = residual_after_act_;
  ep0.residual_stride = T;

  if (R == 1) {
    // One row (a classifier after pooling, batch 1): X's row is the reduction "column" itself,
    // read in place with offsets k, and Y's M values are its rows (stride 1, one pixel).  No
    // gather, no scratch: in a network the panel and Y tile were cold-cache traffic every call.
    const sk::SpMat m1 = spmat(w_, row_xoff_.data());
    const GroupChunks gc = group_chunks(int(G));
    parallel_for(api_, ctx, size_t(gc.n), [&](size_t i) {
      const int c = int(i);
      sk::Epilogue ep = ep0;
      if (res) ep.residual = res, ep.residual_stride = 1;
      spmm(1, m1, gc.begin(c), gc.end(c), x, y, 1, ep);
    });
    return;
  }

  auto gather = [&](int64_t r0, int64_t len, float* panel) {
    gather_panel(panel_, x, K, r0, len, panel);
  };
  // Rows [m0, m1) of a tile: residual into Rᵀ before, Yᵀ back into Y after.
  auto res_in = [&](int64_t r0, int64_t len, int64_t m0, int64_t m1, float* rt) {
    transpose(res + r0 * M + m0, M, rt + m0 * T, T, len, m1 - m0);
  };
  auto store = [&](int64_t r0, int64_t len, int64_t m0, int64_t m1, const float* yt) {
    transpose(yt + m0 * T, T, y + r0 * M + m0, M, m1 - m0, len);
  };

  if (R > kSmallPixels) {
    // Many rows: one item per tile of T rows, all output groups.
    // Balanced tiles of at most T rows; panel and Yᵀ keep the row stride T.
    const PixelSplit ps = split_pixels(R, T, kt_);
    parallel_for(api_, ctx, size_t(ps.n), [&](size_t i) {
      const int64_t r0 = ps.begin(int64_t(i)), len = ps.len(int64_t(i));
      Scratch<float> buf(size_t(panel_size + M * T * (res ? 2 : 1)));
      float* panel = buf.get();
      float* yt = panel + panel_size;
      sk::Epilogue ep = ep0;
      gather(r0, len, panel);
      if (res) {
        float* rt = yt + M * T;
        res_in(r0, len, 0, M, rt);
        ep.residual = rt;
      }
      spmm_maybe_chunked(kchunks_, spmm, m, size_t(len), 0, int(G), panel, yt, T, ep);
      store(r0, len, 0, M, yt);
    });
    return;
  }
  // Few rows (incl. the 1-row case): gather every tile once, then split output groups.
  Scratch<float> buf(size_t(ntiles * (panel_size + M * T * (res ? 2 : 1))));
  float* panels = buf.get();
  float* yts = panels + ntiles * panel_size;
  float* rts = yts + ntiles * M * T;
  parallel_for(api_, ctx, size_t(ntiles), [&](size_t i) {
    const int64_t r0 = int64_t(i) * T;
    gather(r0, std::min(T, R - r0), panels + int64_t(i) * panel_size);
  });
  // K-chunked: few group chunks (about 8 items in all), since every item walks the whole panel.
  const GroupChunks gc =
      kchunks_.active()
          ? GroupChunks{int(std::max<int64_t>(1, std::min<int64_t>(G, (8 + ntiles - 1) / ntiles))),
                        int(G)}
          : group_chunks(int(G));
  parallel_for(api_, ctx, size_t(ntiles * gc.n), [&](size_t i) {
    const int64_t t = int64_t(i) / gc.n;
    const int c = int(int64_t(i) % gc.n);
    const int64_t r0 = t * T, len = std::min(T, R - r0);
    const int64_t m0 = int64_t(gc.begin(c)) * w_.B;
    const int64_t m1 = std::min<int64_t>(int64_t(gc.end(c)) * w_.B, M);
    float* yt = yts + t * M * T;
    sk::Epilogue ep = ep0;
    if (res) {
      float* rt = rts + t * M * T;
      res_in(r0, len, m0, m1, rt);
      ep.residual = rt;
    }
    spmm_maybe_chunked(kchunks_, spmm, m, size_t(len), gc.begin(c), gc.end(c),
                       panels + t * panel_size, yt, T, ep);
    store(r0, len, m0, m1, yt);
  });
}

}  // namespace skort
