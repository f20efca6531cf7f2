// The canonical packed sparse matrix (docs/format.md) read from a node's constant inputs,
// validated, and repacked once into the kernels' internal form; plus the work-splitting and
// "panel" (gathered reduction rows) machinery shared by SparseConv and SparseGemm.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ort/common.h"

namespace skort {

// Node inputs shared by SparseConv and SparseGemm.
enum SparseInput : size_t {
  kInX = 0,
  kInValues = 1,
  kInIndices = 2,
  kInGroupPtr = 3,
  kInBias = 4,
  kInResidual = 5,
  kSparseInputCount = 6,
};

// W [M, K] in the internal form: groups of B rows, blocks with absolute reduction index k.
// Blocks whose B weights are all zero (bank padding, explicit zeros) are dropped.
struct SparseWeights {
  std::string format;       // "bsr" | "bank"
  int B = 1;
  int M = 0;                // rows
  int G = 0;                // ceil(M / B)
  int64_t K = 0;            // reduction length
  int64_t bank_size = 0;    // bank format only
  int64_t stored_blocks = 0;  // blocks in the file (incl. padding)
  std::string m_name;       // "out_channels" | "out_features"
  std::string g_desc;       // "ceil(out_channels / block) = ceil(17 / 4) = 5", for messages
  AVec<int32_t> group_ptr;  // [G + 1]
  std::vector<int32_t> k;   // [nblocks] absolute reduction index
  AVec<float> values;       // [nblocks * B]
  int32_t nblocks() const { return static_cast<int32_t>(k.size()); }
};

// Reads and validates format/block/bank_size and inputs 1-3.  `k_desc` explains where K comes
// from, for messages (e.g. "in_channels*kh*kw = 16*3*3").
// `m_name` names M's attribute ("out_channels" / "out_features").
SparseWeights read_sparse_weights(const Api& api, const OrtKernelInfo* info, const Attrs& attrs,
                                  int64_t M, const char* m_name, int64_t K,
                                  const std::string& k_desc);

// Optional constant bias [M] at input `index`; empty when absent.
AVec<float> read_bias(const Api& api, const OrtKernelInfo* info, size_t index, int64_t M,
                      const char* m_name);

// Reduction rows gathered into a [rows.size(), T] panel: panel row u holds reduction row
// rows[u] for T consecutive pixels; x_offset[j] = u(j) * T for block j.
struct Panel {
  int T = 0;
  std::vector<int32_t> rows;
  AVec<int32_t> x_offset;
};
Panel make_panel(const SparseWeights& w, const sk::KernelTable* kt);

// x_offset[j] = k[j] * stride (the direct path, where X's reduction rows are `stride` apart).
void direct_offsets(const SparseWeights& w, int64_t stride, int32_t* out);

sk::SpMat spmat(const SparseWeights& w, const int32_t* x_offset);

// Work splitting (design.md §4): large images are split by pixel tiles, small ones (at most
// kSmallPixels) by output-channel group chunks.
constexpr int64_t kSmallPixels = 196;
// Tile width for the direct paths, whose X has K reduction rows.
int64_t pixel_tile(const sk::KernelTable* kt, int64_t K);
// Width of equal tiles covering P pixels: a multiple of the kernel's register tile, at most
// max_width (so 784 px in 256-wide tiles become 4 x 196, not 3 x 256 + 16); at least 4 tiles
// where P allows and an even number of them, for 2- and 4-thread pools.
int64_t balanced_tile(int64_t P, int64_t max_width, const sk::KernelTable* kt);
struct GroupChunks {
  int n;       // number of chunks
  int G;
  int begin(int c) const { return static_cast<int>(int64_t(G) * c / n); }
  int end(int c) const { return static_cast<int>(int64_t(G) * (c + 1) / n); }
};
GroupChunks group_chunks(int G);

const sk::KernelTable* select_table();  // throws Error with select_kernels' message
inline sk::SpmmFn spmm_fn(const sk::KernelTable* kt, int B) {
  return B == 4 ? kt->spmm_b4 : kt->spmm_b1;
}

}  // namespace skort
