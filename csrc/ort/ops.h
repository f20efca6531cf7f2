// Four of the custom-op kernels: SparseConv, SparseGemm, DepthwiseConv and PredictedConv
// (SparseLSTM and SparseGRU are in lstm.h).  Each is built (and validated) in its constructor
// from the KernelInfo, is read-only afterwards, and computes with `compute`; both throw
// skort::Error.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ort/common.h"
#include "ort/sparse.h"

namespace skort {

// Input/output declarations of an op, for the OrtCustomOp callbacks.
struct IoSpec {
  ONNXTensorElementDataType type;
  OrtCustomOpInputOutputCharacteristic ch;
};

class SparseConvKernel {
 public:
  static constexpr const char* kName = "SparseConv";
  static const std::vector<IoSpec>& inputs();
  SparseConvKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

  // For SparseConvDepthwise: whether X and Y are both blocked (1x1, stride 1, no pads), the
  // channel counts, and the product on pixels [p0, p0 + n) of one image without a residual:
  // x_img is the image's first block (block stride P*8), y gets ceil(M/8) blocks of n pixels
  // (block stride y_bstride); panel: pixel_panel_floats() floats of scratch.
  bool blocked_in_out() const { return blocked_; }
  int64_t in_channels() const { return C_; }
  int64_t out_channels() const { return M_; }
  size_t pixel_panel_floats() const;
  void blocked_pixels(const float* x_img, int64_t P, int64_t p0, int64_t n, float* y,
                      int64_t y_bstride, float* panel) const;

 private:
  void run_direct(OrtKernelContext* ctx, const float* x, float* y, const float* res, int64_t N,
                  int64_t HW) const;
  void run_im2col(OrtKernelContext* ctx, const float* x, float* y, const float* res, int64_t N,
                  int64_t H, int64_t W, int64_t OH, int64_t OW) const;
  void im2col(const float* x_img, int64_t H, int64_t W, int64_t OW, int64_t p0, int64_t len,
              float* panel, int64_t T) const;
  void nchw_geometry(const TensorView& X, int64_t* OH, int64_t* OW) const;
  bool phase_path_fits(int64_t OW) const;
  // blocked: Y (and the residual) in NCHWc8, through spmm_b4_panel_blocked (blocked_out_)
  void run_phases(OrtKernelContext* ctx, const float* x, float* y, const float* res, int64_t N,
                  int64_t H, int64_t W, int64_t OH, int64_t OW, bool blocked) const;
  sk::Epilogue epilogue() const;

  Api api_;
  const sk::KernelTable* kt_;
  int64_t M_, C_, kh_, kw_, sh_, sw_, pt_, pl_, pb_, pr_, dh_, dw_;
  Activation act_;
  bool residual_after_act_;
  SparseWeights w_;
  AVec<float> bias_;
  bool direct_;                 // 1x1, stride 1, no pads: spmm straight on X's planes
  int64_t static_hw_ = -1;      // H*W known at creation (direct path offsets cached for it)
  AVec<int32_t> static_xoff_;   // k * static_hw_
  Panel panel_;                 // im2col path (and the direct path's fallback)
  KChunks kchunks_;             // im2col path, B = 1, large K: blocks by chunks of panel rows
  std::vector<int32_t> tap_c_, tap_dy_, tap_dx_;  // per panel row: channel, row/col shift
  bool phases_;                 // phase-plane path possible (small strided convs: the stems)
  // layout = "NCHWc8" (1x1, stride 1, no pads, 1x4 blocks only): X [N, ceil(C/8), H, W, 8],
  // Y and the residual [N, ceil(M/8), H, W, 8], through KernelTable::spmm_b4_blocked
  bool blocked_ = false;
  int blk_ps_ = 0;              // panel stride: pixels of X transposed per chunk
  AVec<int32_t> blk_xoff_;      // k * blk_ps_
  int blk_whole_ps_ = 0;        // work items up to this many pixels: one chunk this wide
  AVec<int32_t> blk_whole_xoff_;  // k * blk_whole_ps_ (empty when it equals blk_ps_)
  AVec<float> blk_bias_;        // [ceil(M/8) * 8], zero past M (empty when no bias)
  void init_blocked(const Api& api, const OrtKernelInfo* info);
  void compute_blocked(OrtKernelContext* ctx) const;
  // layout = "NCHWc8" with input_layout = "NCHW" (any geometry, 1x4 blocks): X NCHW, Y and
  // the residual blocked; phase planes (the stems) or im2col panels of out_T_ pixels through
  // spmm_b4_panel_blocked
  bool blocked_out_ = false;
  int64_t out_T_ = 0;           // panel row stride: panel_.T rounded up to 8
  void init_blocked_out(const Api& api, const OrtKernelInfo* info);
  void compute_blocked_out(OrtKernelContext* ctx) const;
  // Either blocked path with (nearly) every 1x4 block kept (the stems, the dense 1x1 bridges):
  // the weights unpacked over the panel's rows and run through KernelTable::dense_blocked,
  // which vectorises over output channels and transposes nothing.
  bool dense_ = false;
  AVec<float> dense_w_;         // [panel_.rows.size()][m16], zero where a block was pruned
  AVec<float> dense_bias_;      // [m16], zero past M (empty when no bias)
  AVec<int32_t> dense_xoff_;    // blocked_out_'s im2col path: panel row u at u * out_T_
  void init_dense();
  sk::DenseMat dense_mat(const int32_t* x_offset) const;  // x_offset: one per panel row
  sk::DenseMat blocked_dense_mat(int64_t xbs, Scratch<int32_t>* xoff) const;  // blocked X
  void run_dense_blocked(OrtKernelContext* ctx, const float* x, float* y, const float* res,
                         int64_t N, int64_t P) const;
};

class SparseGemmKernel {
 public:
  static constexpr const char* kName = "SparseGemm";
  static const std::vector<IoSpec>& inputs();
  SparseGemmKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

