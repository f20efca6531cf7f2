#include "ort/common.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <new>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>
#if defined(__linux__)
#include <sched.h>
#endif

namespace skort {

int current_cpu() {
#if defined(__linux__)
  const int c = sched_getcpu();
  return c < 0 ? 0 : c;
#else
  return 0;
#endif
}

int cpu_count() {
  static const int n = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return n;
}

namespace {
// Freed scratch blocks of this thread: at most kCacheBlocks of them and kCacheBytes in all,
// oldest dropped first.
constexpr size_t kCacheBytes = size_t(32) << 20, kCacheBlocks = 16;
struct ScratchCache {
  std::vector<std::pair<void*, size_t>> blocks;  // (block, capacity), oldest first
  size_t bytes = 0;
  ~ScratchCache() {
    for (auto& b : blocks) std::free(b.first);
  }
};
thread_local ScratchCache t_scratch;
}  // namespace

void* scratch_take(size_t bytes, size_t* capacity) {
  bytes = (bytes + 63) / 64 * 64;
  auto& c = t_scratch;
  size_t best = c.blocks.size();
  for (size_t i = 0; i < c.blocks.size(); ++i)  // the smallest cached block that fits
    if (c.blocks[i].second >= bytes &&
        (best == c.blocks.size() || c.blocks[i].second < c.blocks[best].second))
      best = i;
  if (best < c.blocks.size()) {
    auto b = c.blocks[best];
    c.blocks.erase(c.blocks.begin() + std::ptrdiff_t(best));
    c.bytes -= b.second;
    *capacity = b.second;
    return b.first;
  }
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  *capacity = bytes;
  return p;
}

void scratch_give(void* p, size_t capacity) {
  auto& c = t_scratch;
  if (capacity > kCacheBytes) return std::free(p);
  while (!c.blocks.empty() &&
         (c.bytes + capacity > kCacheBytes || c.blocks.size() >= kCacheBlocks)) {
    std::free(c.blocks.front().first);
    c.bytes -= c.blocks.front().second;
    c.blocks.erase(c.blocks.begin());
  }
  c.blocks.emplace_back(p, capacity);
  c.bytes += capacity;
}

void check(const Api& api, OrtStatus* st, const char* what) {
  if (!st) return;
  std::string msg = std::string(what) + ": " + api.GetErrorMessage()(st);
  OrtErrorCode code = api.GetErrorCode()(st);
  api.ReleaseStatus()(st);
  throw Error(msg, code == ORT_OK ? ORT_FAIL : code);
}

// Releases a status without looking at it; returns whether there was one.
static bool failed(const Api& api, OrtStatus* st) {
  if (!st) return false;
  api.ReleaseStatus()(st);
  return true;
}

const char* dtype_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING: return "string";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    default: return "an unsupported type";
  }
}

std::string shape_str(const std::vector<int64_t>& s) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ']';
  return o.str();
}

std::string TensorView::shape_str() const { return skort::shape_str(shape); }

// ---- attributes ----------------------------------------------------------------------------
bool Attrs::try_int(const char* name, int64_t* out) const {
  return !failed(api_, api_.KernelInfoGetAttribute_int64()(info_, key(name).c_str(), out));
}

bool Attrs::try_float(const char* name, float* out) const {
  return !failed(api_, api_.KernelInfoGetAttribute_float()(info_, key(name).c_str(), out));
}

bool Attrs::try_string(const char* attr, std::string* out) const {
  const std::string k = key(attr);
  const char* name = k.c_str();
  size_t size = 0;
  if (failed(api_, api_.KernelInfoGetAttribute_string()(info_, name, nullptr, &size))) return false;
  std::string buf(size + 1, '\0');
  size_t cap = buf.size();
  if (failed(api_, api_.KernelInfoGetAttribute_string()(info_, name, &buf[0], &cap))) return false;
  buf.resize(std::min(cap, buf.size()));
  while (!buf.empty() && buf.back() == '\0') buf.pop_back();
  *out = buf;
  return true;
}

