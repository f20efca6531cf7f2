// Native kernel tests: every ISA table available on this CPU/build (ref included) against an
// independent dense double-precision reference, over shapes, remainders, sparsities and
// epilogues.  Buffers are allocated at their exact sizes (run under ASan by run_asan.sh) and
// the outputs carry guard values that a kernel must leave alone.
//
// Usage: sk_kernel_tests [-v] [--isa NAME]   closing line: "N passed, N failed"; exit 1 on any
// failure.  --isa tests only that table (the emulated AVX-512 build runs only its own).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "kernels/kernels.h"

namespace {

using sk::DwShape;
using sk::Epilogue;
using sk::KernelTable;
using sk::SpMat;

int g_passed = 0, g_failed = 0, g_reported = 0;
bool g_verbose = false;

uint64_t g_rng = 0x9E3779B97F4A7C15ull;
uint64_t next_u64() {  // splitmix64
  uint64_t z = (g_rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
double uniform() { return (next_u64() >> 11) * (1.0 / 9007199254740992.0); }
float randf() { return static_cast<float>(uniform() * 2.0 - 1.0); }
int randint(int lo, int hi) { return lo + static_cast<int>(next_u64() % (uint64_t)(hi - lo + 1)); }

const float kGuard = 12345.678f;

// An exactly-sized heap array, so ASan sees any read or write past either end.
struct Buf {
  std::unique_ptr<float[]> p;
  size_t n = 0;
  explicit Buf(size_t count) : p(new float[count ? count : 1]), n(count) {}
  float* data() { return p.get(); }
  float& operator[](size_t i) { return p[i]; }
};

void record(bool ok, const std::string& what) {
  if (ok) {
    ++g_passed;
    if (g_verbose) std::printf("PASS %s\n", what.c_str());
  } else {
    ++g_failed;
    if (g_reported++ < 30) std::printf("FAIL %s\n", what.c_str());
  }
}

// ------------------------------------------------------------------------------- SpMM --
struct SparseCase {
  int B, rows, K, groups;
  std::vector<int32_t> group_ptr, kidx, x_offset;
  std::vector<float> values;
  std::vector<float> dense;  // [rows, K]
};

// Random B-row-block sparse matrix; `empty_every` > 0 forces every such group empty.
SparseCase make_sparse(int B, int rows, int K, double sparsity, int empty_every) {
  SparseCase c;
  c.B = B;
  c.rows = rows;
  c.K = K;
  c.groups = (rows + B - 1) / B;
  c.dense.assign(static_cast<size_t>(rows) * K, 0.0f);
  c.group_ptr.push_back(0);
  for (int g = 0; g < c.groups; ++g) {
    const bool empty = empty_every > 0 && g % empty_every == empty_every - 1;
    for (int k = 0; k < K && !empty; ++k) {
      if (uniform() < sparsity) continue;
      c.kidx.push_back(k);
      for (int b = 0; b < B; ++b) {
        const int r = g * B + b;
        const float v = r < rows ? randf() : 0.0f;  // rows past `rows` hold zeros
        c.values.push_back(v);
        if (r < rows) c.dense[static_cast<size_t>(r) * K + k] = v;
      }
    }
    c.group_ptr.push_back(static_cast<int32_t>(c.kidx.size()));
  }
  return c;
}

struct EpiCase {
  const char* name;
  bool bias, residual, after;
  float lo, hi;
};

const EpiCase kEpis[] = {
    {"none", false, false, false, -INFINITY, INFINITY},
    {"bias", true, false, false, -INFINITY, INFINITY},
    {"bias+relu", true, false, false, 0.0f, INFINITY},
    {"relu", false, false, false, 0.0f, INFINITY},
    {"bias+clip6", true, false, false, 0.0f, 6.0f},
    {"clip[-.3,.4]", false, false, false, -0.3f, 0.4f},
    {"bias+res+relu", true, true, false, 0.0f, INFINITY},
    {"res", false, true, false, -INFINITY, INFINITY},
    {"bias+relu+res_after", true, true, true, 0.0f, INFINITY},
    {"clip[-.5,.5]+res_after", false, true, true, -0.5f, 0.5f},
};
constexpr int kNumEpis = sizeof(kEpis) / sizeof(kEpis[0]);

// The kernels' Epilogue for EpiCase e: bias and residual (row/block stride rs) from the buffers.
Epilogue epilogue_of(const EpiCase& e, Buf& bias, Buf& res, ptrdiff_t rs) {
  Epilogue ep;
  ep.bias = e.bias ? bias.data() : nullptr;
  ep.residual = e.residual ? res.data() : nullptr;
  ep.residual_stride = rs;
  ep.residual_after_act = e.after;
  ep.lo = e.lo;
  ep.hi = e.hi;
  return ep;
}

float clampf(double v, float lo, float hi) {
  float f = static_cast<float>(v);
  f = f < lo ? lo : f;
  return f > hi ? hi : f;
}

// Runs one table's kernel on the case, optionally split into group and pixel ranges the way
// the op splits work across threads, and checks every output and every guard.
void check_spmm(const KernelTable& t, const SparseCase& c, int n, const EpiCase& e,
                bool split, const std::string& tag) {
  const int K = c.K, rows = c.rows;
  const ptrdiff_t ys = n + 3;                // gap columns hold guards
  const ptrdiff_t rs = n + 1;                // residual row stride differs from Y's
  const int yrows = c.groups * c.B + 2;      // rows past `rows` hold guards
  Buf x(static_cast<size_t>(K) * n);
  for (size_t i = 0; i < x.n; ++i) x[i] = randf();
  Buf bias(rows), res(static_cast<size_t>(rows) * rs);
  for (int r = 0; r < rows; ++r) bias[r] = randf();
  for (size_t i = 0; i < res.n; ++i) res[i] = randf();
  Buf y(static_cast<size_t>(yrows) * ys);
  for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;

  std::vector<int32_t> xoff(c.kidx.size());
  for (size_t j = 0; j < xoff.size(); ++j) xoff[j] = c.kidx[j] * n;
  SpMat w;
  w.B = c.B;
  w.rows = rows;
  w.groups = c.groups;
  w.group_ptr = c.group_ptr.data();
  w.x_offset = xoff.data();
  w.values = c.values.data();
  const Epilogue ep = epilogue_of(e, bias, res, rs);
  sk::SpmmFn fn = c.B == 4 ? t.spmm_b4 : t.spmm_b1;

  if (!split) {
    fn(static_cast<size_t>(n), w, 0, c.groups, x.data(), y.data(), ys, ep);
  } else {  // two group ranges x two pixel ranges, pointers advanced to the range start
    const int gm = c.groups / 2;
    const int pm = n / 2 > 0 ? randint(1, n - 1 > 0 ? n - 1 : 1) : 0;
    const int gr[3] = {0, gm, c.groups};
    const int pr[3] = {0, pm, n};
    for (int gi = 0; gi < 2; ++gi)
      for (int pi = 0; pi < 2; ++pi) {
        if (pr[pi + 1] <= pr[pi] || gr[gi + 1] <= gr[gi]) continue;
        Epilogue e2 = ep;
        if (e2.residual) e2.residual += pr[pi];
        fn(static_cast<size_t>(pr[pi + 1] - pr[pi]), w, gr[gi], gr[gi + 1], x.data() + pr[pi],
           y.data() + pr[pi], ys, e2);
      }
  }

  int bad = 0;
  double worst = 0.0;
  char where[160] = "";
  for (int r = 0; r < yrows; ++r) {
    for (ptrdiff_t p = 0; p < ys; ++p) {
      const float got = y[r * ys + p];
      if (r >= rows || p >= n) {
        if (std::memcmp(&got, &kGuard, sizeof got) != 0) {
          if (!bad++)
            std::snprintf(where, sizeof where, "guard overwritten at row %d px %td", r, p);
        }
        continue;
      }
      double acc = 0.0, scale = 0.0;
      for (int k = 0; k < K; ++k) {
        const double term = static_cast<double>(c.dense[static_cast<size_t>(r) * K + k]) *
                            x[static_cast<size_t>(k) * n + p];
        acc += term;
        scale += std::fabs(term);
      }
      const double rv = e.residual ? res[r * rs + p] : 0.0;
      if (e.bias) {
        acc += bias[r];
        scale += std::fabs(bias[r]);
      }
      if (e.residual && !e.after) acc += rv;
      double want = clampf(acc, e.lo, e.hi);
      if (e.residual && e.after) want += rv;
      scale += std::fabs(rv) + std::fabs(want);
      const double err = std::fabs(got - want);
      const double tol = 1e-5 * scale + 1e-30;
      if (!(err <= tol)) {
        if (!bad++)
          std::snprintf(where, sizeof where, "row %d px %td: got %.9g want %.9g (tol %.3g)", r,
                        p, got, want, tol);
      }
      if (scale > 0 && err / scale > worst) worst = err / scale;
    }
  }
  char msg[512];
  std::snprintf(msg, sizeof msg, "%s spmm_b%d %s n=%d rows=%d K=%d nnzb=%zu epi=%s%s: %s",
                t.name, c.B, tag.c_str(), n, rows, K, c.kidx.size(), e.name,
                split ? " split" : "", bad ? where : "ok");
  record(bad == 0, msg);
}

void spmm_suite(const KernelTable& t) {
  const double sparsities[] = {0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0};
  int ei = 0, si = 0;
  // Every pixel count 1..80 (all remainders mod 8/16/24/32/48/64), both B.
  for (int B : {1, 4}) {
    for (int n = 1; n <= 80; ++n) {
      const int rows = (B == 4 ? 4 : 1) * randint(1, 3) + randint(0, 3);  // often not % 4
      const int K = randint(1, 40);
      const SparseCase c = make_sparse(B, rows, K, sparsities[si++ % 8], n % 7 == 3 ? 2 : 0);
      check_spmm(t, c, n, kEpis[ei++ % kNumEpis], n % 5 == 0, "sweep");
    }
  }
  // Every epilogue x a spread of shapes/sparsities, incl. large n (pixel chunking).
  const int ns[] = {1, 7, 8, 9, 23, 24, 25, 47, 49, 63, 97, 196, 241, 500};
  const int rowss[] = {1, 3, 4, 5, 8, 13, 30};
  for (int B : {1, 4})
    for (int e = 0; e < kNumEpis; ++e)
      for (int n : ns) {
        const int rows = rowss[randint(0, 6)];
        const int K = randint(1, n > 200 ? 70 : 150);
        const SparseCase c = make_sparse(B, rows, K, sparsities[si++ % 8], 0);
        check_spmm(t, c, n, kEpis[e], (n + e) % 3 == 0, "epi");
      }
  // Groups with zero blocks, fully empty matrices, dense matrices, wide reductions.
  for (int B : {1, 4}) {
    for (int n : {5, 24, 33, 80}) {
      check_spmm(t, make_sparse(B, 17, 30, 0.5, 3), n, kEpis[6], false, "empty-groups");
      check_spmm(t, make_sparse(B, 9, 30, 1.0, 0), n, kEpis[8], false, "all-empty");
      check_spmm(t, make_sparse(B, 6, 64, 0.0, 0), n, kEpis[4], true, "dense");
    }
    check_spmm(t, make_sparse(B, 12, 1024, 0.9, 0), 49, kEpis[2], false, "K1024");
    check_spmm(t, make_sparse(B, 4, 300, 0.7, 0), 300, kEpis[1], true, "K300");
    // one pixel (B = 4: its own path), a classifier's shape, empty and dense groups
    check_spmm(t, make_sparse(B, 1000, 1280, 0.85, 0), 1, kEpis[1], true, "one-pixel");
    check_spmm(t, make_sparse(B, 17, 30, 0.5, 3), 1, kEpis[9], false, "one-pixel");
    check_spmm(t, make_sparse(B, 6, 64, 0.0, 0), 1, kEpis[7], true, "one-pixel");
  }
}

// --------------------------------------------------------------------------- DwConv --
void check_dw(const KernelTable& t, int H, int W, int k, int S, int pt, int pl, int pb, int pr,
              bool bias_on, float lo, float hi) {
  const int OH = (H + pt + pb - k) / S + 1, OW = (W + pl + pr - k) / S + 1;
  if (H + pt + pb < k || W + pl + pr < k || OH <= 0 || OW <= 0) return;
  Buf x(static_cast<size_t>(H) * W), w(static_cast<size_t>(k) * k);
  Buf y(static_cast<size_t>(OH) * OW + 8);
  for (size_t i = 0; i < x.n; ++i) x[i] = randf();
  for (size_t i = 0; i < w.n; ++i) w[i] = randf();
  for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;
  const float bias = bias_on ? randf() : 0.0f;
  DwShape s{H, W, OH, OW, k, S, pt, pl};
  t.dwconv(s, x.data(), w.data(), bias, lo, hi, y.data());
  int bad = 0;
  char where[160] = "";
  for (int oy = 0; oy < OH; ++oy)
    for (int ox = 0; ox < OW; ++ox) {
      double acc = bias, scale = std::fabs(bias);
      for (int ky = 0; ky < k; ++ky)
        for (int kx = 0; kx < k; ++kx) {
          const int iy = oy * S - pt + ky, ix = ox * S - pl + kx;
          if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
          const double term = static_cast<double>(w[ky * k + kx]) * x[iy * W + ix];
          acc += term;
          scale += std::fabs(term);
        }
      const double want = clampf(acc, lo, hi);
      const float got = y[oy * OW + ox];
      if (!(std::fabs(got - want) <= 1e-5 * (scale + std::fabs(want)) + 1e-30) && !bad++)
        std::snprintf(where, sizeof where, "(%d,%d): got %.9g want %.9g", oy, ox, got, want);
    }
  for (size_t i = static_cast<size_t>(OH) * OW; i < y.n; ++i)
    if (std::memcmp(&y[i], &kGuard, sizeof(float)) != 0 && !bad++)
      std::snprintf(where, sizeof where, "guard after the output overwritten");
  char msg[400];
  std::snprintf(msg, sizeof msg, "%s dwconv %dx%d k=%d s=%d pads=%d,%d,%d,%d -> %dx%d: %s",
                t.name, H, W, k, S, pt, pl, pb, pr, OH, OW, bad ? where : "ok");
  record(bad == 0, msg);
}

void dw_suite(const KernelTable& t) {
  const int sizes[][2] = {{1, 1}, {2, 3}, {3, 2}, {1, 9}, {5, 5}, {7, 7},  {8, 8},
                          {9, 9}, {6, 17}, {13, 16}, {15, 23}, {4, 33}, {11, 40}};
  int i = 0;
  for (int k : {1, 2, 3, 4, 5, 7})
    for (int S : {1, 2, 3})
      for (int p = 0; p <= 2; ++p)
        for (const auto& hw : sizes) {
          // pads: top/left from p, bottom/right varied; epilogue varied.
          const int pb = (p + i) % 3, pr = (p + 2 * i) % 3, pl = (i % 2) ? p : (p + 1) % 3;
          const float lo = (i % 3 == 1) ? 0.0f : -INFINITY;
          const float hi = (i % 4 == 2) ? 0.5f : INFINITY;
          check_dw(t, hw[0], hw[1], k, S, p, pl, pb, pr, i % 2 == 0, lo, hi);
          ++i;
        }
  // MobileNet-like planes: 3x3 / 5x5, stride 1 ("same") and 2.
  for (int k : {3, 5}) {
    const int p = k / 2;
    check_dw(t, 112, 112, k, 1, p, p, p, p, true, 0.0f, 6.0f);
    check_dw(t, 112, 112, k, 2, p - 1 < 0 ? 0 : p - 1, p - 1 < 0 ? 0 : p - 1, p, p, true, 0.0f,
             INFINITY);
    check_dw(t, 56, 56, k, 2, p, p, p, p, true, 0.0f, 6.0f);
    check_dw(t, 28, 28, k, 1, p, p, p, p, false, -INFINITY, INFINITY);
    check_dw(t, 14, 14, k, 1, p, p, p, p, true, 0.0f, 6.0f);
    check_dw(t, 14, 14, k, 2, p, p, p, p, true, 0.0f, 6.0f);
    check_dw(t, 7, 7, k, 1, p, p, p, p, true, 0.0f, 6.0f);
    check_dw(t, 30, 57, k, 2, 0, 0, 1, 1, true, 0.0f, 6.0f);
  }
  // Planes whose rows only fit the kernels' stack buffer a few at a time (a ring of rows that
  // wraps around, R < H), and rows too wide for it (read in place then).
  for (int k : {3, 5})
    for (int S : {1, 2})
      for (int p : {0, 1, 2}) {
        check_dw(t, 37, 1531, k, S, p, p, p, (p + 1) % 3, true, 0.0f, 6.0f);
        check_dw(t, 20, 3001 + p, k, S, p, 2 - p, p, p, false, -INFINITY, INFINITY);
      }
  for (int k : {3, 5, 4})
    for (int S : {1, 2})
      for (int p : {0, 1, 2})
        check_dw(t, 4, 2500 + 3 * p + k, k, S, p, p, 2 - p, p, true, 0.0f, 6.0f);
  check_dw(t, 3, 9001, 3, 1, 1, 1, 1, 1, true, -INFINITY, INFINITY);
  // Kernels larger than any specialisation.
  check_dw(t, 40, 37, 33, 1, 2, 1, 2, 3, true, -INFINITY, INFINITY);
  check_dw(t, 35, 36, 32, 2, 0, 1, 0, 0, true, 0.0f, INFINITY);
  check_dw(t, 9, 70, 9, 2, 4, 4, 4, 4, true, 0.0f, INFINITY);
}

// dwconv_multi over nch planes (channel groups of the table's lanes plus a ragged one) against
// a double reference, with a guard after the last plane.
void check_dw_multi(const KernelTable& t, int nch, int H, int W, int k, int S, int pt, int pl,
                    int pb, int pr, float lo, float hi) {
  const int OH = (H + pt + pb - k) / S + 1, OW = (W + pl + pr - k) / S + 1;
  if (H + pt + pb < k || W + pl + pr < k || OH <= 0 || OW <= 0) return;
  const size_t plane = static_cast<size_t>(H) * W, oplane = static_cast<size_t>(OH) * OW;
  Buf x(plane * nch), w(static_cast<size_t>(k) * k * nch), b(nch), y(oplane * nch + 8);
  for (size_t i = 0; i < x.n; ++i) x[i] = randf();
  for (size_t i = 0; i < w.n; ++i) w[i] = randf();
  for (size_t i = 0; i < b.n; ++i) b[i] = randf();
  for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;
  DwShape s{H, W, OH, OW, k, S, pt, pl};
  t.dwconv_multi(s, nch, x.data(), w.data(), b.data(), lo, hi, y.data());
  int bad = 0;
  char where[160] = "";
  for (int c = 0; c < nch; ++c)
    for (int oy = 0; oy < OH; ++oy)
      for (int ox = 0; ox < OW; ++ox) {
        double acc = b[c], scale = std::fabs(b[c]);
        for (int ky = 0; ky < k; ++ky)
          for (int kx = 0; kx < k; ++kx) {
            const int iy = oy * S - pt + ky, ix = ox * S - pl + kx;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            const double term = static_cast<double>(w[c * k * k + ky * k + kx]) *
                                x[c * plane + iy * W + ix];
            acc += term;
            scale += std::fabs(term);
          }
        const double want = clampf(acc, lo, hi);
        const float got = y[c * oplane + oy * OW + ox];
        if (!(std::fabs(got - want) <= 1e-5 * (scale + std::fabs(want)) + 1e-30) && !bad++)
          std::snprintf(where, sizeof where, "c=%d (%d,%d): got %.9g want %.9g", c, oy, ox, got,
                        want);
      }
  for (size_t i = oplane * nch; i < y.n; ++i)
    if (std::memcmp(&y[i], &kGuard, sizeof(float)) != 0 && !bad++)
      std::snprintf(where, sizeof where, "guard after the output overwritten");
  char msg[400];
  std::snprintf(msg, sizeof msg, "%s dwconv_multi C=%d %dx%d k=%d s=%d pads=%d,%d,%d,%d: %s",
                t.name, nch, H, W, k, S, pt, pl, pb, pr, bad ? where : "ok");
  record(bad == 0, msg);
}

void dw_multi_suite(const KernelTable& t) {
  const int sizes[][2] = {{1, 1}, {2, 3}, {5, 5}, {7, 7}, {8, 8}, {13, 16},
                          {14, 14}, {17, 9}, {28, 28}, {31, 33}, {40, 40}};
  int i = 0;
  for (int nch : {1, 5, 16, 17, 40})
    for (int k : {1, 3, 5, 7, 8})
      for (int S : {1, 2, 3})
        for (const auto& hw : sizes) {
          const int p = i % 3, pb = (i / 3) % 3, pl = (i + 1) % 3, pr = (i / 2) % 3;
          const float lo = (i % 3 == 1) ? 0.0f : -INFINITY;
          const float hi = (i % 4 == 2) ? 0.5f : INFINITY;
          check_dw_multi(t, nch, hw[0], hw[1], k, S, p, pl, pb, pr, lo, hi);
          ++i;
        }
  // MobileNet small planes.
  check_dw_multi(t, 64, 7, 7, 3, 1, 1, 1, 1, 1, 0.0f, 6.0f);
  check_dw_multi(t, 48, 14, 14, 3, 2, 0, 0, 1, 1, 0.0f, 6.0f);
  check_dw_multi(t, 33, 14, 14, 3, 2, 1, 1, 1, 1, 0.0f, 6.0f);
  check_dw_multi(t, 20, 56, 56, 3, 1, 1, 1, 1, 1, 0.0f, 6.0f);
}

// ------------------------------------------------------------ channel-blocked depthwise --
// dwconv_blocked on C channels stored as ceil(C/8) blocks [H][W][8] against the double
// reference.  The padding lanes of the last block get zero weights and bias (as the ops pack
// them) and must come out as clamp(0).  The output rows are computed in `parts` row ranges
// (thread splits); a first call over a middle range must leave every other row's guard alone.
void check_dw_blocked(const KernelTable& t, int C, int H, int W, int k, int S, int pt, int pl,
                      int pb, int pr, float lo, float hi, int parts) {
  const int OH = (H + pt + pb - k) / S + 1, OW = (W + pl + pr - k) / S + 1;
  if (H + pt + pb < k || W + pl + pr < k || OH <= 0 || OW <= 0) return;
  constexpr int L = sk::kChannelBlock;
  const int nblk = (C + L - 1) / L;
  const size_t plane = static_cast<size_t>(H) * W, oplane = static_cast<size_t>(OH) * OW;
  const size_t kk = static_cast<size_t>(k) * k;
  Buf x(plane * nblk * L), w(kk * nblk * L), b(static_cast<size_t>(nblk) * L);
  Buf y(oplane * nblk * L + 16);
  std::vector<float> xc(plane * C), wc(kk * C), bc(C);
  for (auto& v : xc) v = randf();
  for (auto& v : wc) v = randf();
  for (auto& v : bc) v = randf();
  for (size_t i = 0; i < x.n; ++i) x[i] = randf();  // padding lanes: anything finite
  for (size_t i = 0; i < w.n; ++i) w[i] = 0.0f;
  for (size_t i = 0; i < b.n; ++i) b[i] = 0.0f;
  for (int c = 0; c < C; ++c) {
    const size_t blk = c / L, l = c % L;
    b[blk * L + l] = bc[c];
    for (size_t i = 0; i < kk; ++i) w[(blk * kk + i) * L + l] = wc[c * kk + i];
    for (size_t p = 0; p < plane; ++p) x[(blk * plane + p) * L + l] = xc[c * plane + p];
  }
  for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;
  DwShape s{H, W, OH, OW, k, S, pt, pl};
  int bad = 0;
  char where[160] = "";
  // A middle range alone first: rows outside it keep their guards.
  const int m0 = OH / 3, m1 = OH - OH / 3;
  t.dwconv_blocked(s, nblk, x.data(), w.data(), b.data(), lo, hi, y.data(), m0, m1);
  for (int blk = 0; blk < nblk && !bad; ++blk)
    for (int oy = 0; oy < OH; ++oy) {
      if (oy >= m0 && oy < m1) continue;
      for (size_t i = 0; i < static_cast<size_t>(OW) * L; ++i)
        if (std::memcmp(&y[(blk * oplane + static_cast<size_t>(oy) * OW) * L + i], &kGuard,
                        sizeof(float)) != 0 && !bad++)
          std::snprintf(where, sizeof where, "row %d outside [%d, %d) written", oy, m0, m1);
    }
  for (int q = 0; q < parts; ++q)
    t.dwconv_blocked(s, nblk, x.data(), w.data(), b.data(), lo, hi, y.data(),
                     OH * q / parts, OH * (q + 1) / parts);
  for (int c = 0; c < nblk * L; ++c)
    for (int oy = 0; oy < OH; ++oy)
      for (int ox = 0; ox < OW; ++ox) {
        double acc = c < C ? bc[c] : 0.0, scale = std::fabs(acc);
        for (int ky = 0; ky < k && c < C; ++ky)
          for (int kx = 0; kx < k; ++kx) {
            const int iy = oy * S - pt + ky, ix = ox * S - pl + kx;
            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
            const double term = static_cast<double>(wc[c * kk + ky * k + kx]) *
                                xc[c * plane + static_cast<size_t>(iy) * W + ix];
            acc += term;
            scale += std::fabs(term);
          }
        const double want = clampf(acc, lo, hi);
        const float got = y[((c / L) * oplane + static_cast<size_t>(oy) * OW + ox) * L + c % L];
        if (!(std::fabs(got - want) <= 1e-5 * (scale + std::fabs(want)) + 1e-30) && !bad++)
          std::snprintf(where, sizeof where, "c=%d (%d,%d): got %.9g want %.9g", c, oy, ox, got,
                        want);
      }
  for (size_t i = oplane * nblk * L; i < y.n; ++i)
    if (std::memcmp(&y[i], &kGuard, sizeof(float)) != 0 && !bad++)
      std::snprintf(where, sizeof where, "guard after the output overwritten");
  char msg[400];
  std::snprintf(msg, sizeof msg, "%s dwconv_blocked C=%d %dx%d k=%d s=%d pads=%d,%d,%d,%d x%d: %s",
                t.name, C, H, W, k, S, pt, pl, pb, pr, parts, bad ? where : "ok");
  record(bad == 0, msg);
}

void dw_blocked_suite(const KernelTable& t) {
  const int sizes[][2] = {{1, 1}, {2, 3}, {3, 2}, {1, 9}, {5, 5}, {7, 7}, {8, 8}, {9, 9},
                          {6, 17}, {13, 16}, {15, 23}, {4, 33}, {11, 40}, {14, 14}};
  int i = 0;
  // 1 block, 2 blocks (the pair tiles of narrow rows), 5 blocks (four-block tiles + one)
  for (int C : {1, 8, 13, 33})
    for (int k : {1, 2, 3, 4, 5, 7})
      for (int S : {1, 2, 3})
        for (const auto& hw : sizes) {
          const int p = i % 3, pb = (i / 3) % 3, pl = (i + 1) % 3, pr = (i / 2) % 3;
          const float lo = (i % 3 == 1) ? 0.0f : -INFINITY;
          const float hi = (i % 4 == 2) ? 0.5f : INFINITY;
          check_dw_blocked(t, C, hw[0], hw[1], k, S, p, pl, pb, pr, lo, hi, 1 + i % 3);
          ++i;
        }
  // Pads as wide as the kernel allows (k - 1): rows and columns with taps only in the padding.
  for (int k : {3, 5})
    for (int S : {1, 2})
      check_dw_blocked(t, 9, 6, 7, k, S, k - 1, k - 1, k - 1, k - 1, 0.0f, 6.0f, 2);
  // MobileNet / EfficientNet planes: 3x3 and 5x5, stride 1 ("same") and 2 (both padding
  // conventions), channel counts not multiples of 8.
  for (int k : {3, 5}) {
    const int p = k / 2;
    check_dw_blocked(t, 20, 112, 112, k, 1, p, p, p, p, 0.0f, 6.0f, 3);
    check_dw_blocked(t, 12, 112, 112, k, 2, p - 1, p - 1, p, p, 0.0f, INFINITY, 2);
    check_dw_blocked(t, 17, 112, 112, k, 2, p, p, p, p, 0.0f, 6.0f, 1);
    check_dw_blocked(t, 33, 56, 56, k, 2, p, p, p, p, 0.0f, 6.0f, 2);
    check_dw_blocked(t, 40, 28, 28, k, 1, p, p, p, p, -INFINITY, INFINITY, 1);
    check_dw_blocked(t, 36, 14, 14, k, 1, p, p, p, p, 0.0f, 6.0f, 2);
    check_dw_blocked(t, 50, 14, 14, k, 2, p, p, p, p, 0.0f, 6.0f, 1);
    check_dw_blocked(t, 67, 7, 7, k, 1, p, p, p, p, 0.0f, 6.0f, 2);
    check_dw_blocked(t, 11, 30, 57, k, 2, 0, 0, 1, 1, 0.0f, 6.0f, 3);
  }
  // Kernels larger than any specialisation; wide rows.
  check_dw_blocked(t, 3, 40, 37, 33, 1, 2, 1, 2, 3, -INFINITY, INFINITY, 2);
  check_dw_blocked(t, 5, 9, 70, 9, 2, 4, 4, 4, 4, 0.0f, INFINITY, 1);
  check_dw_blocked(t, 9, 3, 3001, 3, 1, 1, 1, 1, 1, -INFINITY, INFINITY, 2);
}

// to_blocked / from_blocked of one block: `lanes` channel planes `gap` floats apart beyond n,
// exact-size buffers (ASan), bit-exact against the definition, untouched channels of the NCHW
// side keep their guards.
void check_reorder(const KernelTable& t, int lanes, size_t n, size_t gap) {
  constexpr int L = sk::kChannelBlock;
  const ptrdiff_t plane = static_cast<ptrdiff_t>(n + gap);
  const size_t span = static_cast<size_t>(lanes - 1) * plane + n;  // the planes' extent
  Buf x(span), yb(n * L), back(span);
  for (size_t i = 0; i < x.n; ++i) x[i] = randf();
  for (size_t i = 0; i < yb.n; ++i) yb[i] = kGuard;
  for (size_t i = 0; i < back.n; ++i) back[i] = kGuard;
  t.to_blocked(x.data(), plane, lanes, n, yb.data());
  t.from_blocked(yb.data(), lanes, n, back.data(), plane);
  int bad = 0;
  for (size_t p = 0; p < n && !bad; ++p)
    for (int l = 0; l < L; ++l) {
      const float want = l < lanes ? x[l * plane + p] : 0.0f;
      if (std::memcmp(&yb[p * L + l], &want, sizeof(float)) != 0) bad = 1;
    }
  for (size_t i = 0; i < span && !bad; ++i) {
    const bool in_plane = static_cast<ptrdiff_t>(i) % plane < static_cast<ptrdiff_t>(n);
    const float want = in_plane ? x[i] : kGuard;  // the gaps between planes left alone
    if (std::memcmp(&back[i], &want, sizeof(float)) != 0) bad = 2;
  }
  char msg[200];
  std::snprintf(msg, sizeof msg, "%s to/from_blocked lanes=%d n=%zu gap=%zu: %s", t.name, lanes,
                n, gap, bad == 1 ? "to_blocked wrong" : bad == 2 ? "from_blocked wrong" : "ok");
  record(bad == 0, msg);
}

void reorder_suite(const KernelTable& t) {
  for (int lanes = 1; lanes <= sk::kChannelBlock; ++lanes)
    for (size_t n : {1, 5, 7, 8, 9, 15, 16, 17, 49, 64, 196, 1001})
      check_reorder(t, lanes, n, (n + lanes) % 3);
}

// ------------------------------------------------------------- channel-blocked 1x4 SpMM --
// Y as mb channel blocks [n][8] (block stride ybs) against the double reference: dot(r, p)
// returns output row r's product at pixel p and the sum of its terms' magnitudes; the
// epilogue as EpiCase e (bias[r], the residual blocked like Y with block stride rbs); every
// float outside the blocks' n pixels must still hold kGuard.  Returns the number of bad
// floats, the first described in `where`.
template <class Dot>
int check_blocked_out(Buf& y, ptrdiff_t ybs, int mb, int n, const EpiCase& e,
                      Buf& bias, Buf& res, ptrdiff_t rbs, Dot dot,
                      char (&where)[200]) {
  constexpr int L = sk::kChannelBlock;
  int bad = 0;
  for (size_t i = 0; i < y.n; ++i) {
    const ptrdiff_t blk = static_cast<ptrdiff_t>(i) / ybs, off = static_cast<ptrdiff_t>(i) % ybs;
    const float got = y[i];
    if (blk >= mb || off >= static_cast<ptrdiff_t>(n) * L) {
      if (std::memcmp(&got, &kGuard, sizeof got) != 0 && !bad++)
        std::snprintf(where, sizeof where, "guard overwritten at %zu", i);
      continue;
    }
    const int r = static_cast<int>(blk) * L + static_cast<int>(off % L);
    const int p = static_cast<int>(off / L);
    double acc = 0.0, scale = 0.0;
    dot(r, p, &acc, &scale);
    if (e.bias) {
      acc += bias[r];
      scale += std::fabs(bias[r]);
    }
    const double rv = e.residual ? res[blk * rbs + off] : 0.0;
    if (e.residual && !e.after) acc += rv;
    double want = clampf(acc, e.lo, e.hi);
    if (e.residual && e.after) want += rv;
    scale += std::fabs(rv) + std::fabs(want);
    if (!(std::fabs(got - want) <= 1e-5 * scale + 1e-30) && !bad++)
      std::snprintf(where, sizeof where, "row %d px %d: got %.9g want %.9g", r, p, got, want);
  }
  return bad;
}

// spmm_b4_blocked on a random 1x4 matrix: X as ceil(K/8) blocks [n][8] (padding lanes: any
// finite value, never read), Y as ceil(rows/8) blocks with a guard gap between blocks, the
// padding rows of the last block (zero weights, zero bias) must come out as epilogue(0) and
// every lane of every block is written.  Optionally split into group and pixel ranges (the
// op's thread splits).  Panel stride `ps` (a multiple of 8) may be smaller than n.
// from_panel: spmm_b4_panel_blocked on X's rows as a filled panel (n rounded up to 8 floats
// per row plus `ps` more, the padding zero), the same reference.
void check_spmm_blocked(const KernelTable& t, const SparseCase& c, int n, const EpiCase& e,
                        int ps, bool split, const std::string& tag, bool from_panel) {
  constexpr int L = sk::kChannelBlock;
  const int K = c.K, rows = c.rows;
  const int kb = (K + L - 1) / L, mb = (rows + L - 1) / L;
  const ptrdiff_t xbs = static_cast<ptrdiff_t>(n) * L + 5;  // gaps between blocks
  const ptrdiff_t ybs = static_cast<ptrdiff_t>(n) * L + 3;
  const ptrdiff_t rbs = static_cast<ptrdiff_t>(n) * L + 1;
  Buf x(static_cast<size_t>(kb) * xbs), y(static_cast<size_t>(mb) * ybs + 7);
  Buf bias(static_cast<size_t>(mb) * L), res(static_cast<size_t>(mb) * rbs);
  Buf panel(static_cast<size_t>(kb) * L * ps);
  for (size_t i = 0; i < x.n; ++i) x[i] = randf();
  for (size_t i = 0; i < bias.n; ++i) bias[i] = static_cast<int>(i) < rows ? randf() : 0.0f;
  for (size_t i = 0; i < res.n; ++i) res[i] = randf();
  for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;
  const int pt = (n + 7) / 8 * 8 + ps;  // filled panel's row stride
  Buf filled(static_cast<size_t>(K) * pt);
  for (int k = 0; k < K; ++k)
    for (int p = 0; p < pt; ++p)
      filled[static_cast<size_t>(k) * pt + p] =
          p < n ? x[(k / L) * xbs + static_cast<ptrdiff_t>(p) * L + k % L] : 0.0f;
  std::vector<int32_t> xoff(c.kidx.size());
  for (size_t j = 0; j < xoff.size(); ++j) xoff[j] = c.kidx[j] * (from_panel ? pt : ps);
  SpMat w;
  w.B = 4;
  w.rows = rows;
  w.groups = c.groups;
  w.group_ptr = c.group_ptr.data();
  w.x_offset = xoff.data();
  w.values = c.values.data();
  const Epilogue ep = epilogue_of(e, bias, res, rbs);
  const int G2 = 2 * mb;
  if (!split && from_panel) {
    t.spmm_b4_panel_blocked(static_cast<size_t>(n), w, 0, G2, filled.data(), y.data(), ybs, ep);
  } else if (!split) {
    t.spmm_b4_blocked(static_cast<size_t>(n), w, 0, G2, x.data(), xbs, kb, y.data(), ybs, ep,
                      panel.data(), ps);
  } else {  // group ranges split at an odd group (half a block) and two pixel ranges
    const int gm = G2 > 1 ? randint(1, G2 - 1) : 1;
    const int pm = n > 1 ? randint(1, n - 1) : 0;
    const int gr[3] = {0, gm, G2};
    const int pr[3] = {0, pm, n};
    for (int gi = 0; gi < 2; ++gi)
      for (int pi = 0; pi < 2; ++pi) {
        if (pr[pi + 1] <= pr[pi] || gr[gi + 1] <= gr[gi]) continue;
        Epilogue e2 = ep;
        if (e2.residual) e2.residual += static_cast<ptrdiff_t>(pr[pi]) * L;
        if (from_panel) {
          t.spmm_b4_panel_blocked(static_cast<size_t>(pr[pi + 1] - pr[pi]), w, gr[gi],
                                  gr[gi + 1], filled.data() + pr[pi],
                                  y.data() + static_cast<ptrdiff_t>(pr[pi]) * L, ybs, e2);
          continue;
        }
        t.spmm_b4_blocked(static_cast<size_t>(pr[pi + 1] - pr[pi]), w, gr[gi], gr[gi + 1],
                          x.data() + static_cast<ptrdiff_t>(pr[pi]) * L, xbs, kb,
                          y.data() + static_cast<ptrdiff_t>(pr[pi]) * L, ybs, e2, panel.data(),
                          ps);
      }
  }
  char where[200] = "";
  const int bad = check_blocked_out(
      y, ybs, mb, n, e, bias, res, rbs,
      [&](int r, int p, double* acc, double* scale) {
        for (int k = 0; k < K && r < rows; ++k) {
          const double term = static_cast<double>(c.dense[static_cast<size_t>(r) * K + k]) *
                              x[(k / L) * xbs + static_cast<ptrdiff_t>(p) * L + k % L];
          *acc += term;
          *scale += std::fabs(term);
        }
      },
      where);
  char msg[512];
  std::snprintf(msg, sizeof msg,
                "%s %s %s n=%d rows=%d K=%d nnzb=%zu ps=%d epi=%s%s: %s", t.name,
                from_panel ? "spmm_b4_panel_blocked" : "spmm_b4_blocked", tag.c_str(), n, rows,
                K, c.kidx.size(), ps, e.name, split ? " split" : "", bad ? where : "ok");
  record(bad == 0, msg);
}

void spmm_blocked_suite(const KernelTable& t) {
  // every case from X's blocks and from a filled panel (the NCHW-input path)
  const auto check_spmm_blocked = [&t](const KernelTable&, const SparseCase& c, int n,
                                       const EpiCase& e, int ps, bool split,
                                       const std::string& tag) {
    for (bool fp : {false, true}) ::check_spmm_blocked(t, c, n, e, ps, split, tag, fp);
  };
  const double sparsities[] = {0.0, 0.3, 0.5, 0.7, 0.9, 0.95, 0.99, 1.0};
  int ei = 0, si = 0;
  // Every pixel count 1..80, rows and K often not multiples of 4 or 8, panels narrower than n.
  for (int n = 1; n <= 80; ++n) {
    const int rows = randint(1, 29);
    const int K = randint(1, 45);
    const int ps = 8 * randint(1, 6);
    const SparseCase c = make_sparse(4, rows, K, sparsities[si++ % 8], n % 7 == 3 ? 2 : 0);
    check_spmm_blocked(t, c, n, kEpis[ei++ % kNumEpis], ps, n % 3 == 0, "sweep");
  }
  // Every epilogue x shapes (1..4 rows of the last block, empty groups, wide reductions).
  const int ns[] = {1, 7, 8, 9, 23, 24, 25, 31, 32, 33, 49, 97, 196};
  const int rowss[] = {1, 3, 4, 5, 8, 12, 13, 17, 30, 64};
  for (int e = 0; e < kNumEpis; ++e)
    for (int n : ns) {
      const int rows = rowss[randint(0, 9)];
      const int K = randint(1, 150);
      const int ps = n < 64 && e % 2 ? 64 : 8 * randint(1, 12);
      const SparseCase c = make_sparse(4, rows, K, sparsities[si++ % 8], e % 4 == 3 ? 3 : 0);
      check_spmm_blocked(t, c, n, kEpis[e], ps, (n + e) % 3 == 0, "epi");
    }
  for (int n : {5, 24, 49, 80}) {
    check_spmm_blocked(t, make_sparse(4, 17, 30, 1.0, 0), n, kEpis[8], 24, false, "all-empty");
    check_spmm_blocked(t, make_sparse(4, 6, 64, 0.0, 0), n, kEpis[4], 32, true, "dense");
  }
  check_spmm_blocked(t, make_sparse(4, 36, 1024, 0.9, 0), 49, kEpis[2], 64, false, "K1024");
  check_spmm_blocked(t, make_sparse(4, 64, 32, 0.9, 0), 500, kEpis[4], 240, true, "K32");
}

// ---------------------------------------------------- dense conv into channel blocks --
// dense_blocked on random dense weights [taps][m16] (zero past rows): X is a buffer read at
// x_offset[t] + p * xps (xps 1: panel rows, random gaps between them; 8: an NCHWc8 tensor,
// taps = its channels), Y blocks with guard gaps; every lane of every block for p < n is
// written (lanes past rows: epilogue of 0) and nothing else.  Optionally two pixel ranges
// (the op's splits).
void check_dense_blocked(const KernelTable& t, int rows, int taps, int n, int xps,
                         const EpiCase& e, bool split) {
  constexpr int L = sk::kChannelBlock;
  const int mb = (rows + L - 1) / L, m16 = sk::dense_m16(rows);
  std::vector<int32_t> xoff(static_cast<size_t>(taps));
  size_t xlen = 0;
  const ptrdiff_t xbs = static_cast<ptrdiff_t>(n) * L + 3;  // blocked X: gaps between blocks
  for (int k = 0; k < taps; ++k) {
    if (xps == L) {
      xoff[k] = static_cast<int32_t>((k / L) * xbs + k % L);
    } else {  // panel rows of n floats, in shuffled order with gaps
      xoff[k] = static_cast<int32_t>(((k * 7) % taps) * (n + 5) + randint(0, 4));
    }
    xlen = std::max(xlen, static_cast<size_t>(xoff[k]) + static_cast<size_t>(n) * xps);
  }
  Buf x(xlen), wv(static_cast<size_t>(taps) * m16), bias(static_cast<size_t>(m16));
  const ptrdiff_t ybs = static_cast<ptrdiff_t>(n) * L + 5, rbs = static_cast<ptrdiff_t>(n) * L + 2;
  Buf y(static_cast<size_t>(mb) * ybs + 9), res(static_cast<size_t>(mb) * rbs);
  for (size_t i = 0; i < x.n; ++i) x[i] = randf();
  for (int k = 0; k < taps; ++k)
    for (int r = 0; r < m16; ++r) wv[static_cast<size_t>(k) * m16 + r] = r < rows ? randf() : 0.0f;
  for (int r = 0; r < m16; ++r) bias[r] = r < rows ? randf() : 0.0f;
  for (size_t i = 0; i < res.n; ++i) res[i] = randf();
  for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;
  sk::DenseMat w;
  w.rows = rows;
  w.taps = taps;
  w.x_offset = xoff.data();
  w.values = wv.data();
  const Epilogue ep = epilogue_of(e, bias, res, rbs);
  const int pm = split && n > 1 ? randint(1, n - 1) : n;
  const int pr[3] = {0, pm, n};
  for (int pi = 0; pi < 2; ++pi) {
    if (pr[pi + 1] <= pr[pi]) continue;
    Epilogue e2 = ep;
    if (e2.residual) e2.residual += static_cast<ptrdiff_t>(pr[pi]) * L;
    t.dense_blocked(static_cast<size_t>(pr[pi + 1] - pr[pi]), w,
                    x.data() + static_cast<ptrdiff_t>(pr[pi]) * xps, xps,
                    y.data() + static_cast<ptrdiff_t>(pr[pi]) * L, ybs, e2);
  }
  char where[200] = "";
  const int bad = check_blocked_out(
      y, ybs, mb, n, e, bias, res, rbs,
      [&](int r, int p, double* acc, double* scale) {
        for (int k = 0; k < taps; ++k) {
          const double term = static_cast<double>(wv[static_cast<size_t>(k) * m16 + r]) *
                              x[xoff[k] + static_cast<ptrdiff_t>(p) * xps];
          *acc += term;
          *scale += std::fabs(term);
        }
      },
      where);
  char msg[300];
  std::snprintf(msg, sizeof msg, "%s dense_blocked n=%d rows=%d taps=%d xps=%d epi=%s%s: %s",
                t.name, n, rows, taps, xps, e.name, split ? " split" : "", bad ? where : "ok");
  record(bad == 0, msg);
}

void dense_blocked_suite(const KernelTable& t) {
  int ei = 0;
  // every pixel count 1..40 (all pixel tails of every tile), rows across 1..3 register tiles
  for (int n = 1; n <= 40; ++n)
    for (int xps : {1, 8}) {
      const int rows = randint(1, 72);
      const int taps = xps == 8 ? randint(1, 40) : randint(1, 60);
      check_dense_blocked(t, rows, taps, n, xps, kEpis[ei++ % kNumEpis], n % 3 == 0);
    }
  // every epilogue x every row count whose last block or vector is partial
  for (int e = 0; e < kNumEpis; ++e)
    for (int rows : {1, 4, 8, 9, 16, 17, 24, 31, 32, 33, 48, 64})
      check_dense_blocked(t, rows, randint(1, 30), 13 + 2 * e, e % 2 ? 8 : 1, kEpis[e],
                          rows % 3 == 0);
  // the stem's and the bridge's shapes
  check_dense_blocked(t, 32, 27, 112, 1, kEpis[4], false);
  check_dense_blocked(t, 16, 32, 196, 8, kEpis[2], true);
}


// ------------------------------------------------------------------- bank-balanced SpMV --
// A random bank-balanced [rows, K] matrix in the interleaved BankMat layout of table t (its
// spmv_lanes), with ragged last banks and padding lanes, against a double reference.
void check_spmv(const KernelTable& t, int rows, int K, int bs, int keep, bool with_init,
                bool split) {
  const int L = t.spmv_lanes;
  const int groups = (rows + L - 1) / L;
  const int nbanks = (K + bs - 1) / bs;
  const size_t n = static_cast<size_t>(groups) * nbanks * keep * L;
  std::vector<float> values(n, 0.0f);
  std::vector<uint8_t> offs(n, 0);
  std::vector<double> dense(static_cast<size_t>(rows) * K, 0.0);
  std::vector<int> perm(bs);
  for (int r = 0; r < rows; ++r) {
    const int g = r / L, l = r % L;
    for (int b = 0; b < nbanks; ++b) {
      const int len = K - b * bs < bs ? K - b * bs : bs;
      const int kb = len < bs ? (len * keep + bs - 1) / bs : keep;  // ragged bank's share
      const int kk = kb < len ? kb : len;
      for (int i = 0; i < len; ++i) perm[i] = i;
      for (int i = 0; i < kk; ++i) {  // kk distinct offsets
        const int j = randint(i, len - 1);
        const int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
      }
      for (int q = 0; q < keep; ++q) {
        const size_t at = ((static_cast<size_t>(g) * nbanks + b) * keep + q) * L + l;
        if (q < kk) {
          values[at] = randf();
          offs[at] = static_cast<uint8_t>(perm[q]);
          dense[static_cast<size_t>(r) * K + b * bs + perm[q]] += values[at];
        } else {
          values[at] = 0.0f;  // padding: value 0, offset 0
          offs[at] = 0;
        }
      }
    }
  }
  // x readable for nbanks*bs + 64 floats, exactly (ASan); positions past K hold junk
  Buf x(static_cast<size_t>(nbanks) * bs + 64);
  for (size_t i = 0; i < x.n; ++i) x[i] = i < static_cast<size_t>(K) ? randf() : 1e3f;
  Buf init(rows), y(static_cast<size_t>(rows) + 1);
  for (int r = 0; r < rows; ++r) init[r] = randf();
  for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;
  sk::BankMat w;
  w.rows = rows;
  w.lanes = L;
  w.groups = groups;
  w.nbanks = nbanks;
  w.bank_size = bs;
  w.keep = keep;
  w.values = values.data();
  w.offs = offs.data();
  const float* ip = with_init ? init.data() : nullptr;
  if (split && groups > 1) {
    const int gm = randint(1, groups - 1);
    t.spmv_bank(w, gm, groups, x.data(), ip, y.data());
    t.spmv_bank(w, 0, gm, x.data(), ip, y.data());
  } else {
    t.spmv_bank(w, 0, groups, x.data(), ip, y.data());
  }
  int bad = 0;
  char where[160] = "";
  if (std::memcmp(&y[rows], &kGuard, sizeof(float)) != 0) {
    ++bad;
    std::snprintf(where, sizeof where, "guard past row %d overwritten", rows);
  }
  for (int r = 0; r < rows && !bad; ++r) {
    double acc = with_init ? init[r] : 0.0, scale = std::fabs(acc);
    for (int k = 0; k < K; ++k) {
      acc += dense[static_cast<size_t>(r) * K + k] * x[k];
      scale += std::fabs(dense[static_cast<size_t>(r) * K + k] * x[k]);
    }
    if (std::fabs(y[r] - acc) > 1e-5 * (scale + 1.0)) {
      ++bad;
      std::snprintf(where, sizeof where, "row %d: got %g want %g", r, y[r], acc);
    }
  }
  char tag[200];
  std::snprintf(tag, sizeof tag, "%s spmv rows=%d K=%d bank=%d keep=%d init=%d split=%d %s",
                t.name, rows, K, bs, keep, with_init, split, where);
  record(bad == 0, tag);
}

void spmv_suite(const KernelTable& t) {
  static const int banks[] = {1, 2, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 48, 63, 64, 65, 100, 256};
  for (int bs : banks) {
    for (int rep = 0; rep < 6; ++rep) {
      const int rows = randint(1, 3 * t.spmv_lanes + 5);
      const int K = randint(bs, 3 * bs + 5);
      const int keep = randint(0, bs < 9 ? bs : 9);
      check_spmv(t, rows, K, bs, keep, rep & 1, rep & 2);
    }
  }
  check_spmv(t, 6000, 1500, 32, 6, true, true);   // the LSTM LM's recurrence, 81% sparse
  check_spmv(t, 6000, 1500, 64, 13, true, false);
  check_spmv(t, 1, 1, 1, 1, false, false);
  check_spmv(t, 17, 256, 256, 256, true, true);   // keep == bank_size (dense)
}

// ------------------------------------------------------------ ReLU-output prediction --
// An exactly-sized heap array of T (any alignment), so ASan sees any access past either end.
template <typename T>
struct Arr {
  T* p;
  size_t n;
  size_t align;
  explicit Arr(size_t count, size_t al = alignof(T))
      : p(static_cast<T*>(::operator new(sizeof(T) * (count ? count : 1), std::align_val_t(al)))),
        n(count),
        align(al) {}
  Arr(const Arr&) = delete;
  Arr& operator=(const Arr&) = delete;
  Arr(Arr&& o) noexcept : p(o.p), n(o.n), align(o.align) { o.p = nullptr, o.n = 0; }
  ~Arr() { ::operator delete(p, std::align_val_t(align)); }
  T* data() { return p; }
  T& operator[](size_t i) { return p[i]; }
};

// The quantization of kernels.h, written independently: the product rounded (it goes through
// a volatile, so no compiler can fuse it with the sum), then the sum, clamp, truncation.
uint8_t quantize_model(float x, float sx, int zx) {
  const float inv = sx > 0.0f ? 1.0f / sx : 0.0f, off = float(zx) + 0.5f;
  volatile float prod = x * inv;
  const float t = prod + off;
  if (!(t > 0.0f)) return 0;
  if (t >= 127.0f) return 127;
  return static_cast<uint8_t>(static_cast<int>(t));
}

// kt.predict_quantize on n pixels of C channels against the model and, byte for byte, against
// predict_quantize_ref; the padding channels must be 0 and the bytes after xq left alone.
// mode 0: random in [lo, hi]; 1: values on and next to rounding boundaries (x*inv + off within
// a few ulps of an integer); 2: extremes (0, -0, +-huge, +-inf, exact grid points).
void check_quantize(const KernelTable& t, size_t n, int C, float sx, int zx, int mode) {
  const int C4 = (C + 3) / 4 * 4;
  Buf x(n * C);
  const float inv = sx > 0.0f ? 1.0f / sx : 0.0f, off = float(zx) + 0.5f;
  for (size_t i = 0; i < x.n; ++i) {
    if (mode == 0) {
      x[i] = (randint(0, 9) == 0) ? 0.0f : randf() * 70.0f * (sx > 0.0f ? sx : 1.0f) * 2.0f;
    } else if (mode == 1 && inv > 0.0f) {
      // the real x whose x * inv + off is the integer j, then a few ulps either side
      const int j = randint(-2, 129);
      float v = static_cast<float>((double(j) - double(off)) / double(inv));
      for (int u = randint(-3, 3); u != 0; u += u > 0 ? -1 : 1)
        v = std::nextafter(v, u > 0 ? INFINITY : -INFINITY);
      x[i] = v;
    } else {
      static const float ext[] = {0.0f, -0.0f, 1e30f, -1e30f, INFINITY, -INFINITY,
                                  1e-40f, -1e-40f, 127.0f, -127.0f, 0.5f, -0.5f};
      x[i] = randint(0, 1) ? ext[randint(0, 11)] * (randint(0, 1) ? 1.0f : sx)
                           : float(randint(-140, 140)) * sx;  // grid points
    }
  }
  std::vector<uint8_t> got(n * C4 + 16, 0xA5), want(n * C4 + 16, 0x5A);
  t.predict_quantize(x.data(), n, C, C4, sx, zx, got.data());
  sk::predict_quantize_ref(x.data(), n, C, C4, sx, zx, want.data());
  int bad = 0;
  char where[200] = "";
  for (size_t p = 0; p < n && !bad; ++p)
    for (int c = 0; c < C4; ++c) {
      const size_t at = p * C4 + c;
      const uint8_t model = c < C ? quantize_model(x[p * C + c], sx, zx) : 0;
      if (got[at] != want[at] || got[at] != model) {
        std::snprintf(where, sizeof where,
                      "px %zu ch %d (x=%.9g): got %d, predict_quantize_ref %d, model %d", p, c,
                      c < C ? x[p * C + c] : 0.0f, got[at], want[at], model);
        ++bad;
        break;
      }
    }
  for (size_t i = n * C4; i < got.size(); ++i)
    if (got[i] != 0xA5 && !bad++) std::snprintf(where, sizeof where, "wrote past xq");
  char msg[400];
  std::snprintf(msg, sizeof msg, "%s predict_quantize n=%zu C=%d sx=%g zx=%d mode=%d: %s",
                t.name, n, C, sx, zx, mode, bad ? where : "ok");
  record(bad == 0, msg);
}

void quantize_suite(const KernelTable& t) {
  const int Cs[] = {1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 31, 32, 33, 63, 64, 65, 300};
  const size_t ns[] = {1, 2, 3, 5, 16, 17, 100};
  int i = 0;
  for (int C : Cs)
    for (size_t n : ns) {
      const float sxs[] = {1.0f / 127.0f, 0.25f, randf() * 0.1f + 0.1001f, 3.7e-3f};
      const int zxs[] = {0, 1, 37, 127, randint(0, 127)};
      check_quantize(t, n, C, sxs[i % 4], zxs[i % 5], i % 3);
      ++i;
    }
  // sx = 0 (inv 0: everything quantizes to zx), tiny and huge scales
  for (int C : {3, 16, 33}) {
    check_quantize(t, 9, C, 0.0f, 0, 2);
    check_quantize(t, 9, C, 0.0f, 12, 0);
    check_quantize(t, 9, C, 1e-30f, 0, 2);
    check_quantize(t, 9, C, 1e30f, 64, 0);
  }
  // boundary values in bulk; many pixels of few channels (chunks of contiguous pixels)
  for (int C : {1, 3, 4, 5, 6, 7, 8, 12, 32, 40}) {
    check_quantize(t, 1000, C, 0.1f + 0.05f * randf(), randint(0, 127), 1);
    check_quantize(t, 2100, C, 0.01f + 0.005f * randf(), 0, 1);
  }
  check_quantize(t, 1025, 1, 0.5f, 3, 0);
  check_quantize(t, 342, 3, 0.5f, 3, 1);
}

struct PredGeom {
  int kh, kw, sh, sw, dh, dw, pt, pl, pb, pr;
};

const PredGeom kPredGeoms[] = {
    {1, 1, 1, 1, 1, 1, 0, 0, 0, 0}, {1, 1, 2, 2, 1, 1, 0, 0, 0, 0},
    {3, 3, 1, 1, 1, 1, 1, 1, 1, 1}, {3, 3, 2, 2, 1, 1, 1, 1, 0, 0},
    {3, 3, 1, 1, 1, 1, 0, 0, 0, 0}, {3, 3, 1, 1, 2, 2, 2, 2, 2, 2},
    {5, 5, 1, 1, 1, 1, 2, 2, 2, 2}, {5, 5, 2, 2, 1, 1, 2, 1, 2, 1},
    {1, 3, 1, 1, 1, 1, 0, 1, 0, 1}, {5, 3, 2, 1, 1, 1, 2, 1, 1, 0},
    {3, 3, 2, 2, 2, 2, 1, 2, 0, 1}, {5, 5, 1, 2, 2, 2, 4, 4, 4, 4},
    {3, 1, 2, 1, 2, 1, 0, 0, 3, 0},
};
constexpr int kNumPredGeoms = sizeof(kPredGeoms) / sizeof(kPredGeoms[0]);

struct PredCase {
  PredGeom g;
  int C, M, n;
  int wq_max;      // |wq| <= wq_max (7: steps16 = 18, 127: steps16 = 1)
  int margin;
  bool signed_x;   // x with negatives (zx > 0) or a ReLU output (zx = 0)
  float hi;        // activation clamp
  int x_kind;      // 0 random, 1 all zero (sx = 0), 2 saturating: x = max (xq = 127) everywhere
  int w_kind;      // 0 random, 1 all +1 (wq = +wq_max), 2 all -1, 3 with an all-zero row
  bool p0_at_end;  // the last n pixels of the image (else a random p0 >= 1)
  bool bias_on_boundary = false;  // bias[m] = -float(units * scale) at one pixel per row
};

// One call of t.predict on output pixels [p0, p0 + n) of a random conv, built as the op
// builds it (csrc/ort/predicted_conv.cpp), against:
//   * an independent model: the integer prediction from the unpacked W_q and the 7-bit image,
//     the decision fma(float(acc - zx*rowsum + margin), sx*scale, bias) > 0, and the output
//     in double where predicted positive (relative tolerance 1e-5 of sum |w*x| + |bias|),
//     0 elsewhere, the same count returned;
//   * sk::predict_ref on the same inputs: the same count and values within the tolerance;
//   * a probe run with the fp32 weights and image replaced by positive constants (the 7-bit
//     image kept): every computed output is then > 0, so the set of computed outputs can be
//     read off y and must equal predict_ref's (and the model's where a pixel has a tap inside).
// Every buffer is exactly sized (ASan: no read past the padded image, its 7-bit copy,
// the weights or the scratch); y has guard columns and a guard row.
void check_predict(const KernelTable& t, const PredCase& pc, const std::string& tag) {
  const PredGeom& g = pc.g;
  const int C = pc.C, M = pc.M, n = pc.n, C4 = (C + 3) / 4 * 4, taps = g.kh * g.kw;
  const int K = C * taps, K4 = taps * C4;
  const int ekh = (g.kh - 1) * g.dh + 1, ekw = (g.kw - 1) * g.dw + 1;
  // image size: at least n + 1 output pixels, so that p0 >= 1
  const int ow = randint(1, 12);
  const int oh = (n + 1 + ow - 1) / ow + randint(0, 2);
  int H = std::max(1, (oh - 1) * g.sh + ekh - g.pt - g.pb + randint(0, g.sh - 1));
  int W = std::max(1, (ow - 1) * g.sw + ekw - g.pl - g.pr + randint(0, g.sw - 1));
  int OH = 0, OW = 0;
  for (;;) {
    OH = H + g.pt + g.pb >= ekh ? (H + g.pt + g.pb - ekh) / g.sh + 1 : 0;
    OW = W + g.pl + g.pr >= ekw ? (W + g.pl + g.pr - ekw) / g.sw + 1 : 0;
    if (OH >= 1 && OW >= 1 && int64_t(OH) * OW >= n + 1) break;
    if (OH < 1 || OW >= OH) ++H; else ++W;
  }
  const int64_t P = int64_t(OH) * OW;
  const int64_t p0 = pc.p0_at_end ? P - n : randint(1, int(P - n));
  const size_t HW = size_t(H) * W;

  // image, scaled and quantized as the op does
  Arr<float> x(HW * C);
  const float xs = 0.5f + float(uniform()) * 4.0f;
  for (size_t i = 0; i < x.n; ++i) {
    float v = 0.0f;
    if (pc.x_kind == 0) {
      v = randf() * xs;
      if (!pc.signed_x) v = v > 0.0f ? v : 0.0f;
      if (randint(0, 7) == 0) v = 0.0f;
    } else if (pc.x_kind == 2) {  // signed: one small negative value makes zx 1
      v = pc.signed_x && i == 0 ? -xs / 100.0f : xs;
    }
    x[i] = v;
  }
  float lo = 0.0f, hi = 0.0f;
  for (size_t i = 0; i < x.n; ++i) lo = std::min(lo, x[i]), hi = std::max(hi, x[i]);
  const float sx = (hi - lo) / 127.0f;
  const int zx = sx > 0.0f ? int(std::lround(-lo / sx)) : 0;
  Arr<uint8_t> xq(HW * C4);
  sk::predict_quantize_ref(x.data(), HW, C, C4, sx, zx, xq.data());
  // the kernels' form: channels-last, padded so that every tap lies inside (kernels.h)
  const int Hp = H + g.pt + g.pb, Wp = W + g.pl + g.pr;
  auto padded = [&](const float* src) {
    Arr<float> d(size_t(Hp) * Wp * C);
    for (size_t i = 0; i < d.n; ++i) d[i] = 0.0f;
    for (int r = 0; r < H; ++r)
      std::memcpy(&d[(size_t(r + g.pt) * Wp + g.pl) * C], src + size_t(r) * W * C,
                  sizeof(float) * size_t(W) * C);
    return d;
  };
  Arr<float> xpad = padded(x.data());
  Arr<uint8_t> xqpad(size_t(Hp) * Wp * C4);
  for (size_t i = 0; i < xqpad.n; ++i) xqpad[i] = (i % C4) < size_t(C) ? uint8_t(zx) : 0;
  for (int r = 0; r < H; ++r)
    std::memcpy(&xqpad[(size_t(r + g.pt) * Wp + g.pl) * C4], &xq[size_t(r) * W * C4],
                size_t(W) * C4);

  // weights: ONNX W [M][C][kh][kw], W_q [M][C*kh*kw] (k = c*taps + tap), then the op's forms
  std::vector<float> Wo(size_t(M) * K);
  for (size_t i = 0; i < Wo.size(); ++i)
    Wo[i] = pc.w_kind == 1 ? 1.0f : pc.w_kind == 2 ? -1.0f : randf();
  if (pc.w_kind == 3)
    for (int k = 0; k < K; ++k) Wo[size_t(M / 2) * K + k] = 0.0f;
  std::vector<int> Wq(size_t(M) * K);
  std::vector<float> scale(M);
  for (int m = 0; m < M; ++m) {
    float mx = 0.0f;
    for (int k = 0; k < K; ++k) mx = std::max(mx, std::fabs(Wo[size_t(m) * K + k]));
    scale[m] = mx / float(pc.wq_max);
    for (int k = 0; k < K; ++k) {
      const float q = scale[m] > 0.0f ? std::nearbyint(Wo[size_t(m) * K + k] / scale[m]) : 0.0f;
      Wq[size_t(m) * K + k] = int(std::max(-float(pc.wq_max), std::min(float(pc.wq_max), q)));
    }
  }
  const int nb = (M + 7) / 8;
  Arr<int8_t> wq(size_t(nb) * K4 * 8, 64);
  for (size_t i = 0; i < wq.n; ++i) wq[i] = 0;
  Arr<int32_t> rowsum(M);
  Arr<float> wscale(M), wf(size_t(M) * taps * C), bias(M);
  float bmax = 0.0f;
  const float bs = 0.3f * xs * std::sqrt(float(K));
  for (int m = 0; m < M; ++m) {
    rowsum[m] = 0;
    wscale[m] = scale[m];
    bias[m] = randint(0, 9) == 0 ? 0.0f : randf() * bs;
    bmax = std::max(bmax, std::fabs(bias[m]));
    for (int k = 0; k < K; ++k) {
      const int tp = k % taps, c = k / taps, kk = tp * C4 + c;
      const int v = Wq[size_t(m) * K + k];
      wq[size_t(m / 8) * K4 * 8 + size_t(kk / 4) * 32 + (m % 8) * 4 + kk % 4] = int8_t(v);
      rowsum[m] += v;
      wf[(size_t(m) * taps + tp) * C + c] = Wo[size_t(m) * K + k];
    }
  }
  sk::PredictMat pm;
  pm.M = M, pm.C = C, pm.C4 = C4, pm.taps = taps, pm.K4 = K4;
  const int per_run = g.dw == 1 ? g.kw : 1;  // a kernel row per run when its taps are adjacent
  pm.runs = taps / per_run, pm.run_len = per_run * C, pm.run_len4 = per_run * C4;
  pm.wq = wq.data(), pm.wq_rowsum = rowsum.data(), pm.wq_scale = wscale.data();
  pm.w = wf.data(), pm.bias = bias.data(), pm.hi = pc.hi;
  pm.steps16 = std::max(1, 32767 / (2 * 127 * pc.wq_max));
  pm.margin = pc.margin;
  sk::PredictImage img;
  img.x = xpad.data(), img.xq = xqpad.data();
  img.Wp = Wp, img.OW = OW;
  img.kh = g.kh, img.kw = g.kw, img.sh = g.sh, img.sw = g.sw, img.dh = g.dh, img.dw = g.dw;
  img.sx = sx, img.zx = zx;

  // the model: integer prediction units and the dot products in double
  std::vector<char> pred(size_t(M) * n), inside(n, 0);
  std::vector<int64_t> units(size_t(M) * n);
  std::vector<double> dot(size_t(M) * n), want(size_t(M) * n), mag(size_t(M) * n);
  std::vector<int64_t> model_rowsum(M, 0);
  for (int m = 0; m < M; ++m)
    for (int k = 0; k < K; ++k) model_rowsum[m] += Wq[size_t(m) * K + k];
  for (int i = 0; i < n; ++i) {
    const int64_t oy = (p0 + i) / OW, ox = (p0 + i) % OW;
    std::vector<int64_t> q(taps);
    for (int ky = 0; ky < g.kh; ++ky)
      for (int kx = 0; kx < g.kw; ++kx) {
        const int64_t iy = oy * g.sh - g.pt + int64_t(ky) * g.dh;
        const int64_t ix = ox * g.sw - g.pl + int64_t(kx) * g.dw;
        const bool in = iy >= 0 && iy < H && ix >= 0 && ix < W;
        q[ky * g.kw + kx] = in ? iy * W + ix : -1;
        if (in) inside[i] = 1;
      }
    for (int m = 0; m < M; ++m) {
      int64_t acc = 0;
      double v = 0.0, a = 0.0;
      for (int c = 0; c < C; ++c)
        for (int tp = 0; tp < taps; ++tp) {
          const int wv = Wq[size_t(m) * K + size_t(c) * taps + tp];
          acc += int64_t(wv) * (q[tp] >= 0 ? xq[size_t(q[tp]) * C4 + c] : zx);
          if (q[tp] >= 0) {
            const double term = double(Wo[size_t(m) * K + size_t(c) * taps + tp]) *
                                x[size_t(q[tp]) * C + c];
            v += term;
            a += std::fabs(term);
          }
        }
      const size_t at = size_t(m) * n + i;
      units[at] = acc - int64_t(zx) * model_rowsum[m] + pc.margin;
      dot[at] = v;
      mag[at] = a;
    }
  }
  if (pc.bias_on_boundary) {
    // bias = -(rounded product) at one pixel per row: the decision there is the sign of the
    // product's rounding error, which only a single-rounding fma gets right
    bmax = 0.0f;
    for (int m = 0; m < M; ++m) {
      volatile float prod = float(units[size_t(m) * n + (m * 7) % n]) * (sx * scale[m]);
      bias[m] = -prod;
      bmax = std::max(bmax, std::fabs(bias[m]));
    }
  }
  int64_t want_count = 0;
  for (int m = 0; m < M; ++m)
    for (int i = 0; i < n; ++i) {
      const size_t at = size_t(m) * n + i;
      const bool pos = std::fma(float(units[at]), sx * scale[m], bias[m]) > 0.0f;
      const double v = dot[at] + bias[m];
      pred[at] = pos;
      want[at] = pos ? (v > 0.0 ? std::min(v, double(pc.hi)) : 0.0) : 0.0;
      mag[at] += std::fabs(bias[m]);
      want_count += pos;
    }

  const ptrdiff_t ys = n + 3;
  auto run = [&](sk::PredictFn fn, const sk::PredictMat& w, const sk::PredictImage& im,
                 Buf& y) {
    for (size_t i = 0; i < y.n; ++i) y[i] = kGuard;
    Arr<uint8_t> scratch(size_t(n) * K4);
    return fn(w, im, p0, n, scratch.data(), y.data(), ys);
  };
  auto guards_ok = [&](Buf& y) {
    for (int m = 0; m <= M; ++m)
      for (ptrdiff_t p = 0; p < ys; ++p)
        if ((m == M || p >= n) && std::memcmp(&y[m * ys + p], &kGuard, sizeof(float)) != 0)
          return false;
    return true;
  };
  Buf y(size_t(M + 1) * ys), yr(size_t(M + 1) * ys);
  const int64_t got_count = run(t.predict, pm, img, y);
  const int64_t ref_count = run(sk::predict_ref, pm, img, yr);

  int bad = 0;
  char where[300] = "";
  if (!guards_ok(y)) {
    ++bad;
    std::snprintf(where, sizeof where, "guard overwritten");
  } else if (got_count != want_count || got_count != ref_count) {
    ++bad;
    std::snprintf(where, sizeof where, "returned %lld, model %lld, predict_ref %lld",
                  (long long)got_count, (long long)want_count, (long long)ref_count);
  }
  for (int m = 0; m < M && !bad; ++m)
    for (int i = 0; i < n; ++i) {
      const size_t at = size_t(m) * n + i;
      const float got = y[m * ys + i], ref = yr[m * ys + i];
      const double tol = 1e-5 * (mag[at] + std::fabs(want[at])) + 1e-30;
      const bool ok = pred[at] ? std::fabs(got - want[at]) <= tol && std::fabs(got - ref) <= tol
                               : got == 0.0f;
      if (!ok) {
        std::snprintf(where, sizeof where,
                      "m=%d px %lld: got %.9g, model %.9g (%s), predict_ref %.9g (tol %.3g)", m,
                      (long long)(p0 + i), got, want[at], pred[at] ? "positive" : "skipped",
                      ref, tol);
        ++bad;
        break;
      }
    }
  if (!bad) {  // the probe: which outputs were computed
    Arr<float> ones(HW * C), wp(size_t(M) * taps * C);
    for (size_t i = 0; i < ones.n; ++i) ones[i] = 1.0f;
    Arr<float> xp = padded(ones.data());
    for (size_t i = 0; i < wp.n; ++i) wp[i] = 1.0f + bmax;
    sk::PredictMat pm2 = pm;
    pm2.w = wp.data();
    sk::PredictImage img2 = img;
    img2.x = xp.data();
    Buf y2(size_t(M + 1) * ys), y2r(size_t(M + 1) * ys);
    const int64_t c2 = run(t.predict, pm2, img2, y2);
    const int64_t c2r = run(sk::predict_ref, pm2, img2, y2r);
    if (c2 != want_count || c2r != want_count || !guards_ok(y2)) {
      ++bad;
      std::snprintf(where, sizeof where, "probe: returned %lld, predict_ref %lld, model %lld",
                    (long long)c2, (long long)c2r, (long long)want_count);
    }
    for (int m = 0; m < M && !bad; ++m)
      for (int i = 0; i < n; ++i) {
        const bool computed = y2[m * ys + i] != 0.0f, by_ref = y2r[m * ys + i] != 0.0f;
        const bool model = pred[size_t(m) * n + i];
        if (computed != by_ref || (computed && !model) || (model && inside[i] && !computed)) {
          std::snprintf(where, sizeof where,
                        "probe m=%d px %lld: computed %d, by predict_ref %d, model %d", m,
                        (long long)(p0 + i), computed, by_ref, model);
          ++bad;
          break;
        }
      }
  }
  if (!bad) {  // the MaxPool-chain pair: units alone, full precision at any listed pixels
    Arr<int32_t> u(size_t(M) * n);
    Arr<uint8_t> scratch(size_t(n) * K4);
    t.predict_units(pm, img, p0, n, scratch.data(), u.data(), n);
    for (int m = 0; m < M && !bad; ++m)
      for (int i = 0; i < n; ++i) {
        const size_t at = size_t(m) * n + i;
        if (int64_t(u[at]) != units[at] - pc.margin) {
          std::snprintf(where, sizeof where, "units m=%d px %lld: got %d, model %lld", m,
                        (long long)(p0 + i), u[at], (long long)(units[at] - pc.margin));
          ++bad;
          break;
        }
      }
    std::vector<int64_t> pix(n);
    Arr<float> out(n);
    for (int m = 0; m < M && !bad; ++m) {
      const int cnt = randint(0, n);  // a random subset, in reverse order
      for (int j = 0; j < cnt; ++j) pix[j] = p0 + n - 1 - j * n / std::max(cnt, 1);
      t.predict_exact(pm, img, m, pix.data(), cnt, out.data());
      for (int j = 0; j < cnt; ++j) {
        const size_t at = size_t(m) * n + size_t(pix[j] - p0);
        const double v = dot[at] + bias[m];
        const double e = v > 0.0 ? std::min(v, double(pc.hi)) : 0.0;
        if (std::fabs(out[j] - e) > 1e-5 * mag[at] + 1e-30) {
          std::snprintf(where, sizeof where, "exact m=%d px %lld: got %.9g, model %.9g", m,
                        (long long)pix[j], out[j], e);
          ++bad;
          break;
        }
      }
    }
  }
  char msg[600];
  std::snprintf(msg, sizeof msg,
                "%s predict %s k=%dx%d s=%d,%d d=%d,%d pads=%d,%d,%d,%d img=%dx%d C=%d M=%d "
                "p0=%lld n=%d |wq|<=%d margin=%d zx=%d hi=%g x%d w%d (%lld/%lld computed): %s",
                t.name, tag.c_str(), g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.pb, g.pr,
                H, W, C, M, (long long)p0, n, pc.wq_max, pc.margin, zx, pc.hi, pc.x_kind,
                pc.w_kind, (long long)want_count, (long long)M * n, bad ? where : "ok");
  record(bad == 0, msg);
}

void predict_suite(const KernelTable& t) {
  const int Cs[] = {1, 3, 4, 5, 16, 33, 64};
  const int Ms[] = {1, 7, 8, 9, 16, 17, 40};
  const int ns[] = {1, 3, 4, 5, 63, 64};
  int i = 0;
  for (int C : Cs)
    for (int M : Ms)
      for (int n : ns) {
        PredCase pc;
        pc.g = kPredGeoms[i % kNumPredGeoms];
        pc.C = C, pc.M = M, pc.n = n;
        pc.wq_max = randint(0, 1) ? 7 : 127;
        pc.margin = randint(0, 1) ? 0 : randint(1, 3000);
        pc.signed_x = randint(0, 1);
        pc.hi = randint(0, 1) ? INFINITY : 6.0f;
        pc.x_kind = 0;
        pc.w_kind = randint(0, 5) == 0 ? 3 : 0;
        pc.p0_at_end = i % 2;
        check_predict(t, pc, "sweep");
        ++i;
      }
  // int16 stress: every activation 127 (or the zero point's worst case) times +-wq_max
  for (int wmax : {7, 127})
    for (int wk : {1, 2})
      for (bool sgn : {false, true}) {
        PredCase pc{kPredGeoms[2], 64, 16, 64, wmax, 0, sgn, INFINITY, 2, wk, true};
        check_predict(t, pc, "saturate");
        pc.g = kPredGeoms[6], pc.C = 33, pc.M = 9, pc.n = 13, pc.margin = 500, pc.hi = 6.0f;
        check_predict(t, pc, "saturate");
      }
  // decisions on the fma's rounding: fused and unfused multiply-add differ in sign there
  for (int i = 0; i < 24; ++i) {
    PredCase pc;
    pc.g = kPredGeoms[(i * 5) % kNumPredGeoms];
    pc.C = Cs[i % 7], pc.M = Ms[(i / 2) % 7], pc.n = ns[(i / 3) % 6];
    pc.wq_max = i % 2 ? 7 : 127;
    pc.margin = i % 3 ? 0 : 11;
    pc.signed_x = i % 4 < 2;
    pc.hi = i % 5 ? INFINITY : 6.0f;
    pc.x_kind = 0, pc.w_kind = 0, pc.p0_at_end = i % 2;
    pc.bias_on_boundary = true;
    check_predict(t, pc, "fma-boundary");
  }
  // an all-zero image (sx = 0: the decision is bias > 0, or margin*0 + bias)
  for (int margin : {0, 7}) {
    PredCase pc{kPredGeoms[2], 5, 17, 9, 127, margin, false, INFINITY, 1, 0, false};
    check_predict(t, pc, "zero-image");
  }
  // large K (several of AVX2's K chunks), many rows (positive marks on the heap), many taps
  {
    PredCase pc{kPredGeoms[2], 256, 17, 13, 7, 0, true, INFINITY, 0, 0, false};
    check_predict(t, pc, "large-K");
    pc.g = kPredGeoms[7], pc.C = 200, pc.M = 9, pc.n = 64, pc.wq_max = 127, pc.margin = 100;
    check_predict(t, pc, "large-K");
    pc.g = kPredGeoms[2], pc.C = 3, pc.M = 1030, pc.n = 5;
    check_predict(t, pc, "M>1024");
    pc.g = PredGeom{9, 9, 1, 1, 1, 1, 4, 4, 4, 4}, pc.C = 2, pc.M = 9, pc.n = 11;
    check_predict(t, pc, "taps>64");
  }
}

}  // namespace

int main(int argc, char** argv) {
  const char* only = nullptr;
  for (int a = 1; a < argc; ++a) {
    if (std::strcmp(argv[a], "-v") == 0) {
      g_verbose = true;
    } else if (std::strcmp(argv[a], "--isa") == 0 && a + 1 < argc) {
      only = argv[++a];
    } else {
      std::printf("usage: %s [-v] [--isa ref|avx2|avx512|neon]\n", argv[0]);
      return 2;
    }
  }
  const sk::Isa isas[] = {sk::Isa::ref, sk::Isa::avx2, sk::Isa::avx512, sk::Isa::neon};
  int skipped = 0;
  for (sk::Isa isa : isas) {
    if (only && std::strcmp(only, sk::isa_name(isa)) != 0) continue;
    const KernelTable* t = sk::kernels_for(isa);
    if (!t) {
      const char* why = "not built for this architecture";
#if defined(SK_HAVE_X86)
      if (isa == sk::Isa::avx512) why = sk::cpu_has(isa) ? "not compiled in" : "CPU lacks AVX-512";
      if (isa == sk::Isa::avx2) why = sk::cpu_has(isa) ? "not compiled in" : "CPU lacks AVX2+FMA";
#endif
      std::printf("SKIP %s: %s\n", sk::isa_name(isa), why);
      ++skipped;
      continue;
    }
    const int before_p = g_passed, before_f = g_failed;
    record(sk::table_complete(*t) && t->isa == isa &&
               std::strcmp(t->name, sk::isa_name(isa)) == 0,
           std::string(sk::isa_name(isa)) + ": KernelTable has every field set");
    spmm_suite(*t);
    dw_suite(*t);
    dw_multi_suite(*t);
    dw_blocked_suite(*t);
    reorder_suite(*t);
    spmm_blocked_suite(*t);
    dense_blocked_suite(*t);
    spmv_suite(*t);
    quantize_suite(*t);
    predict_suite(*t);
    std::printf("%-6s %d passed, %d failed\n", t->name, g_passed - before_p,
                g_failed - before_f);
  }
  const char* err = nullptr;
  const KernelTable* sel = sk::select_kernels(&err);
  std::printf("selected: %s\n", sel ? sel->name : (err ? err : "?"));
  if (skipped) std::printf("%d ISA(s) skipped\n", skipped);
  std::printf("%d passed, %d failed\n", g_passed, g_failed);
  return g_failed ? 1 : 0;
}