 private:
  Api api_;
  const sk::KernelTable* kt_;
  int64_t M_, K_;
  Activation act_;
  bool residual_after_act_;
  SparseWeights w_;
  AVec<float> bias_;
  Panel panel_;
  KChunks kchunks_;         // the panel's blocks by chunks of panel rows (B = 1, large K)
  AVec<int32_t> row_xoff_;  // k: offsets into one row of X (the R == 1 path, no gather)
};

class DepthwiseConvKernel {
 public:
  static constexpr const char* kName = "DepthwiseConv";
  static const std::vector<IoSpec>& inputs();
  // w_index, attr_prefix: where W (and the bias after it) and the attributes are on the node;
  // SparseConvDepthwise's depthwise half reads them past the 1x1 conv's (no X input of its own)
  DepthwiseConvKernel(const Api& api, const OrtKernelInfo* info, size_t w_index = 1,
                      const char* attr_prefix = "");
  void compute(OrtKernelContext* ctx) const;

  // For SparseConvDepthwise (layout NCHWc8): the output size of an H x W plane (throws when
  // the padded plane is smaller than the kernel), the input rows [lo, hi) that output rows
  // [oy0, oy1) read, and those output rows of one image computed from a band holding input
  // rows [lo, lo + rows) (block stride rows * W * 8); y: the image's first output block.
  int64_t channels() const { return C_; }
  bool blocked() const { return blocked_; }
  void out_plane(int64_t H, int64_t W, int64_t* OH, int64_t* OW) const;
  void band_rows(int64_t H, int64_t oy0, int64_t oy1, int64_t* lo, int64_t* hi) const;
  void blocked_band(const float* band, int64_t lo, int64_t rows, int64_t W, int64_t OH,
                    int64_t OW, int64_t oy0, int64_t oy1, float* y) const;

 private:
  Api api_;
  const sk::KernelTable* kt_;
  int64_t C_, k_, stride_, pt_, pl_, pb_, pr_;
  Activation act_;
  AVec<float> w_;     // [C, k*k]; layout NCHWc8: [ceil(C/8), k*k, 8], zero past C
  AVec<float> bias_;  // [C] (zeros when absent); layout NCHWc8: [ceil(C/8), 8]
  bool blocked_ = false;  // attribute layout = "NCHWc8"
  void compute_blocked(OrtKernelContext* ctx) const;
};

// SparseConvDepthwise (docs/format.md): a blocked 1x1 SparseConv (an inverted residual block's
// expansion) and the blocked DepthwiseConv that alone reads its output, run band by band of
// output rows: each band's expanded rows go to a scratch that stays in cache, never to memory.
// Inputs: SparseConv's six (its residual absent), then the DepthwiseConv's W and bias;
// attributes: SparseConv's, and the DepthwiseConv's prefixed "dw_".
class SparseConvDepthwiseKernel {
 public:
  static constexpr const char* kName = "SparseConvDepthwise";
  static const std::vector<IoSpec>& inputs();
  SparseConvDepthwiseKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

