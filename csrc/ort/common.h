// Shared plumbing of the custom ops: errors, attributes, constant tensors, run-time tensors,
// scratch memory and ORT's ParallelFor.  Everything here throws skort::Error on failure; the
// OrtCustomOp callbacks (register.cpp) turn every exception into an OrtStatus naming the node.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "ort/ort_abi.h"

namespace skort {

// An error with its ORT code.  Messages are short and say what is wrong with which input.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg, OrtErrorCode code = ORT_INVALID_ARGUMENT)
      : std::runtime_error(msg), code_(code) {}
  OrtErrorCode code() const { return code_; }

 private:
  OrtErrorCode code_;
};

// Throw if `st` is an error status (after releasing it).
void check(const Api& api, OrtStatus* st, const char* what);

const char* dtype_name(ONNXTensorElementDataType t);

// ---- attributes (KernelInfo) ---------------------------------------------------------------
class Attrs {
 public:
  // prefix: read `prefix + name` for every name (SparseConvDepthwise's "dw_" attributes)
  Attrs(const Api& api, const OrtKernelInfo* info, std::string prefix = "")
      : api_(api), info_(info), prefix_(std::move(prefix)) {}
  bool has(const char* name) const;
  // Whether the node carries `name` with any type, including those this API level cannot read
  // (lists of strings, graphs, tensors): told apart from "absent" by ORT's error message.
  bool present(const char* name) const;
  // Required (throw if missing) or with a default; throw if present with another type.
  int64_t get_int(const char* name) const;
  int64_t get_int(const char* name, int64_t def) const;
  float get_float(const char* name) const;
  float get_float(const char* name, float def) const;
  std::string get_string(const char* name) const;
  std::string get_string(const char* name, const std::string& def) const;
  std::vector<int64_t> get_ints(const char* name) const;
  std::vector<int64_t> get_ints(const char* name, const std::vector<int64_t>& def) const;
  std::string key(const char* name) const { return prefix_ + name; }  // the name on the node

 private:
  enum Kind { kMissing, kInt, kFloat, kString, kInts, kFloats };
  Kind kind(const char* name) const;
  bool try_int(const char* name, int64_t* out) const;
  bool try_float(const char* name, float* out) const;
  bool try_string(const char* name, std::string* out) const;
  bool try_ints(const char* name, std::vector<int64_t>* out) const;
  bool try_floats(const char* name) const;
  [[noreturn]] void wrong_type(const char* name, const char* want) const;
  const Api& api_;
  const OrtKernelInfo* info_;
  std::string prefix_;
};

// Fails creation naming the first attribute the op does not implement.  The C API has no way
// to list a node's attributes, so the names probed are those a node could plausibly carry:
// every attribute of the stock ops the sparsekit ops replace (Conv, Gemm, LSTM, GRU, RNN,
// MaxPool) and of the other sparsekit ops.  A stock attribute at its default value is
// accepted (auto_pad "NOTSET", group 1, input_forget 0, layout 0).
void refuse_unimplemented(const Attrs& a, std::initializer_list<const char*> implemented);

// Every weight, bias and prediction tensor of every op must be finite (docs/format.md): a
// NaN or Inf there fails creation naming the tensor and the first bad position.
void require_finite(const float* p, size_t n, const std::string& what);

// The most elements one output may have.  A few-KB model must not be able to make one run
// allocate gigabytes (issue 21): 2^31 float32 elements is 8 GiB.
constexpr int64_t kMaxOutputElements = int64_t(1) << 31;
// Throws (at run time, before anything is allocated) when `dims` has more elements than
// kMaxOutputElements or their product overflows; `what` names the tensor ("output Y").
void check_output_size(const std::vector<int64_t>& dims, const char* what);

// ---- tensors -------------------------------------------------------------------------------
struct TensorView {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> shape;
  size_t count = 0;
  void* data = nullptr;
  std::string shape_str() const;
};

// Shape/type/data of a tensor value (borrowed data pointer).
TensorView view_tensor(const Api& api, const OrtValue* v, const char* what);

// Whether node input `index` exists (present and not the empty name "").
bool input_present(const Api& api, const OrtKernelInfo* info, size_t index);
// Node input `index` as a constant initializer; throws if it is not one.
TensorView constant_input(const Api& api, const OrtKernelInfo* info, size_t index,
                          const char* what);
// The static shape of node input `index` known at creation; dims unknown are -1.
// Returns false when no shape is known.
bool input_static_shape(const Api& api, const OrtKernelInfo* info, size_t index,
                        std::vector<int64_t>* dims);

std::string node_name(const Api& api, const OrtKernelInfo* info);
void log_verbose(const Api& api, const OrtKernelInfo* info, const std::string& msg);

