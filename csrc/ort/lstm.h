// SparseLSTM (docs/format.md, docs/sequence.md): an ONNX LSTM (default activations, no
// peepholes, no clip) whose W and R are bank-balanced packed matrices.  The input projection
// X·Wᵀ of all steps runs at once on the SpMM kernels; the recurrence R·h runs one step at a
// time on the bank-balanced SpMV kernel with the LSTM cell fused per chunk of hidden units.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ort/common.h"
#include "ort/ops.h"
#include "ort/sparse.h"

namespace skort {

class SparseLSTMKernel {
 public:
  static constexpr const char* kName = "SparseLSTM";
  static const std::vector<IoSpec>& inputs();
  static const std::vector<IoSpec>& outputs();
  SparseLSTMKernel(const Api& api, const OrtKernelInfo* info);
  void compute(OrtKernelContext* ctx) const;

  // One direction's recurrent matrix in the SpMV kernel's interleaved form (rows permuted
  // so that the 4 gates of hidden unit j are rows 4j..4j+3), or, for banks wider than 256,
  // as a general sparse matrix for the SpMM kernel with one pixel.
  struct Recurrent {
    bool banked = false;
    sk::BankMat m;
    AVec<float> values;
    std::vector<uint8_t> offs;
    SparseWeights general;
    AVec<int32_t> x_offset;  // general: k (x is a vector)
  };

 private:
  void project(OrtKernelContext* ctx, const float* x, int64_t P, float* xw) const;

  Api api_;
  const sk::KernelTable* kt_;
  int64_t H_, I_, D_;
  bool reverse_only_;           // direction "reverse"
  int64_t r_bank_ = 0, r_nbanks_ = 0;
  SparseWeights w_;             // [D*4H, I], rows permuted per direction (gate-interleaved)
  Panel panel_;
  AVec<float> bias_;            // [D*4H] Wb + Rb, permuted like w_
  std::vector<Recurrent> r_;    // per direction
};

}  // namespace skort
