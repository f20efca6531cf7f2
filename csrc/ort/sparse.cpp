#include "ort/sparse.h"

#if defined(__SSE2__)
#include <xmmintrin.h>
#endif

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

namespace skort {
namespace {

std::string s(int64_t v) { return std::to_string(v); }

bool is_index_type(ONNXTensorElementDataType t, bool bank) {
  if (bank) return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
  return t == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 || t == ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16;
}

int64_t index_at(const TensorView& t, size_t i) {
  switch (t.type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return static_cast<const int32_t*>(t.data)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return static_cast<const uint16_t*>(t.data)[i];
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return static_cast<const uint8_t*>(t.data)[i];
    default: throw Error("internal: unexpected index type");
  }
}

void expect_shape(const TensorView& t, const std::vector<int64_t>& want, const char* name,
                  const std::string& why) {
  if (t.shape != want)
    throw Error(std::string(name) + " has shape " + t.shape_str() + ", expected " +
                shape_str(want) + " (" + why + ")");
}

// Appends block (k, vals) unless its B weights are all zero.
void push_block(SparseWeights& w, int64_t k, const float* vals) {
  bool any = false;
  for (int b = 0; b < w.B; ++b) any |= vals[b] != 0.0f;
  if (!any) return;
  w.k.push_back(static_cast<int32_t>(k));
  w.values.insert(w.values.end(), vals, vals + w.B);
}

// Rows past M in the last group must hold zeros (docs/format.md).
void check_padding_rows(const SparseWeights& w, const float* vals, int64_t first_block,
                        int64_t end_block, int64_t stride_blocks) {
  const int valid = w.M - (w.G - 1) * w.B;
  if (valid >= w.B) return;
  for (int64_t j = first_block; j < end_block; j += stride_blocks)
    for (int b = valid; b < w.B; ++b)
      if (vals[j * w.B + b] != 0.0f)
        throw Error("values: the last group's rows past " + w.m_name + " (" + s(w.M) +
                    ") must be zero, found " + std::to_string(vals[j * w.B + b]) +
                    " in block " + s(j) + " row " + s(b));
}

void read_bsr(SparseWeights& w, const TensorView& vals, const TensorView& idx,
              const TensorView& gp, const std::string& k_desc) {
  if (vals.shape.size() != 2 || vals.shape[1] != w.B)
    throw Error("values has shape " + vals.shape_str() + ", expected [nblocks, " + s(w.B) +
                "] for format \"bsr\" with block " + s(w.B));
  const int64_t nb = vals.shape[0];
  if (nb > INT32_MAX) throw Error("values: too many blocks (" + s(nb) + ")");
  expect_shape(idx, {nb}, "indices", "one reduction index per block, nblocks = values.shape[0]");
  if (gp.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32)
    throw Error(std::string("group_ptr must be int32, got ") + dtype_name(gp.type));
  expect_shape(gp, {int64_t(w.G) + 1}, "group_ptr", "G + 1 with G = " + w.g_desc);
  const int32_t* g = static_cast<const int32_t*>(gp.data);
  if (g[0] != 0) throw Error("group_ptr[0] must be 0, got " + s(g[0]));
  for (int i = 0; i < w.G; ++i)
    if (g[i + 1] < g[i])
      throw Error("group_ptr is not non-decreasing: group_ptr[" + s(i + 1) + "] = " +
                  s(g[i + 1]) + " < group_ptr[" + s(i) + "] = " + s(g[i]));
  if (g[w.G] != nb)
    throw Error("group_ptr[" + s(w.G) + "] = " + s(g[w.G]) +
                " must equal the number of blocks (values.shape[0] = " + s(nb) + ")");
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t k = index_at(idx, size_t(j));
    if (k < 0 || k >= w.K)
      throw Error("indices[" + s(j) + "] = " + s(k) + " is out of range [0, K) with K = " +
                  k_desc + " = " + s(w.K));
  }
  const float* v = static_cast<const float*>(vals.data);
  check_padding_rows(w, v, g[w.G - 1], nb, 1);
  w.stored_blocks = nb;
  w.group_ptr.assign(size_t(w.G) + 1, 0);
  w.k.reserve(size_t(nb));
  w.values.reserve(size_t(nb) * w.B);
  for (int gi = 0; gi < w.G; ++gi) {
    for (int64_t j = g[gi]; j < g[gi + 1]; ++j) push_block(w, index_at(idx, size_t(j)), v + j * w.B);
    w.group_ptr[gi + 1] = w.nblocks();
  }
}

void read_bank(SparseWeights& w, const TensorView& vals, const TensorView& idx) {
  const int64_t bs = w.bank_size;
  const int64_t nbanks = (w.K + bs - 1) / bs;
  if (vals.shape.size() != 4 || vals.shape[0] != w.G || vals.shape[1] != nbanks ||
      vals.shape[3] != w.B)
    throw Error("values has shape " + vals.shape_str() + ", expected [G, nbanks, keep, B] = [" +
                s(w.G) + ", " + s(nbanks) + ", keep, " + s(w.B) + "] (G = " + w.g_desc +
                ", nbanks = ceil(K / bank_size) = ceil(" + s(w.K) + " / " + s(bs) + "))");
  const int64_t keep = vals.shape[2];
  if (keep > bs)
    throw Error("values: keep = " + s(keep) + " blocks per bank exceeds bank_size = " + s(bs));
  expect_shape(idx, {w.G, nbanks, keep}, "indices", "[G, nbanks, keep], one offset per block");
  const int64_t nb = w.G * nbanks * keep;
  if (nb > INT32_MAX) throw Error("values: too many blocks (" + s(nb) + ")");
  for (int64_t gi = 0; gi < w.G; ++gi)
    for (int64_t bank = 0; bank < nbanks; ++bank) {
      const int64_t len = std::min(bs, w.K - bank * bs);
      for (int64_t q = 0; q < keep; ++q) {
        const int64_t o = index_at(idx, size_t((gi * nbanks + bank) * keep + q));
        if (o >= len)
          throw Error("indices[" + s(gi) + ", " + s(bank) + ", " + s(q) + "] = " + s(o) +
                      " is not below the length of bank " + s(bank) + " (" + s(len) + ")");
      }
    }
  const float* v = static_cast<const float*>(vals.data);
  check_padding_rows(w, v, (w.G - 1) * nbanks * keep, nb, 1);
  w.stored_blocks = nb;
  w.group_ptr.assign(size_t(w.G) + 1, 0);
  for (int64_t gi = 0; gi < w.G; ++gi) {
    for (int64_t bank = 0; bank < nbanks; ++bank)
      for (int64_t q = 0; q < keep; ++q) {
        const int64_t j = (gi * nbanks + bank) * keep + q;
        push_block(w, bank * bs + index_at(idx, size_t(j)), v + j * w.B);
      }
    w.group_ptr[size_t(gi) + 1] = w.nblocks();
  }
}

}  // namespace

