// SparseLSTM and SparseGRU (docs/format.md, docs/sequence.md): ONNX LSTM / GRU nodes (default
// activations, no peepholes, no clip) whose W and R are bank-balanced packed matrices.  The
// input projection X·Wᵀ of all steps runs at once on the SpMM kernels; the recurrence R·h runs
// one step at a time on the bank-balanced SpMV kernel with the cell fused per chunk of hidden
// units.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ort/common.h"
#include "ort/ops.h"
#include "ort/sparse.h"

namespace skort {

// A recurrent matrix in the SpMV kernel's interleaved form (rows permuted so that a hidden
// unit's gates are adjacent), or, for banks wider than 256 (LSTM only), as a general sparse
// matrix for the SpMM kernel with one pixel.
struct Recurrent {
  bool banked = false;
  sk::BankMat m;
  AVec<float> values;
  std::vector<uint8_t> offs;
  SparseWeights general;
  AVec<int32_t> x_offset;  // general: k (x is a vector)
};

// X·Wᵀ + bias for all steps and batch entries at once: W's rows in the op's own order.
// A few rows (single-step decoding) run on the SpMV kernel instead: the SpMM kernel would spend
// a whole masked pixel tile on each of them.
struct Projection {
  SparseWeights w;
  Panel panel;
  KChunks kchunks;
  AVec<float> bias;
  Recurrent few;           // banked copy of W for <= kFewRows rows (W banks <= 256), else unset
  int64_t x_padded = 0;    // floats of a padded x row for the SpMV kernel
  static constexpr int64_t kFewRows = 4;
  // xw[p, :] = W·x[p] + bias for P rows x[p] of length w.K.
  void run(const Api& api, OrtKernelContext* ctx, const sk::KernelTable* kt, const float* x,
           int64_t P, float* xw) const;
};

class SparseLSTMKernel {
 public:
  static constexpr const char* kName = "SparseLSTM";
  static const std::vector<IoSpec>& inputs();
  static const std::vector<IoSpec>& outputs();
  SparseLSTMKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

 private:
  Api api_;
  const sk::KernelTable* kt_;
  int64_t H_, I_, D_;
  bool reverse_only_;           // direction "reverse"
  int64_t r_bank_ = 0, r_nbanks_ = 0;
  Projection proj_;             // [D*4H, I], rows gate-interleaved per direction; Wb + Rb
  std::vector<Recurrent> r_;    // per direction
};

// GRU rows per direction: zr [2H] (z_j, r_j interleaved) and h [H]; the projection's rows are
// [zr | h] per direction.  linear_before_reset = 0 (ONNX's default) needs r before R_h·(r⊙h):
// two SpMV passes per step; = 1 (PyTorch's) one pass, the cell applying r to R_h·h + Rb_h.
class SparseGRUKernel {
 public:
  static constexpr const char* kName = "SparseGRU";
  static const std::vector<IoSpec>& inputs();
  static const std::vector<IoSpec>& outputs();
  SparseGRUKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

 private:
  Api api_;
  const sk::KernelTable* kt_;
  int64_t H_, I_, D_;
  bool reverse_only_, linear_before_reset_;
  int64_t r_bank_ = 0, r_nbanks_ = 0;
  Projection proj_;                // [D*3H, I]
  std::vector<Recurrent> zr_, h_;  // per direction
  AVec<float> rbh_;                // [D*H] Rb_h (linear_before_reset = 1: inside r⊙(·))
};

}  // namespace skort
