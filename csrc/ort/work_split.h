// How the ops split an image's pixels into parallel work items, and which panel stride the
// blocked 1x1 SparseConv reads a work item through.  Plain functions of the kernel table and
// the shapes, header-only so the benchmark bindings (csrc/bindings.cpp) report the op's own
// choices instead of a copy of them.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/kernels.h"

namespace skort {

// Work splitting (design.md §4): large images are split by pixel tiles, small ones (at most
// kSmallPixels) by output-channel group chunks.
constexpr int64_t kSmallPixels = 196;

// Tile width for the direct paths, whose X has K reduction rows.
inline int64_t pixel_tile(const sk::KernelTable* kt, int64_t K) {
  const int64_t tp = std::max(1, kt->tile_pixels);
  // X's K x T block (128 KiB at most) stays in L2 while every output group sweeps it; with few
  // input channels, wider tiles give the prefetchers longer rows.  Zen3, X and Y in L3/DRAM:
  // K = 32 (MobileNetV1's first 1x1 layer) 0.25 -> 0.17 ms going from 240 to 960 pixels;
  // K >= 128 unchanged.
  const int64_t by_k = (32 << 10) / std::max<int64_t>(1, K);  // 128 KiB of X
  const int64_t want = std::min<int64_t>(960, std::max<int64_t>(240, by_k));
  return std::max<int64_t>(tp, want / tp * tp);
}

// P pixels split into n parallel items of whole register tiles (tp pixels; the last item
// takes the remainder), the register tiles spread evenly: widths differ by at most one tile
// and are at most max_width.  n is at least ceil(P / max_width), at least 4 where P allows,
// and even, for 2- and 4-thread pools (784 px, tile 24: 192 192 192 208, not 216 216 216 136).
struct PixelSplit {
  int64_t P, tp, n;
  int64_t begin(int64_t i) const {
    const int64_t tiles = (P + tp - 1) / tp;
    return std::min(P, tiles * i / n * tp);
  }
  int64_t len(int64_t i) const { return begin(i + 1) - begin(i); }
  int64_t widest() const {
    int64_t w = 0;
    for (int64_t i = 0; i < n; ++i) w = std::max(w, len(i));
    return w;
  }
};
inline PixelSplit split_pixels(int64_t P, int64_t max_width, const sk::KernelTable* kt) {
  const int64_t tp = std::max(1, kt->tile_pixels);
  const int64_t tiles = (P + tp - 1) / tp, per = std::max<int64_t>(1, max_width / tp);
  int64_t n = (tiles + per - 1) / per;
  n = std::max(n, std::min<int64_t>(4, P / tp));
  if (n > 1) n += n & 1;
  // each item gets floor or ceil(tiles / n) tiles; an even n may not push that past max_width
  while (n > 1 && (tiles + n - 1) / n > per) ++n;
  return PixelSplit{P, tp, std::max<int64_t>(1, std::min(n, tiles))};
}

// ---- the blocked 1x1 SparseConv's panel (docs/kernels.md) ----------------------------------
// Panel chunk of a work item that fits: X's K8 rows x up to this many pixels in about 64 KiB,
// between 64 and ~960 pixels, an odd multiple of 16 floats so the panel's rows (ps floats
// apart) spread over the L1 sets.  Every chunk is one more pass over all the weights, so an
// item this narrow (MobileNetV1's 49-pixel layers, 196x64 -> 384) runs as one chunk.
inline int blocked_whole_stride(int64_t K8) {
  const int64_t by_k = (int64_t(16) << 10) / std::max<int64_t>(1, K8);
  const int64_t ps = std::max<int64_t>(64, std::min<int64_t>(960, by_k));
  return int((ps / 16 | 1) * 16);
}
// Wider items go in narrow chunks that stay in L1 while every group sweeps them: 48 pixels,
// 32 from 144 input channels on (a 144 x 32 panel is 18 KiB).  On the Xeon (avx512, one work
// item of each MobileNet and ResNet-50 1x1 layer, benchmarks/bench_panel_stride.py) that made
// the projections and the square layers 1.0-1.7x faster (3136x144x24's 240-pixel items 1.58x
// and 1.65x in two runs); expansions (M >= 4 K) keep the one-chunk stride, where narrow
// chunks were no faster (3136x24x144 0.93x): their stores bound them.
inline int blocked_narrow_stride(int64_t K8, int64_t M) {
  if (M >= 4 * K8) return blocked_whole_stride(K8);
  return K8 >= 144 ? 32 : 48;
}
// The blocked SparseConv's split of a P-pixel image: pixel items for large images, else
// output-block items that each hold every pixel.
inline bool blocked_pixel_split(const sk::KernelTable* kt, int64_t P) {
  return P > kSmallPixels || P >= 4 * kt->tile_pixels;
}
// The widest work item of that split (C input channels): an item that fits one 64 KiB panel
// runs as one chunk, a wider one through blocked_narrow_stride.
inline int64_t blocked_widest_item(const sk::KernelTable* kt, int64_t P, int64_t C) {
  return blocked_pixel_split(kt, P) ? split_pixels(P, pixel_tile(kt, C), kt).widest() : P;
}
// The panel stride for a P-pixel image of C input and M output channels.
inline int blocked_panel_stride(const sk::KernelTable* kt, int64_t P, int64_t C, int64_t M) {
  const int64_t K8 = (C + sk::kChannelBlock - 1) / sk::kChannelBlock * sk::kChannelBlock;
  const int whole = blocked_whole_stride(K8);
  return blocked_widest_item(kt, P, C) <= whole ? whole : blocked_narrow_stride(K8, M);
}

}  // namespace skort
