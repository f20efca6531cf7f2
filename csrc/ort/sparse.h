// The canonical packed sparse matrix (docs/format.md) read from a node's constant inputs,
// validated, and repacked once into the kernels' internal form; plus the work-splitting and
// "panel" (gathered reduction rows) machinery shared by SparseConv and SparseGemm.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ort/common.h"
#include "ort/work_split.h"

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

// K chunks (B = 1).  The B = 1 kernels load X once per FMA; with X's rows in L2 they ran
// ~35 GFLOP/s, with the rows of the call in L1 ~55 (Zen3, 768x768 bank-balanced at 80%, 48
// pixels).  So the blocks are regrouped by ranges of X rows small enough for L1 (`rows` rows
// of `pixels` pixels, 24 KiB), and the chunks run one after the other over the same pixels:
// bias on the first, each later chunk adding onto Y (passed to the kernel as its residual),
// the activation on the last.  Y's slice stays in L1 across the chunks (a few groups at a time).
struct KChunks {
  struct Chunk {
    AVec<int32_t> group_ptr;  // [G + 1]
    AVec<int32_t> x_offset;
    AVec<float> values;
  };
  std::vector<Chunk> chunks;  // empty: not chunked
  int B = 1, rows = 0;
  int pixels = 1;             // pixels per kernel call (longer calls are split)
  bool active() const { return !chunks.empty(); }
};
int64_t kchunk_pixels(const sk::KernelTable* kt);  // pixels per call when chunked
int64_t kchunk_rows(const sk::KernelTable* kt);    // X rows per chunk
// Chunked only for B = 1 and at least two chunks' worth of X rows.
bool want_kchunks(const SparseWeights& w, int64_t x_rows, const sk::KernelTable* kt);
// x_row[j]: the X row block j reads (a panel row or an input channel); x_offset = x_row * stride.
KChunks make_kchunks(const SparseWeights& w, const int32_t* x_row, int64_t x_rows,
                     int64_t stride, const sk::KernelTable* kt);
// K chunks over a panel's rows; inactive unless want_kchunks.
KChunks make_panel_kchunks(const SparseWeights& w, const Panel& pn, const sk::KernelTable* kt);
// spmm over groups [g0, g1) and n pixels: when kc is active, chunk by chunk (in runs of
// kc.pixels; ep.residual_after_act must be false, as the chunks carry Y in the residual slot:
// kernels build no chunks for such nodes), else one call with m.
void spmm_maybe_chunked(const KChunks& kc, sk::SpmmFn spmm, const sk::SpMat& m, size_t n,
                        int g0, int g1, const float* x, float* y, ptrdiff_t y_stride,
                        const sk::Epilogue& ep);

// dst[c * dst_stride + r] = src[r * src_stride + c] for r < rows, c < cols (4x4 SSE blocks on
// x86-64; SparseGemm's X -> panel and Yᵀ -> Y).
void transpose(const float* src, int64_t src_stride, float* dst, int64_t dst_stride,
               int64_t rows, int64_t cols);

// Rows [r0, r0 + len) of a row-major X [*, K] into the panel's columns: panel[u * T + t] =
// X[r0 + t, rows[u]] (a plain transpose when the panel uses every column of X).
void gather_panel(const Panel& pn, const float* x, int64_t K, int64_t r0, int64_t len,
                  float* panel);

// x_offset[j] = k[j] * stride (the direct path, where X's reduction rows are `stride` apart).
void direct_offsets(const SparseWeights& w, int64_t stride, int32_t* out);

sk::SpMat spmat(const SparseWeights& w, const int32_t* x_offset);

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