 private:
  Api api_;
  SparseConvKernel pw_;
  DepthwiseConvKernel dw_;
};

// Reorder (docs/format.md): NCHW <-> NCHWc8 (channel blocks of 8, sk::kChannelBlock), the op at
// each edge of a chain of blocked sparsekit ops.  to = "NCHWc8": [N, C, H, W] -> [N, ceil(C/8),
// H, W, 8], lanes past C zero; to = "NCHW": back, keeping `channels` channels, or with
// pool = "global_average" their means over the plane ([N, C, 1, 1], a fused GlobalAveragePool).
class ReorderKernel {
 public:
  static constexpr const char* kName = "Reorder";
  static const std::vector<IoSpec>& inputs();
  ReorderKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

 private:
  void global_average(OrtKernelContext* ctx, const float* x, int64_t N, int64_t C,
                      int64_t P) const;
  Api api_;
  const sk::KernelTable* kt_;
  bool to_blocked_ = true;
  bool pool_ = false;  // pool = "global_average": Y is [N, C, 1, 1], the plane's mean
  int64_t channels_ = -1;  // -1: taken from X (to NCHWc8 without the attribute)
};

// Checks a declared (creation-time) shape of a blocked tensor: rank 5, ceil(C/8) blocks of 8
// lanes where known (dims < 0 are unknown); throws naming `what` otherwise.
void check_blocked_shape(const std::vector<int64_t>& dims, int64_t channels, const char* what);

// PredictedConv (docs/predict.md): Conv (group 1) followed by ReLU or Clip(0, hi), computed in
// full precision only where an int8 prediction of the output is positive; zero elsewhere.
class PredictedConvKernel {
 public:
  static constexpr const char* kName = "PredictedConv";
  static const std::vector<IoSpec>& inputs();
  PredictedConvKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

 private:
  void run_pooled(OrtKernelContext* ctx, const sk::PredictMat& pm, const sk::PredictImage& img,
                  float* y, int64_t OH, int64_t OW, int64_t PH, int64_t PW) const;

  Api api_;
  const sk::KernelTable* kt_;
  int64_t M_, C_, kh_, kw_, sh_, sw_, pt_, pl_, pb_, pr_, dh_, dw_, K_, C4_, K4_;
  bool pooled_ = false;    // a MaxPool after the activation
  int64_t pkh_ = 1, pkw_ = 1, psh_ = 1, psw_ = 1, ppt_ = 0, ppl_ = 0, ppb_ = 0, ppr_ = 0;
  float hi_;
  int steps16_;            // sk::PredictMat::steps16 for these weights
  int margin_;             // attribute 'margin'
  AVec<float> w_;          // [M][kh*kw][C] full precision
  AVec<float> bias_;       // [M] (zeros when absent)
  AVec<int8_t> wq_;        // packed [ceil(M/8)][K4/4][8][4], k = tap * C4 + c
  AVec<float> wq_scale_;   // [M]
  AVec<int32_t> wq_rowsum_;
};

// Conv geometry helpers shared by SparseConv and DepthwiseConv (sparse_conv.cpp).
std::vector<int64_t> conv_pair_attr(const Attrs& a, const char* name, std::vector<int64_t> def,
                                    int64_t min);
std::vector<int64_t> conv_pads_attr(const Attrs& a);
int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t dil, int64_t p0, int64_t p1);
// Strides and dilations at most kMaxStride, the dilated kernel extent dil*(k-1)+1 at most
// 2^20, and each pad smaller than that extent (docs/format.md); throws otherwise.
constexpr int64_t kMaxStride = 4096;
void conv_check_geometry(const std::vector<int64_t>& ks, const std::vector<int64_t>& st,
                         const std::vector<int64_t>& dl, const std::vector<int64_t>& pd);

// Run-time helpers shared by the ops.
const OrtValue* get_input(const Api& api, OrtKernelContext* ctx, size_t index);
float* get_output(const Api& api, OrtKernelContext* ctx, const std::vector<int64_t>& dims);
// The optional residual input at `index`: null when absent; an error unless float32 of
// exactly Y's shape (the kernels add it element by element, no broadcasting).
const float* get_residual(const Api& api, OrtKernelContext* ctx, size_t index,
                          const std::vector<int64_t>& ydims);

}  // namespace skort
