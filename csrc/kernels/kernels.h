// sparsekit kernels: the contract between the custom ops (csrc/ort) and the per-ISA
// microkernels (csrc/kernels/*_{ref,avx2,avx512,neon}.cpp).
//
// Layout everywhere is NCHW-like: Y[row, p] over "pixels" p, so every kernel vectorises over
// p and output rows store contiguously.  W is sparse with rows in groups of B output rows
// (B = 1 or 4): one nonzero "block" is B weights of B consecutive rows at one reduction index.
//
// Rules for ISA files (compiled with per-file -mavx2 / -mavx512f flags, CMakeLists.txt):
//   * put everything in an anonymous namespace except the exported table getter and the
//     ISA-suffixed kernels of isa_parts.h;
//   * no code that the linker merges across files: an inline function or template with external
//     linkage (std::min, std::vector's members, a helper in namespace sk of a shared header)
//     that is not inlined is emitted as a weak symbol by every file using it, and the linker
//     keeps one copy, perhaps the AVX-512 one, for callers running on a CPU without AVX-512.
// The spmm_*, spmv_* and dwconv_* files keep to this and use no STL.  The predict_* files do
// not: they use std::vector, std::min, std::fill and std::memcpy, and share predict_taps.h's
// inline helpers and templates (namespace sk, external linkage) between ref, neon, avx2 and
// avx512vnni.  In the release (-O2) build all of it is inlined (`nm -C` shows no weak symbol in
// the kernel objects), but at -O1 (the ASan and emulated-AVX-512 builds) predict_avx2.cpp and
// predict_avx512vnni.cpp both emit a weak std::vector<uint64_t>::_M_fill_assign.  Nothing in
// the build or the tests checks this rule.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sk {

enum class Isa : int { ref = 0, avx2 = 1, avx512 = 2, neon = 3 };

// Repacked sparse weights, in the kernels' internal form (built once at kernel creation).
// Group g covers rows [g*B, min(g*B+B, rows)); its blocks are [group_ptr[g], group_ptr[g+1]).
// values holds B floats per block (rows past `rows` in the last group are zero).
// x_offset[j] is the element offset into X of block j's reduction row (k * x_row_stride),
// so a kernel reads X + x_offset[j] + p.  Validated by the op before any kernel sees it.
struct SpMat {
  int B = 4;
  int rows = 0;
  int groups = 0;
  const int32_t* group_ptr = nullptr;  // [groups + 1]
  const int32_t* x_offset = nullptr;   // [nblocks]
  const float* values = nullptr;       // [nblocks * B]
};

// What happens at store time.  y = act(acc + bias[r] (+ residual)) or, with
// residual_after_act, y = act(acc + bias[r]) + residual.  act is a clamp to [lo, hi]
// (Relu: lo = 0, hi = +inf; none: -inf, +inf).
struct Epilogue {
  const float* bias = nullptr;      // [rows] or null
  const float* residual = nullptr;  // same layout as Y (row stride residual_stride) or null
  ptrdiff_t residual_stride = 0;
  bool residual_after_act = false;
  float lo = -__builtin_inff();
  float hi = __builtin_inff();
};

// Y[r, p] for rows of groups [g_begin, g_end) and pixels p in [0, n):
//   Y[r*y_stride + p] = epilogue( sum_j values[j*B + (r - g*B)] * X[x_offset[j] + p] )
// x, y and residual already point at the first pixel of this call's range.
using SpmmFn = void (*)(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                        float* y, ptrdiff_t y_stride, const Epilogue& ep);

// Depthwise 2-D convolution of one channel plane (dilation 1):
//   y[oy, ox] = act(bias + sum_{ky,kx} w[ky*k + kx] * x[oy*s - pad_t + ky, ox*s - pad_l + kx])
// with out-of-range input taken as zero.  Only bias/lo/hi of the epilogue are used.
struct DwShape {
  int H, W;          // input plane
  int OH, OW;        // output plane
  int k;             // kernel size (square)
  int stride;
  int pad_t, pad_l;
};
using DwConvFn = void (*)(const DwShape& s, const float* x, const float* w, float bias,
                          float lo, float hi, float* y);