// ---- the activation epilogue ---------------------------------------------------------------
struct Activation {
  std::string name = "none";  // none | relu | clip
  float lo = -__builtin_inff();
  float hi = __builtin_inff();
};
Activation read_activation(const Attrs& a);

// ---- scratch memory (per call, 64-byte aligned) --------------------------------------------
// Blocks come from a small per-thread cache of freed ones: a large block from malloc is fresh
// mmap'd memory on every call (glibc's mmap threshold), and faulting its pages in cost more
// than the work on it (MobileNetV1's stem: 613 KiB of phase planes, ~150 faults a call,
// 0.32 -> 0.5-0.8 ms inside the network).
void* scratch_take(size_t bytes, size_t* capacity);  // 64-byte aligned, >= bytes
void scratch_give(void* p, size_t capacity);          // back to this thread's cache

template <typename T>
class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(size_t n) { reset(n); }
  ~Scratch() { release(); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  void reset(size_t n) {
    release();
    if (n == 0) return;
    p_ = static_cast<T*>(scratch_take(n * sizeof(T), &cap_));
  }
  T* get() const { return p_; }

 private:
  void release() {
    if (p_) scratch_give(p_, cap_);
    p_ = nullptr;
  }
  T* p_ = nullptr;
  size_t cap_ = 0;
};

// A read-only aligned array built once at kernel creation.
template <typename T>
struct AlignedAllocator {
  using value_type = T;
  AlignedAllocator() = default;
  template <typename U>
  AlignedAllocator(const AlignedAllocator<U>&) {}
  T* allocate(size_t n) {
    size_t bytes = (n * sizeof(T) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, bytes ? bytes : 64);
    if (!p) throw std::bad_alloc();
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { std::free(p); }
  template <typename U>
  bool operator==(const AlignedAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const AlignedAllocator<U>&) const { return false; }
};
template <typename T>
using AVec = std::vector<T, AlignedAllocator<T>>;

// ---- ORT's intra-op pool -------------------------------------------------------------------
// Calls f(i) for i in [0, n) through KernelContext_ParallelFor.  f must be safe to run
// concurrently; an exception inside f is caught on the worker and rethrown here afterwards.
template <typename F>
void parallel_for(const Api& api, OrtKernelContext* ctx, size_t n, F&& f) {
  if (n == 0) return;
  if (n == 1) {
    f(size_t(0));
    return;
  }
  struct Shared {
    F* f;
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string msg;
  } sh;
  sh.f = &f;
  auto trampoline = [](void* usr, size_t i) {
    auto* s = static_cast<Shared*>(usr);
    if (s->failed.load(std::memory_order_relaxed)) return;
    try {
      (*s->f)(i);
    } catch (const std::exception& e) {
      std::lock_guard<std::mutex> lk(s->mu);
      if (!s->failed.exchange(true)) s->msg = e.what();
    } catch (...) {
      std::lock_guard<std::mutex> lk(s->mu);
      if (!s->failed.exchange(true)) s->msg = "unknown error in a worker";
    }
  };
  check(api, api.KernelContext_ParallelFor()(ctx, +trampoline, n, 0, &sh),
        "KernelContext_ParallelFor");
  if (sh.failed.load()) throw Error(sh.msg, ORT_RUNTIME_EXCEPTION);
}

std::string shape_str(const std::vector<int64_t>& s);

// The CPU this thread runs on (0 where unknown), and how many CPUs the machine has online.
int current_cpu();
int cpu_count();

// parallel_for over items [0, n) whose data lie in order (pixel ranges, row bands, channel
// blocks): the items are cut into one contiguous range per CPU, and a thread first takes the
// next item of its own CPU's range, then of the others'.  Consecutive ops that split the same
// tensor the same way then find their inputs in their own core's cache, where plain claiming
// order hands each thread a mix of both cores' outputs.  Every item still runs exactly once:
// each of the n calls ORT makes claims one item.
template <typename F>
void parallel_for_affine(const Api& api, OrtKernelContext* ctx, size_t n, F&& f) {
  const size_t R = std::min<size_t>(n, size_t(std::min(cpu_count(), 64)));
  if (R <= 1) return parallel_for(api, ctx, n, [&](size_t i) { f(i); });
  std::atomic<size_t> next[64];
  for (size_t r = 0; r < R; ++r) next[r].store(n * r / R, std::memory_order_relaxed);
  parallel_for(api, ctx, n, [&](size_t) {
    const size_t c = size_t(current_cpu()) % R;
    for (size_t k = 0; k < R; ++k) {
      const size_t r = (c + k) % R;
      const size_t i = next[r].fetch_add(1, std::memory_order_relaxed);
      if (i < n * (r + 1) / R) return f(i);
    }
  });
}

}  // namespace skort