bool Attrs::try_ints(const char* attr, std::vector<int64_t>* out) const {
  const std::string k = key(attr);
  const char* name = k.c_str();
  size_t n = 0;
  if (failed(api_, api_.KernelInfoGetAttributeArray_int64()(info_, name, nullptr, &n))) return false;
  std::vector<int64_t> v(n);
  if (n) {
    size_t cap = n;
    if (failed(api_, api_.KernelInfoGetAttributeArray_int64()(info_, name, v.data(), &cap)))
      return false;
    v.resize(std::min(cap, n));
  }
  *out = std::move(v);
  return true;
}

bool Attrs::try_floats(const char* name) const {
  size_t n = 0;
  return !failed(api_,
                 api_.KernelInfoGetAttributeArray_float()(info_, key(name).c_str(), nullptr, &n));
}

Attrs::Kind Attrs::kind(const char* name) const {
  int64_t i;
  float f;
  std::string s;
  std::vector<int64_t> v;
  if (try_int(name, &i)) return kInt;
  if (try_float(name, &f)) return kFloat;
  if (try_string(name, &s)) return kString;
  if (try_ints(name, &v)) return kInts;
  if (try_floats(name)) return kFloats;
  return kMissing;
}

bool Attrs::has(const char* name) const { return kind(name) != kMissing; }

bool Attrs::present(const char* name) const {
  if (has(name)) return true;
  // A type none of the getters reads: ORT says "Attribute name and type don't match" rather
  // than "No attribute with name" (the same wording from 1.17 to 1.32).  An unknown wording
  // counts as absent, so a future runtime cannot make every node fail.
  int64_t v;
  OrtStatus* st = api_.KernelInfoGetAttribute_int64()(info_, key(name).c_str(), &v);
  if (!st) return true;
  const std::string m = api_.GetErrorMessage()(st);
  api_.ReleaseStatus()(st);
  return m.find("don't match") != std::string::npos;
}

void refuse_unimplemented(const Attrs& a, std::initializer_list<const char*> implemented) {
  static const char* const kProbed[] = {
      // ONNX Conv / ConvTranspose / MaxPool
      "auto_pad", "group", "dilations", "kernel_shape", "pads", "strides", "output_padding",
      "output_shape", "ceil_mode", "storage_order",
      // ONNX Gemm
      "alpha", "beta", "transA", "transB",
      // ONNX LSTM / GRU / RNN
      "activations", "activation_alpha", "activation_beta", "clip", "direction", "hidden_size",
      "input_forget", "layout", "linear_before_reset",
      // the sparsekit ops
      "format", "block", "bank_size", "activation", "clip_min", "clip_max",
      "residual_after_act", "out_channels", "in_channels", "out_features", "in_features",
      "input_size", "w_bank_size", "r_bank_size", "margin", "pool_kernel", "pool_strides",
      "pool_pads"};
  for (const char* name : kProbed) {
    bool ok = false;
    for (const char* i : implemented) ok = ok || std::string(i) == name;
    if (ok || !a.present(name)) continue;
    const std::string n = name;
    // stock attributes at their defaults change nothing
    if (n == "auto_pad" && a.get_string(name, "") == "NOTSET") continue;
    if (n == "group" && a.get_int(name, 0) == 1) continue;
    if ((n == "input_forget" || n == "layout") && a.get_int(name, 1) == 0) continue;
    throw Error("attribute '" + a.key(name) +
                "' is not implemented by this op (it would be silently ignored): remove it, or "
                "keep the layer as the stock onnxruntime op");
  }
}

void require_finite(const float* p, size_t n, const std::string& what) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(p[i]))
      throw Error(what + " has a non-finite value (" + std::to_string(p[i]) + " at flat index " +
                  std::to_string(i) + "); sparsekit ops require finite weights and biases");
}