SparseWeights read_sparse_weights(const Api& api, const OrtKernelInfo* info, const Attrs& attrs,
                                  int64_t M, const char* m_name, int64_t K,
                                  const std::string& k_desc) {
  SparseWeights w;
  w.format = attrs.get_string("format");
  const int64_t B = attrs.get_int("block");
  if (B != 1 && B != 4) throw Error("attribute 'block' must be 1 or 4, got " + s(B));
  if (M < 1 || M > INT32_MAX - 4)
    throw Error(std::string("attribute '") + m_name + "' must be >= 1, got " + s(M));
  if (K < 1 || K > INT32_MAX) throw Error("K = " + k_desc + " = " + s(K) + " is out of range");
  w.B = int(B);
  w.M = int(M);
  w.G = int((M + B - 1) / B);
  w.K = K;
  w.m_name = m_name;
  w.g_desc = "ceil(" + std::string(m_name) + " / block) = ceil(" + s(M) + " / " + s(B) + ") = " +
             s(w.G);
  const bool bank = w.format == "bank";
  if (!bank && w.format != "bsr")
    throw Error("attribute 'format' must be \"bsr\" or \"bank\", got \"" + w.format + "\"");
  if (bank) {
    w.bank_size = attrs.get_int("bank_size");
    if (w.bank_size < 1 || w.bank_size > 65536)
      throw Error("attribute 'bank_size' must be in [1, 65536], got " + s(w.bank_size));
  } else if (attrs.has("bank_size")) {
    throw Error("attribute 'bank_size' is only valid with format \"bank\"");
  }

  TensorView vals = constant_input(api, info, kInValues, "values");
  if (vals.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("values must be float32, got ") + dtype_name(vals.type));
  require_finite(static_cast<const float*>(vals.data), vals.count, "values");
  TensorView idx = constant_input(api, info, kInIndices, "indices");
  if (!is_index_type(idx.type, bank))
    throw Error(std::string("indices must be ") + (bank ? "uint8 or uint16" : "int32 or uint16") +
                " for format \"" + w.format + "\", got " + dtype_name(idx.type));
  const bool has_gp = input_present(api, info, kInGroupPtr);
  if (bank) {
    if (has_gp) throw Error("group_ptr must be absent (\"\") for format \"bank\"");
    read_bank(w, vals, idx);
  } else {
    if (!has_gp) throw Error("group_ptr (input 3) is required for format \"bsr\"");
    TensorView gp = constant_input(api, info, kInGroupPtr, "group_ptr");
    read_bsr(w, vals, idx, gp, k_desc);
  }
  return w;
}