// The same over `nch` consecutive planes of one shape: plane c reads x + c*H*W, weights
// w + c*k*k and bias[c] (bias not null), and writes y + c*OH*OW; the result equals calling
// DwConvFn plane by plane.  Kernels with dw_multi_lanes > 1 vectorise over that many channels
// for small planes (no per-plane fixed cost; a [padded plane][lanes] tile in L1) and go
// plane by plane for planes too large for their stack tile.
using DwMultiFn = void (*)(const DwShape& s, int nch, const float* x, const float* w,
                           const float* bias, float lo, float hi, float* y);

// ---- Channel-blocked (NCHWc) layout, docs/kernels.md ----------------------------------------
// One block size for every ISA, so a blocked tensor means the same thing on AVX2, AVX-512 and
// NEON (a converted model stays portable): a [C, H, W] image is stored [ceil(C/8)][H][W][8],
// channel c in block c/8, lane c%8.  Lanes past C exist in the last block; kernels treat them
// as ordinary channels (their weights and bias are zero, so they hold act(0)).
constexpr int kChannelBlock = 8;
// Depthwise convolution on channel blocks, output rows [oy_begin, oy_end) of `nblk`
// consecutive blocks: block b reads x + b*H*W*8, weights w + b*k*k*8 ([k*k][8], tap-major),
// bias + b*8 (not null), and writes y + b*OH*OW*8 (rows outside the range untouched):
//   y[b][oy][ox][l] = clamp(bias[b][l] + sum_{ky,kx} w[b][ky*k+kx][l] * x[b][iy][ix][l])
// with (iy, ix) = (oy*s - pad_t + ky, ox*s - pad_l + kx), out-of-range input taken as zero.
// Reads only the nblk*H*W*8 input floats; writes only the given rows.  Any k >= 1, stride >= 1.
using DwBlockedFn = void (*)(const DwShape& s, int nblk, const float* x, const float* w,
                             const float* bias, float lo, float hi, float* y, int oy_begin,
                             int oy_end);
// One channel block between layouts, pixels [0, n) (Reorder at a chain's edges):
//   to_blocked:   y[p*8 + l] = l < lanes ? x[l*plane + p] : 0      (lanes in 1..8)
//   from_blocked: y[l*plane + p] = x[p*8 + l] for l < lanes
// x / y: the block's first channel plane (plane: floats between channel planes) or its first
// pixel's block.  Reads and writes exactly those elements.
using ToBlockedFn = void (*)(const float* x, ptrdiff_t plane, int lanes, size_t n, float* y);
using FromBlockedFn = void (*)(const float* x, int lanes, size_t n, float* y, ptrdiff_t plane);

// 1x4 block-sparse pointwise conv on channel blocks (SparseConv with layout = "NCHWc8"):
// B = 4 weights; X is `x_blocks` blocks of n pixels ([n][8], block stride x_bstride floats),
// reduction index k being lane k%8 of block k/8; Y is output row r at lane r%8 of block r/8.
// A 4-row group fills half a Y block: group g writes lanes (g%2)*4 .. +3 of block g/2, so for
// groups g in [g_begin, g_end) (g_end <= 2*ceil(rows/8)) and pixels p in [0, n):
//   y[(g/2)*y_bstride + p*8 + (g%2)*4 + b] = epilogue(sum_j values[4j+b] * X(k_j, p))
// with x_offset[j] = k_j * panel_stride.  Groups past w.groups (the upper half of the last
// block when rows % 8 is 1..4) are empty, so every lane of every block written is defined
// (rows past `rows`: epilogue of 0).  ep.bias: null or 8*ceil(rows/8) floats, zero past rows;
// ep.residual: Y's layout with block stride ep.residual_stride.  panel: scratch of
// x_blocks*8*panel_stride floats (panel_stride a multiple of 8): the SIMD kernels transpose X
// into it, up to panel_stride pixels at a time; the reference reads X directly.
using SpmmBlockedFn = void (*)(size_t n, const SpMat& w, int g_begin, int g_end, const float* x,
                               ptrdiff_t x_bstride, int x_blocks, float* y, ptrdiff_t y_bstride,
                               const Epilogue& ep, float* panel, int panel_stride);
// The same product from a panel the caller filled (SparseConv with an NCHW input and an
// NCHWc8 output: im2col rows): X(k_j, p) = panel[x_offset[j] + p] for p in [0, n), and the
// SIMD kernels read each row up to n rounded to 8 (those floats must be readable, and finite
// or zero).  Y, ep and the groups as in SpmmBlockedFn.
using SpmmPanelBlockedFn = void (*)(size_t n, const SpMat& w, int g_begin, int g_end,
                                    const float* panel, float* y, ptrdiff_t y_bstride,
                                    const Epilogue& ep);