void check_output_size(const std::vector<int64_t>& dims, const char* what) {
  int64_t count = 1;
  bool over = false;
  for (int64_t d : dims) over = over || d < 0 || __builtin_mul_overflow(count, d, &count);
  if (over || count > kMaxOutputElements)
    throw Error(std::string(what) + " of shape " + shape_str(dims) + " would have " +
                (over ? std::string("more than 2^63") : std::to_string(count)) +
                " elements, more than the 2^31 a sparsekit op allocates for one output");
}

void Attrs::wrong_type(const char* name, const char* want) const {
  if (kind(name) == kMissing)
    throw Error("missing required attribute '" + key(name) + "' (" + want + ")");
  throw Error("attribute '" + key(name) + "' must be " + want);
}

int64_t Attrs::get_int(const char* name) const {
  int64_t v;
  if (!try_int(name, &v)) wrong_type(name, "an int");
  return v;
}
int64_t Attrs::get_int(const char* name, int64_t def) const {
  int64_t v;
  if (try_int(name, &v)) return v;
  if (has(name)) wrong_type(name, "an int");
  return def;
}
float Attrs::get_float(const char* name) const {
  float v;
  if (!try_float(name, &v)) wrong_type(name, "a float");
  return v;
}
float Attrs::get_float(const char* name, float def) const {
  float v;
  if (try_float(name, &v)) return v;
  if (has(name)) wrong_type(name, "a float");
  return def;
}
std::string Attrs::get_string(const char* name) const {
  std::string v;
  if (!try_string(name, &v)) wrong_type(name, "a string");
  return v;
}
std::string Attrs::get_string(const char* name, const std::string& def) const {
  std::string v;
  if (try_string(name, &v)) return v;
  if (has(name)) wrong_type(name, "a string");
  return def;
}
std::vector<int64_t> Attrs::get_ints(const char* name) const {
  std::vector<int64_t> v;
  if (!try_ints(name, &v)) wrong_type(name, "a list of ints");
  return v;
}
std::vector<int64_t> Attrs::get_ints(const char* name, const std::vector<int64_t>& def) const {
  std::vector<int64_t> v;
  if (try_ints(name, &v)) return v;
  if (has(name)) wrong_type(name, "a list of ints");
  return def;
}

// ---- tensors -------------------------------------------------------------------------------
namespace {
struct ShapeInfoGuard {
  const Api& api;
  OrtTensorTypeAndShapeInfo* p = nullptr;
  ~ShapeInfoGuard() {
    if (p) api.ReleaseTensorTypeAndShapeInfo()(p);
  }
};
struct TypeInfoGuard {
  const Api& api;
  OrtTypeInfo* p = nullptr;
  ~TypeInfoGuard() {
    if (p) api.ReleaseTypeInfo()(p);
  }
};
}  // namespace

TensorView view_tensor(const Api& api, const OrtValue* v, const char* what) {
  if (!v) throw Error(std::string(what) + ": missing");
  int is_tensor = 0;
  check(api, api.IsTensor()(v, &is_tensor), what);
  if (!is_tensor) throw Error(std::string(what) + ": must be a tensor");
  TensorView t;
  ShapeInfoGuard g{api};
  check(api, api.GetTensorTypeAndShape()(v, &g.p), what);
  check(api, api.GetTensorElementType()(g.p, &t.type), what);
  size_t rank = 0;
  check(api, api.GetDimensionsCount()(g.p, &rank), what);
  t.shape.assign(rank, 0);
  if (rank) check(api, api.GetDimensions()(g.p, t.shape.data(), rank), what);
  check(api, api.GetTensorShapeElementCount()(g.p, &t.count), what);
  for (int64_t d : t.shape)
    if (d < 0) throw Error(std::string(what) + ": negative dimension in " + t.shape_str());
  if (t.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING) {
    void* data = nullptr;
    check(api, api.GetTensorMutableData()(const_cast<OrtValue*>(v), &data), what);
    t.data = data;
    if (t.count && !data) throw Error(std::string(what) + ": tensor has no data");
  }
  return t;
}