AVec<float> read_bias(const Api& api, const OrtKernelInfo* info, size_t index, int64_t M,
                      const char* m_name) {
  AVec<float> bias;
  if (!input_present(api, info, index)) return bias;
  TensorView b = constant_input(api, info, index, "bias");
  if (b.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("bias must be float32, got ") + dtype_name(b.type));
  if (b.shape != std::vector<int64_t>{M})
    throw Error("bias has shape " + b.shape_str() + ", expected [" + s(M) + "] (" + m_name + ")");
  const float* p = static_cast<const float*>(b.data);
  require_finite(p, size_t(M), "bias");
  bias.assign(p, p + M);
  return bias;
}

Panel make_panel(const SparseWeights& w, const sk::KernelTable* kt) {
  Panel pn;
  pn.rows = w.k;
  std::sort(pn.rows.begin(), pn.rows.end());
  pn.rows.erase(std::unique(pn.rows.begin(), pn.rows.end()), pn.rows.end());
  const int64_t R = std::max<int64_t>(1, int64_t(pn.rows.size()));
  const int64_t tp = std::max(1, kt->tile_pixels);
  // A panel of ~256 KiB (L2-resident), between 32 and 1024 pixels, a multiple of the tile;
  // K-chunked weights use the chunks' pixel count instead.
  int64_t T = std::min<int64_t>(1024, std::max<int64_t>(32, 65536 / R));
  T = std::max(tp, T / tp * tp);
  if (want_kchunks(w, R, kt)) T = kchunk_pixels(kt);
  if (R * T > INT32_MAX) throw Error("weights reference too many reduction rows (" + s(R) + ")");
  pn.T = int(T);
  pn.x_offset.resize(w.k.size());
  for (size_t j = 0; j < w.k.size(); ++j) {
    const auto it = std::lower_bound(pn.rows.begin(), pn.rows.end(), w.k[j]);
    pn.x_offset[j] = int32_t((it - pn.rows.begin()) * T);
  }
  return pn;
}

