// Native kernel tests: every ISA table available on this CPU/build (ref included) against an
// independent dense double-precision reference, over shapes, remainders, sparsities and
// epilogues.  Buffers are allocated at their exact sizes (run under ASan by run_asan.sh) and
// the outputs carry guard values that a kernel must leave alone.
//
// Usage: sk_kernel_tests [-v]     closing line: "N passed, N failed"; exit 1 on any failure.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
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
  Epilogue ep;
  ep.bias = e.bias ? bias.data() : nullptr;
  ep.residual = e.residual ? res.data() : nullptr;
  ep.residual_stride = rs;
  ep.residual_after_act = e.after;
  ep.lo = e.lo;
  ep.hi = e.hi;
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

}  // namespace

int main(int argc, char** argv) {
  for (int a = 1; a < argc; ++a)
    if (std::strcmp(argv[a], "-v") == 0) g_verbose = true;
  const sk::Isa isas[] = {sk::Isa::ref, sk::Isa::avx2, sk::Isa::avx512, sk::Isa::neon};
  int skipped = 0;
  for (sk::Isa isa : isas) {
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
    spmm_suite(*t);
    dw_suite(*t);
    dw_multi_suite(*t);
    spmv_suite(*t);
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