// A dense conv into channel blocks (SparseConv with an NCHWc8 output whose 1x4 blocks are all
// or nearly all kept: the stems, the dense 1x1 "bridges"), vectorised over output channels
// instead of pixels, so neither X nor Y is transposed.  values is [taps][m16] (a tap's output
// channels contiguous, zero past rows; m16 = rows rounded up to 16), tap t of pixel p reads
// x[x_offset[t] + p * x_pstride] (x_pstride 1: panel rows or phase planes; 8: an NCHWc8 X).
// For pixels p in [0, n) and every block b < ceil(rows/8), lane l < 8:
//   y[b*y_bstride + p*8 + l] = epilogue( sum_t values[t*m16 + 8b + l] * x[x_offset[t] + p*x_pstride] )
// ep.bias: null or m16 floats (zero past rows); ep.residual blocked like Y.  The SIMD kernels
// take x_pstride 1 or 8 only; the reference any.
struct DenseMat {
  int rows = 0;
  int taps = 0;
  const int32_t* x_offset = nullptr;  // [taps]
  const float* values = nullptr;      // [taps][m16]
};
constexpr int dense_m16(int rows) { return (rows + 15) / 16 * 16; }
using DenseBlockedFn = void (*)(size_t n, const DenseMat& w, const float* x, int x_pstride,
                                float* y, ptrdiff_t y_bstride, const Epilogue& ep);
// Bank-balanced matrix-vector product, the 1-row case (LSTM recurrence, decoding).
// Rows are interleaved in groups of L = KernelTable::spmv_lanes: lane l of group g is row
// g*L + l.  Every row keeps `keep` entries in each of the `nbanks` banks of `bank_size`
// consecutive reduction positions, so all lanes step through the same (bank, q) sequence:
//   values[((g*nbanks + b)*keep + q)*L + l], offs[same]  (offs: in-bank offset, < bank_size).
// Padding entries (ragged last bank, lanes past `rows`) hold value 0 and a valid offset.
// bank_size <= 256 (one-byte offsets); the SIMD kernels gather inside registers for banks of
// up to 16/32/64 (AVX2 8/16/32) floats and use a hardware gather beyond that.
struct BankMat {
  int rows = 0;
  int lanes = 0;
  int groups = 0;      // ceil(rows / lanes)
  int nbanks = 0;
  int bank_size = 0;   // 1..256
  int keep = 0;        // entries per bank per row, 0..bank_size
  const float* values = nullptr;
  const uint8_t* offs = nullptr;
};
// For rows of groups [g_begin, g_end):
//   y[r] = (init ? init[r] : 0) + sum_{b,q} values[..] * x[b*bank_size + offs[..]]
// x must be readable for nbanks*bank_size + 64 floats (the kernels load whole banks);
// positions past the matrix's K may hold anything finite.  y and init have `rows` entries.
using SpmvFn = void (*)(const BankMat& w, int g_begin, int g_end, const float* x,
                        const float* init, float* y);

// ---- ReLU-output prediction (SeerNet; docs/predict.md) ---------------------------------------
// A conv with taps T = kh*kw and C input channels; k runs over (tap, channel) with each tap's
// channels padded to C4 = C rounded up to 4 (K4 = T*C4).  Its weight in two forms: low-bit
// integers per output row m (wq = round(w / wq_scale[m]), |wq| <= wq_max <= 127) packed
// [ceil(M/8)][K4/4][8 rows][4 k] with zero padding, and fp32 [M][T][C].
// A pixel's taps are read as `runs` contiguous runs of the channels-last image: one per kernel
// row (run_len = kw*C floats, run_len4 = kw*C4 bytes) when the horizontal dilation is 1, else
// one per tap (C floats, C4 bytes).
struct PredictMat {
  int M = 0, C = 0, C4 = 0, taps = 0, K4 = 0;
  int runs = 0, run_len = 0, run_len4 = 0;
  const int8_t* wq = nullptr;          // packed as above
  const int32_t* wq_rowsum = nullptr;  // [M] sum over k of wq[m][k]
  const float* wq_scale = nullptr;     // [M]
  const float* w = nullptr;            // [M][taps][C] full precision
  const float* bias = nullptr;         // [M]
  float hi = __builtin_inff();         // activation: min(hi, max(0, v))
  // Steps of 4 k whose u8 x s8 pair sums (<= 2 * 127 * wq_max each) fit int16 together:
  // 32767 / (2 * 127 * wq_max), 1 for 8-bit weights, 18 for 4-bit (|wq| <= 7).
  int steps16 = 1;
  int margin = 0;  // prediction units added before the decision (recall over skipped work)
};