bool input_present(const Api& api, const OrtKernelInfo* info, size_t index) {
  size_t n = 0;
  check(api, api.KernelInfo_GetInputCount()(info, &n), "KernelInfo_GetInputCount");
  if (index >= n) return false;
  size_t size = 0;
  if (failed(api, api.KernelInfo_GetInputName()(info, index, nullptr, &size))) return false;
  return size > 1;  // the size counts the terminating NUL: "" gives 1
}

TensorView constant_input(const Api& api, const OrtKernelInfo* info, size_t index,
                          const char* what) {
  int is_const = 0;
  const OrtValue* v = nullptr;
  OrtStatus* st = api.KernelInfoGetConstantInput_tensor()(info, index, &is_const, &v);
  if (st) {
    std::string m = api.GetErrorMessage()(st);
    api.ReleaseStatus()(st);
    throw Error(std::string("input '") + what + "' (input " + std::to_string(index) +
                ") could not be read as a constant: " + m);
  }
  if (!is_const || !v)
    throw Error(std::string("input '") + what + "' (input " + std::to_string(index) +
                ") must be a constant initializer, not a graph input or computed value");
  return view_tensor(api, v, what);
}

bool input_static_shape(const Api& api, const OrtKernelInfo* info, size_t index,
                        std::vector<int64_t>* dims) {
  TypeInfoGuard ti{api};
  if (failed(api, api.KernelInfo_GetInputTypeInfo()(info, index, &ti.p)) || !ti.p) return false;
  ONNXType ot = ONNX_TYPE_UNKNOWN;
  if (failed(api, api.GetOnnxTypeFromTypeInfo()(ti.p, &ot)) || ot != ONNX_TYPE_TENSOR) return false;
  const OrtTensorTypeAndShapeInfo* tsi = nullptr;  // borrowed from the type info
  if (failed(api, api.CastTypeInfoToTensorInfo()(ti.p, &tsi)) || !tsi) return false;
  size_t rank = 0;
  if (failed(api, api.GetDimensionsCount()(tsi, &rank))) return false;
  dims->assign(rank, -1);
  if (rank && failed(api, api.GetDimensions()(tsi, dims->data(), rank))) return false;
  return rank > 0;
}

std::string node_name(const Api& api, const OrtKernelInfo* info) {
  size_t size = 0;
  if (failed(api, api.KernelInfo_GetNodeName()(info, nullptr, &size)) || size == 0) return "";
  std::string buf(size, '\0');
  if (failed(api, api.KernelInfo_GetNodeName()(info, &buf[0], &size))) return "";
  while (!buf.empty() && buf.back() == '\0') buf.pop_back();
  return buf;
}

void log_verbose(const Api& api, const OrtKernelInfo* info, const std::string& msg) {
  const OrtLogger* logger = nullptr;
  if (failed(api, api.KernelInfo_GetLogger()(info, &logger)) || !logger) return;
  failed(api, api.Logger_LogMessage()(logger, ORT_LOGGING_LEVEL_VERBOSE, msg.c_str(), __FILE__,
                                      __LINE__, "sparsekit"));
}

Activation read_activation(const Attrs& a) {
  Activation act;
  act.name = a.get_string("activation", "none");
  if (act.name == "none") {
  } else if (act.name == "relu") {
    act.lo = 0.0f;
  } else if (act.name == "clip") {
    act.lo = a.get_float("clip_min", -__builtin_inff());
    act.hi = a.get_float("clip_max", __builtin_inff());
    if (std::isnan(act.lo) || std::isnan(act.hi))
      throw Error("clip_min/clip_max must not be NaN");
    if (act.lo > act.hi)
      throw Error("clip_min (" + std::to_string(act.lo) + ") is greater than clip_max (" +
                  std::to_string(act.hi) + ")");
  } else {
    throw Error("attribute 'activation' must be \"none\", \"relu\" or \"clip\", got \"" +
                act.name + "\"");
  }
  if (act.name != "clip" && (a.has("clip_min") || a.has("clip_max")))
    throw Error("clip_min/clip_max are only valid with activation \"clip\" (activation is \"" +
                act.name + "\")");
  return act;
}

}  // namespace skort
