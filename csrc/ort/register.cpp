// RegisterCustomOps: the library's only exported symbol.  Registers domain "ai.sparsekit"
// (op set 1) with SparseConv, SparseGemm, DepthwiseConv, SparseLSTM, SparseGRU,
// PredictedConv and Reorder.
//
// ABI rules followed here (shared/ort-abi.md): the API table comes only from the OrtApiBase
// argument (GetApi(17); NULL on an older runtime -> return NULL, the ops stay unregistered);
// OrtCustomOp structs are zero-initialised static objects of the full 26-member layout with
// version 17 and the V2 callbacks; domains are parked for the library's lifetime; no C++
// exception ever crosses a callback, every error is an OrtStatus from CreateStatus whose message
// names the op and the node.
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "ort/lstm.h"
#include "ort/ops.h"

namespace skort {

const OrtValue* get_input(const Api& api, OrtKernelContext* ctx, size_t index) {
  size_t n = 0;
  check(api, api.KernelContext_GetInputCount()(ctx, &n), "KernelContext_GetInputCount");
  if (index >= n) return nullptr;
  const OrtValue* v = nullptr;
  check(api, api.KernelContext_GetInput()(ctx, index, &v), "KernelContext_GetInput");
  return v;
}

const float* get_residual(const Api& api, OrtKernelContext* ctx, size_t index,
                          const std::vector<int64_t>& ydims) {
  const OrtValue* rv = get_input(api, ctx, index);
  if (!rv) return nullptr;
  const TensorView R = view_tensor(api, rv, "residual");
  if (R.type != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
    throw Error(std::string("residual must be float32, got ") + dtype_name(R.type));
  if (R.shape != ydims)
    throw Error("residual has shape " + R.shape_str() + ", expected Y's shape " +
                shape_str(ydims));
  return static_cast<const float*>(R.data);
}

float* get_output(const Api& api, OrtKernelContext* ctx, const std::vector<int64_t>& dims) {
  check_output_size(dims, "output Y");
  OrtValue* out = nullptr;
  check(api, api.KernelContext_GetOutput()(ctx, 0, dims.data(), dims.size(), &out),
        "KernelContext_GetOutput");
  void* data = nullptr;
  check(api, api.GetTensorMutableData()(out, &data), "GetTensorMutableData");
  size_t count = 1;
  for (int64_t d : dims) count *= size_t(d);
  if (count && !data) throw Error("output has no data", ORT_FAIL);
  return static_cast<float*>(data);
}

namespace {

// An op's outputs: K::outputs() where the kernel declares them (SparseLSTM/GRU), else one
// required float32 output.
template <class K, class = void>
struct OutputSpec {
  static const std::vector<IoSpec>& get() {
    static const std::vector<IoSpec> v = {
        {ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, INPUT_OUTPUT_REQUIRED}};
    return v;
  }
};
template <class K>
struct OutputSpec<K, std::void_t<decltype(K::outputs())>> {
  static const std::vector<IoSpec>& get() { return K::outputs(); }
};

OrtStatus* make_status(const Api& api, OrtErrorCode code, const char* op, const std::string& node,
                       const char* msg) {
  std::string m = std::string(op) + " node '" + node + "': " + msg;
  return api.CreateStatus()(code, m.c_str());
}

template <class K>
struct OpDef {
  static OrtStatus* create(const OrtCustomOp*, const OrtApi* table, const OrtKernelInfo* info,
                           void** kernel) {
    Api api(table);
    std::string node = "?";
    try {
      node = node_name(api, info);
      *kernel = nullptr;
      auto k = std::make_unique<Kernel>(api, info, node);
      *kernel = k.release();
      return nullptr;
    } catch (const Error& e) {
      return make_status(api, e.code(), K::kName, node, e.what());
    } catch (const std::bad_alloc&) {
      return make_status(api, ORT_FAIL, K::kName, node, "out of memory while creating the kernel");
    } catch (const std::exception& e) {
      return make_status(api, ORT_FAIL, K::kName, node, e.what());
    } catch (...) {
      return make_status(api, ORT_FAIL, K::kName, node, "unknown error");
    }
  }

  static OrtStatus* compute(void* kernel, OrtKernelContext* ctx) {
    auto* k = static_cast<Kernel*>(kernel);
    try {
      k->impl.compute(ctx);
      return nullptr;
    } catch (const Error& e) {
      return make_status(k->api, e.code(), K::kName, k->node, e.what());
    } catch (const std::bad_alloc&) {
      return make_status(k->api, ORT_FAIL, K::kName, k->node, "out of memory");
    } catch (const std::exception& e) {
      return make_status(k->api, ORT_FAIL, K::kName, k->node, e.what());
    } catch (...) {
      return make_status(k->api, ORT_FAIL, K::kName, k->node, "unknown error");
    }
  }

  static void destroy(void* kernel) { delete static_cast<Kernel*>(kernel); }
  static const char* name(const OrtCustomOp*) { return K::kName; }
  static const char* ep(const OrtCustomOp*) { return nullptr; }  // CPU
  static size_t input_count(const OrtCustomOp*) { return K::inputs().size(); }
  static ONNXTensorElementDataType input_type(const OrtCustomOp*, size_t i) {
    const auto& in = K::inputs();
    return i < in.size() ? in[i].type : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  static OrtCustomOpInputOutputCharacteristic input_ch(const OrtCustomOp*, size_t i) {
    const auto& in = K::inputs();
    return i < in.size() ? in[i].ch : INPUT_OUTPUT_OPTIONAL;
  }
  static size_t output_count(const OrtCustomOp*) { return OutputSpec<K>::get().size(); }
  static ONNXTensorElementDataType output_type(const OrtCustomOp*, size_t i) {
    const auto& out = OutputSpec<K>::get();
    return i < out.size() ? out[i].type : ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  }
  static OrtCustomOpInputOutputCharacteristic output_ch(const OrtCustomOp*, size_t i) {
    const auto& out = OutputSpec<K>::get();
    return i < out.size() ? out[i].ch : INPUT_OUTPUT_OPTIONAL;
  }
  static OrtMemType mem_type(const OrtCustomOp*, size_t) { return OrtMemTypeDefault; }
  static int variadic_min_arity(const OrtCustomOp*) { return 1; }
  static int variadic_homogeneity(const OrtCustomOp*) { return 1; }
  static int start_version(const OrtCustomOp*) { return 1; }

  struct Kernel {
    Kernel(const Api& a, const OrtKernelInfo* info, std::string n)
        : api(a), node(std::move(n)), impl(a, info) {}
    Api api;
    std::string node;
    K impl;
  };

  static const OrtCustomOp* op() {
    static const OrtCustomOp def = [] {
      OrtCustomOp o{};  // every member zero, including those past `version`
      o.version = kOrtApiVersion;
      o.CreateKernel = nullptr;  // CreateKernelV2 is used (version >= 16)
      o.GetName = name;
      o.GetExecutionProviderType = ep;
      o.GetInputType = input_type;
      o.GetInputTypeCount = input_count;
      o.GetOutputType = output_type;
      o.GetOutputTypeCount = output_count;
      o.KernelCompute = nullptr;  // KernelComputeV2 is used
      o.KernelDestroy = destroy;
      o.GetInputCharacteristic = input_ch;
      o.GetOutputCharacteristic = output_ch;
      o.GetInputMemoryType = mem_type;
      o.GetVariadicInputMinArity = variadic_min_arity;
      o.GetVariadicInputHomogeneity = variadic_homogeneity;
      o.GetVariadicOutputMinArity = variadic_min_arity;
      o.GetVariadicOutputHomogeneity = variadic_homogeneity;
      o.CreateKernelV2 = create;
      o.KernelComputeV2 = compute;
      o.InferOutputShapeFn = nullptr;
      o.GetStartVersion = start_version;
      o.GetEndVersion = nullptr;
      return o;
    }();
    return &def;
  }
};

}  // namespace
}  // namespace skort

extern "C" __attribute__((visibility("default"))) OrtStatus* RegisterCustomOps(
    OrtSessionOptions* options, const OrtApiBase* base) {
  using namespace skort;
  if (!base || !base->GetApi) return nullptr;
  const OrtApi* table = base->GetApi(kOrtApiVersion);
  if (!table) return nullptr;  // runtime older than 1.17: nothing we can even report with
  Api api(table);
  try {
    // Domains must outlive every session options that refers to them: park them forever.
    static std::mutex mu;
    static std::vector<OrtCustomOpDomain*> parked;
    std::lock_guard<std::mutex> lock(mu);
    OrtCustomOpDomain* domain = nullptr;
    check(api, api.CreateCustomOpDomain()("ai.sparsekit", &domain), "CreateCustomOpDomain");
    parked.push_back(domain);
    for (const OrtCustomOp* op : {OpDef<SparseConvKernel>::op(), OpDef<SparseGemmKernel>::op(),
                                  OpDef<DepthwiseConvKernel>::op(),
                                  OpDef<SparseConvDepthwiseKernel>::op(),
                                  OpDef<SparseLSTMKernel>::op(), OpDef<SparseGRUKernel>::op(),
                                  OpDef<PredictedConvKernel>::op(),
                                  OpDef<ReorderKernel>::op()})
      check(api, api.CustomOpDomain_Add()(domain, op), "CustomOpDomain_Add");
    check(api, api.AddCustomOpDomain()(options, domain), "AddCustomOpDomain");
    return nullptr;
  } catch (const Error& e) {
    std::string m = std::string("sparsekit: registering ai.sparsekit failed: ") + e.what();
    return api.CreateStatus()(e.code(), m.c_str());
  } catch (const std::exception& e) {
    std::string m = std::string("sparsekit: registering ai.sparsekit failed: ") + e.what();
    return api.CreateStatus()(ORT_FAIL, m.c_str());
  } catch (...) {
    return api.CreateStatus()(ORT_FAIL, "sparsekit: registering ai.sparsekit failed");
  }
}