// One image in channels-last form, padded so that every tap lies inside: x is [Hp][Wp][C] fp32
// with the conv's top/left pads (and enough bottom/right) of zeros; xq the same pixels quantized
// to 7 bits, [Hp][Wp][C4], 0 in the padding channels and zx (the quantized 0) in the padding
// pixels:
//   xq = clamp(floor(x * inv + (zx + 0.5)), 0, 127) in float32 (the product rounded, then the
//   sum: no fused multiply-add), inv = 1 / sx (0 when sx = 0).
// Tap (ky, kx) of output pixel (oy, ox) is padded pixel (oy*sh + ky*dh, ox*sw + kx*dw).
struct PredictImage {
  const float* x = nullptr;
  const uint8_t* xq = nullptr;
  int Wp = 0, OW = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  float sx = 0.0f;
  int zx = 0;
};

// Quantizes n pixels of C channels: xq[p][c] for c < C4 as above (0 for c >= C).
using QuantizeFn = void (*)(const float* x, size_t n, int C, int C4, float sx, int zx,
                            uint8_t* xq);

// For output pixels [p0, p0 + n) (n <= 64), output (m, p) is predicted as
//   fma(float(sum_k wq[m][k] * xq_p[k] - zx * wq_rowsum[m] + margin), sx * wq_scale[m], bias[m])
// (xq_p: pixel p's taps, each C4 bytes) and y[m * y_stride + p - p0] = min(hi, max(0, w[m]·x_p +
// bias[m])) where that is > 0, else 0.  scratch: n * K4 bytes.  Returns how many outputs were
// computed in full precision.  The prediction is exact integer arithmetic then one fma, so every
// ISA makes the same decisions.
using PredictFn = int64_t (*)(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                              uint8_t* scratch, float* y, ptrdiff_t y_stride);

// With a MaxPool after the activation (docs/predict.md) the op needs every output's units and
// full precision at chosen outputs:
// u[m * u_stride + p - p0] = sum_k wq[m][k] * xq_p[k] - zx * wq_rowsum[m] (no margin) for
// p in [p0, p0 + n), n <= 64; scratch: n * K4 bytes.
using PredictUnitsFn = void (*)(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                                uint8_t* scratch, int32_t* u, ptrdiff_t u_stride);
// out[i] = min(hi, max(0, w[m]·x_p + bias[m])) for p = pix[i], i < cnt.
using PredictExactFn = void (*)(const PredictMat& w, const PredictImage& img, int m,
                                const int64_t* pix, int cnt, float* out);

// Each ISA fills its table field by field, by name, in a constexpr function (C++17 has no
// designated initialisers), so the tables are still constant-initialised.  The native test
// driver checks every table with table_complete(): a field added here and forgotten in one
// ISA's file fails there, not as a null call.  (Not a static_assert: GCC does not fold
// `&external_function != nullptr` under -fsanitize=undefined, which the test builds use.)
struct KernelTable {
  Isa isa;
  const char* name;   // "ref", "avx2", ...
  int tile_pixels;    // pixels per register tile of the B=4 kernel (work-splitting hint)
  SpmmFn spmm_b1;     // B == 1
  SpmmFn spmm_b4;     // B == 4
  DwConvFn dwconv;    // any k, stride (the SIMD ones specialise 3x3/5x5, stride 1/2)
  int spmv_lanes;     // rows interleaved per group in BankMat (ref 8, avx2 8, avx512 16, neon 4)
  SpmvFn spmv_bank;   // bank-balanced matrix-vector product
  DwMultiFn dwconv_multi;  // several planes per call (see DwMultiFn)
  int dw_multi_lanes;      // channels per vector in dwconv_multi (1: plane by plane)
  int b1_tile_pixels;      // pixels per register tile of the B=1 kernel
  QuantizeFn predict_quantize;  // 7-bit activations for predict
  PredictFn predict;       // ReLU-output prediction + full precision where predicted positive
  PredictUnitsFn predict_units;  // the prediction alone (MaxPool chains)
  PredictExactFn predict_exact;  // full precision at given outputs (MaxPool chains)
  DwBlockedFn dwconv_blocked;    // depthwise on kChannelBlock-channel blocks (NCHWc)
  ToBlockedFn to_blocked;        // NCHW planes -> one channel block
  FromBlockedFn from_blocked;    // one channel block -> NCHW planes
  SpmmBlockedFn spmm_b4_blocked; // 1x4 SpMM on channel blocks (SparseConv layout NCHWc8)
  SpmmPanelBlockedFn spmm_b4_panel_blocked;  // from a filled panel to channel blocks
  DenseBlockedFn dense_blocked;  // a dense conv into channel blocks, no transposes
};