int64_t kchunk_pixels(const sk::KernelTable* kt) {
  const int64_t t = std::max(1, kt->b1_tile_pixels);
  return (48 + t - 1) / t * t;  // one or two register tiles: avx2 48, avx512 64, neon 48
}

int64_t kchunk_rows(const sk::KernelTable* kt) {
  return std::max<int64_t>(16, (24 << 10) / (4 * kchunk_pixels(kt)));
}

bool want_kchunks(const SparseWeights& w, int64_t x_rows, const sk::KernelTable* kt) {
  return w.B == 1 && x_rows >= 2 * kchunk_rows(kt);
}

KChunks make_kchunks(const SparseWeights& w, const int32_t* x_row, int64_t x_rows,
                     int64_t stride, const sk::KernelTable* kt) {
  KChunks kc;
  kc.B = w.B;
  kc.rows = w.M;
  kc.pixels = int(kchunk_pixels(kt));
  const int64_t per = kchunk_rows(kt);
  const size_t n = size_t((x_rows + per - 1) / per), G = size_t(w.G), B = size_t(w.B);
  kc.chunks.resize(std::max<size_t>(1, n));
  for (auto& c : kc.chunks) c.group_ptr.assign(G + 1, 0);
  for (size_t g = 0; g < G; ++g)
    for (int32_t j = w.group_ptr[g]; j < w.group_ptr[g + 1]; ++j)
      ++kc.chunks[size_t(x_row[j] / per)].group_ptr[g + 1];
  for (auto& c : kc.chunks) {
    for (size_t g = 0; g < G; ++g) c.group_ptr[g + 1] += c.group_ptr[g];
    c.x_offset.resize(size_t(c.group_ptr[G]));
    c.values.resize(size_t(c.group_ptr[G]) * B);
  }
  std::vector<int32_t> fill(kc.chunks.size());
  for (size_t g = 0; g < G; ++g) {
    for (size_t c = 0; c < kc.chunks.size(); ++c) fill[c] = kc.chunks[c].group_ptr[g];
    for (int32_t j = w.group_ptr[g]; j < w.group_ptr[g + 1]; ++j) {
      const size_t c = size_t(x_row[j] / per);
      const size_t d = size_t(fill[c]++);
      kc.chunks[c].x_offset[d] = int32_t(int64_t(x_row[j]) * stride);
      std::copy_n(w.values.data() + size_t(j) * B, B, kc.chunks[c].values.data() + d * B);
    }
  }
  return kc;
}

KChunks make_panel_kchunks(const SparseWeights& w, const Panel& pn, const sk::KernelTable* kt) {
  const int64_t nrows = int64_t(pn.rows.size());
  if (!want_kchunks(w, nrows, kt)) return KChunks{};
  std::vector<int32_t> u(w.k.size());  // panel row of each block
  for (size_t j = 0; j < u.size(); ++j) u[j] = pn.x_offset[j] / pn.T;
  return make_kchunks(w, u.data(), nrows, pn.T, kt);
}