// Every name, size and function of `t` set.
constexpr bool table_complete(const KernelTable& t) {
  return t.name != nullptr && t.tile_pixels > 0 && t.spmm_b1 != nullptr &&
         t.spmm_b4 != nullptr && t.dwconv != nullptr && t.spmv_lanes > 0 &&
         t.spmv_bank != nullptr && t.dwconv_multi != nullptr && t.dw_multi_lanes > 0 &&
         t.b1_tile_pixels > 0 && t.predict_quantize != nullptr && t.predict != nullptr &&
         t.predict_units != nullptr && t.predict_exact != nullptr &&
         t.dwconv_blocked != nullptr && t.to_blocked != nullptr && t.from_blocked != nullptr &&
         t.spmm_b4_blocked != nullptr && t.spmm_b4_panel_blocked != nullptr &&
         t.dense_blocked != nullptr;
}

// Per-ISA tables; null when that ISA was not compiled in or the CPU lacks it.
const KernelTable* kernels_ref();
const KernelTable* kernels_avx2();
const KernelTable* kernels_avx512();
const KernelTable* kernels_neon();
// The prediction kernels (predict_ref.cpp, predict_avx2.cpp, ...), shared by several tables.
void predict_quantize_ref(const float* x, size_t n, int C, int C4, float sx, int zx,
                          uint8_t* xq);
int64_t predict_ref(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                    uint8_t* scratch, float* y, ptrdiff_t y_stride);
void predict_units_ref(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                       uint8_t* scratch, int32_t* u, ptrdiff_t u_stride);
void predict_exact_ref(const PredictMat& w, const PredictImage& img, int m, const int64_t* pix,
                       int cnt, float* out);
#if defined(SK_HAVE_X86)
void predict_quantize_avx2(const float* x, size_t n, int C, int C4, float sx, int zx,
                           uint8_t* xq);
int64_t predict_avx2(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                     uint8_t* scratch, float* y, ptrdiff_t y_stride);
void predict_units_avx2(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                        uint8_t* scratch, int32_t* u, ptrdiff_t u_stride);
void predict_exact_avx2(const PredictMat& w, const PredictImage& img, int m, const int64_t* pix,
                        int cnt, float* out);
// predict_avx512vnni.cpp: the avx512 table's prediction when the CPU has AVX-512 VNNI.
int64_t predict_avx512vnni(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                           uint8_t* scratch, float* y, ptrdiff_t y_stride);
void predict_units_avx512vnni(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                              uint8_t* scratch, int32_t* u, ptrdiff_t u_stride);
// Whether the CPU has AVX-512 VNNI (vpdpbusd); true in the emulated test build.
bool cpu_has_avx512vnni();
#endif
#if defined(SK_HAVE_NEON)
// predict_neon.cpp: sdot prediction where the CPU has the dot product, else predict_ref.
void predict_quantize_neon(const float* x, size_t n, int C, int C4, float sx, int zx,
                           uint8_t* xq);
int64_t predict_neon(const PredictMat& w, const PredictImage& img, int64_t p0, int n,
                     uint8_t* scratch, float* y, ptrdiff_t y_stride);
#endif

// The table for `isa`, or null if unavailable on this build/CPU.
const KernelTable* kernels_for(Isa isa);
// Best available table, or the one named by SPARSEKIT_ISA (ref|avx2|avx512|neon).
// On an unknown or unavailable name, returns null and sets *error to a message.
const KernelTable* select_kernels(const char** error);
bool cpu_has(Isa isa);
const char* isa_name(Isa isa);

}  // namespace sk