void spmm_maybe_chunked(const KChunks& kc, sk::SpmmFn spmm, const sk::SpMat& m, size_t n,
                        int g0, int g1, const float* x, float* y, ptrdiff_t y_stride,
                        const sk::Epilogue& ep) {
  if (!kc.active()) return spmm(n, m, g0, g1, x, y, y_stride, ep);
  const size_t last = kc.chunks.size() - 1, tp = size_t(std::max(1, kc.pixels));
  // Groups per pass: Y's slice (rows x tp floats) within 64 KiB, L2-resident.  Each pass brings
  // every chunk's X rows into L1 once, so passes should be few (8 KiB slices, L1-resident,
  // measured slower: 3.7 vs 3.3 ms for K = 3072, M = 768, 128 rows).
  const int gb = int(std::max<size_t>(1, 16384 / (tp * size_t(kc.B))));
  for (size_t p0 = 0; p0 < n; p0 += tp) {
    const size_t len = std::min(tp, n - p0);
    for (int a = g0; a < g1; a += gb) {
      const int b = std::min(g1, a + gb);
      for (size_t c = 0; c <= last; ++c) {
        const KChunks::Chunk& ch = kc.chunks[c];
        sk::SpMat cm;
        cm.B = kc.B;
        cm.rows = kc.rows;
        cm.groups = int(ch.group_ptr.size()) - 1;
        cm.group_ptr = ch.group_ptr.data();
        cm.x_offset = ch.x_offset.data();
        cm.values = ch.values.data();
        sk::Epilogue e;  // no bias, no residual, no clamp
        if (c == 0) {
          e.bias = ep.bias;
          e.residual = ep.residual ? ep.residual + p0 : nullptr;
          e.residual_stride = ep.residual_stride;
        } else {
          e.residual = y + p0;  // the partial sums so far
          e.residual_stride = y_stride;
        }
        if (c == last) e.lo = ep.lo, e.hi = ep.hi;
        spmm(len, cm, a, b, x + p0, y + p0, y_stride, e);
      }
    }
  }
}

void transpose(const float* src, int64_t ss, float* dst, int64_t ds, int64_t rows,
               int64_t cols) {
  int64_t r = 0;
#if defined(__SSE2__)
  for (; r + 4 <= rows; r += 4) {
    const float* s = src + r * ss;
    int64_t c = 0;
    for (; c + 4 <= cols; c += 4) {
      __m128 a = _mm_loadu_ps(s + c), b = _mm_loadu_ps(s + ss + c);
      __m128 e = _mm_loadu_ps(s + 2 * ss + c), f = _mm_loadu_ps(s + 3 * ss + c);
      _MM_TRANSPOSE4_PS(a, b, e, f);
      float* d = dst + c * ds + r;
      _mm_storeu_ps(d, a);
      _mm_storeu_ps(d + ds, b);
      _mm_storeu_ps(d + 2 * ds, e);
      _mm_storeu_ps(d + 3 * ds, f);
    }
    for (; c < cols; ++c)
      for (int64_t i = 0; i < 4; ++i) dst[c * ds + r + i] = s[i * ss + c];
  }
#endif
  for (; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * ds + r] = src[r * ss + c];
}

void gather_panel(const Panel& pn, const float* x, int64_t K, int64_t r0, int64_t len,
                  float* panel) {
  const int64_t T = pn.T, nrows = int64_t(pn.rows.size());
  if (nrows == K) return transpose(x + r0 * K, K, panel, T, len, K);
  const int32_t* rows = pn.rows.data();
  for (int64_t t = 0; t < len; ++t) {
    const float* xr = x + (r0 + t) * K;
    for (int64_t u = 0; u < nrows; ++u) panel[u * T + t] = xr[rows[u]];
  }
}

void direct_offsets(const SparseWeights& w, int64_t stride, int32_t* out) {
  for (size_t j = 0; j < w.k.size(); ++j) out[j] = int32_t(int64_t(w.k[j]) * stride);
}

sk::SpMat spmat(const SparseWeights& w, const int32_t* x_offset) {
  sk::SpMat m;
  m.B = w.B;
  m.rows = w.M;
  m.groups = w.G;
  m.group_ptr = w.group_ptr.data();
  m.x_offset = x_offset;
  m.values = w.values.data();
  return m;
}

GroupChunks group_chunks(int G) { return GroupChunks{std::max(1, std::min(G, 32)), G}; }

const sk::KernelTable* select_table() {
  const char* err = nullptr;
  const sk::KernelTable* t = sk::select_kernels(&err);
  if (!t) {
    const char* env = std::getenv("SPARSEKIT_ISA");
    throw Error(std::string("kernel selection failed (SPARSEKIT_ISA=") + (env ? env : "") +
                    "): " + (err ? err : "no kernels available"),
                ORT_FAIL);
  }
  return t;
}

}  // namespace skort
