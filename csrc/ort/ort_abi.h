// sparsekit's own minimal declaration of the onnxruntime C ABI (no onnxruntime headers needed).
//
// Written from the facts in shared/ort-abi.md: opaque handle types, the enums we use, the two
// entry tables (OrtApiBase, the 26-member OrtCustomOp) and typed accessors for the OrtApi slots
// this library calls.  OrtApi itself stays opaque: it is an array of function pointers, and a slot
// is read by index through `skort::Api`, so the rest of the table needs no declaration.
// Every slot used here exists in API 17 (onnxruntime >= 1.17); the table only ever grows (P15).
#pragma once
#include <cstddef>
#include <cstdint>

extern "C" {

// ---- opaque handles ----------------------------------------------------------------------
struct OrtApi;
struct OrtStatus;
struct OrtSessionOptions;
struct OrtCustomOpDomain;
struct OrtKernelInfo;
struct OrtKernelContext;
struct OrtValue;
struct OrtTensorTypeAndShapeInfo;
struct OrtTypeInfo;
struct OrtLogger;
struct OrtShapeInferContext;
struct OrtOpAttr;

// ---- enums (C enums: int-sized) ----------------------------------------------------------
enum ONNXTensorElementDataType {
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED = 0,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT = 1,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8 = 2,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8 = 3,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16 = 4,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16 = 5,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 = 6,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64 = 7,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING = 8,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL = 9,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 = 10,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE = 11,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32 = 12,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64 = 13,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX64 = 14,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_COMPLEX128 = 15,
  ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16 = 16,
};

enum OrtErrorCode {
  ORT_OK = 0,
  ORT_FAIL = 1,
  ORT_INVALID_ARGUMENT = 2,
  ORT_NO_SUCHFILE = 3,
  ORT_NO_MODEL = 4,
  ORT_ENGINE_ERROR = 5,
  ORT_RUNTIME_EXCEPTION = 6,
  ORT_INVALID_PROTOBUF = 7,
  ORT_MODEL_LOADED = 8,
  ORT_NOT_IMPLEMENTED = 9,
  ORT_INVALID_GRAPH = 10,
  ORT_EP_FAIL = 11,
};

enum ONNXType {
  ONNX_TYPE_UNKNOWN = 0,
  ONNX_TYPE_TENSOR = 1,
};

enum OrtCustomOpInputOutputCharacteristic {
  INPUT_OUTPUT_REQUIRED = 0,
  INPUT_OUTPUT_OPTIONAL = 1,
  INPUT_OUTPUT_VARIADIC = 2,
};

enum OrtLoggingLevel {
  ORT_LOGGING_LEVEL_VERBOSE = 0,
  ORT_LOGGING_LEVEL_INFO = 1,
  ORT_LOGGING_LEVEL_WARNING = 2,
  ORT_LOGGING_LEVEL_ERROR = 3,
  ORT_LOGGING_LEVEL_FATAL = 4,
};

enum OrtMemType {
  OrtMemTypeCPUInput = -2,
  OrtMemTypeCPUOutput = -1,
  OrtMemTypeDefault = 0,
};

// ---- entry tables ------------------------------------------------------------------------
// Exactly two members, 16 bytes; ORT guarantees it never changes.
struct OrtApiBase {
  const OrtApi* (*GetApi)(uint32_t version);
  const char* (*GetVersionString)(void);
};

// The full 26-member layout (v18+, 208 bytes).  Zero-initialise it and fill the members up to
// the `version` you set (P3/P6).  Members past `version` are never read by ORT.
struct OrtCustomOp {
  uint32_t version;
  void* (*CreateKernel)(const OrtCustomOp* op, const OrtApi* api, const OrtKernelInfo* info);
  const char* (*GetName)(const OrtCustomOp* op);
  const char* (*GetExecutionProviderType)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetInputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetInputTypeCount)(const OrtCustomOp* op);
  ONNXTensorElementDataType (*GetOutputType)(const OrtCustomOp* op, size_t index);
  size_t (*GetOutputTypeCount)(const OrtCustomOp* op);
  void (*KernelCompute)(void* op_kernel, OrtKernelContext* context);
  void (*KernelDestroy)(void* op_kernel);
  OrtCustomOpInputOutputCharacteristic (*GetInputCharacteristic)(const OrtCustomOp* op,
                                                                 size_t index);
  OrtCustomOpInputOutputCharacteristic (*GetOutputCharacteristic)(const OrtCustomOp* op,
                                                                  size_t index);
  OrtMemType (*GetInputMemoryType)(const OrtCustomOp* op, size_t index);
  int (*GetVariadicInputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicInputHomogeneity)(const OrtCustomOp* op);
  int (*GetVariadicOutputMinArity)(const OrtCustomOp* op);
  int (*GetVariadicOutputHomogeneity)(const OrtCustomOp* op);
  OrtStatus* (*CreateKernelV2)(const OrtCustomOp* op, const OrtApi* api,
                               const OrtKernelInfo* info, void** kernel);
  OrtStatus* (*KernelComputeV2)(void* op_kernel, OrtKernelContext* context);
  OrtStatus* (*InferOutputShapeFn)(const OrtCustomOp* op, OrtShapeInferContext* ctx);
  int (*GetStartVersion)(const OrtCustomOp* op);
  int (*GetEndVersion)(const OrtCustomOp* op);
  size_t (*GetMayInplace)(int** input_index, int** output_index);
  void (*ReleaseMayInplace)(int* input_index, int* output_index);
  size_t (*GetAliasMap)(int** input_index, int** output_index);
  void (*ReleaseAliasMap)(int* input_index, int* output_index);
};

}  // extern "C"

static_assert(sizeof(OrtApiBase) == 16, "OrtApiBase is two function pointers");
static_assert(sizeof(OrtCustomOp) == 208, "OrtCustomOp must have the 26-member layout");
static_assert(offsetof(OrtCustomOp, CreateKernel) == 8, "4 bytes of padding follow version");
static_assert(offsetof(OrtCustomOp, GetInputMemoryType) == 96, "OrtCustomOp layout");
static_assert(offsetof(OrtCustomOp, CreateKernelV2) == 136, "OrtCustomOp layout");
static_assert(offsetof(OrtCustomOp, InferOutputShapeFn) == 152, "OrtCustomOp layout");
static_assert(offsetof(OrtCustomOp, GetMayInplace) == 176, "OrtCustomOp layout");
static_assert(sizeof(ONNXTensorElementDataType) == 4 && sizeof(OrtErrorCode) == 4 &&
                  sizeof(OrtCustomOpInputOutputCharacteristic) == 4 && sizeof(OrtMemType) == 4,
              "ORT enums are int-sized");

namespace skort {

// The API version asked for in RegisterCustomOps and set as OrtCustomOp::version.
constexpr uint32_t kOrtApiVersion = 17;

// Typed access to the OrtApi slots this library uses.  `OrtApi` is an array of plain C function
// pointers (ORT_API_CALL is empty on Linux); each accessor reads its slot and casts it to the
// documented signature.  A wrong slot number here fails loudly in tests/test_ort_ops.py.
class Api {
 public:
  explicit Api(const OrtApi* table = nullptr) : t_(table) {}
  const OrtApi* table() const { return t_; }
  explicit operator bool() const { return t_ != nullptr; }

#define SK_ORT_SLOT(index, Name, Ret, Params)                                  \
  using Name##_fn = Ret(*) Params;                                              \
  Name##_fn Name() const { return reinterpret_cast<Name##_fn>(slot(index)); }

  // status
  SK_ORT_SLOT(0, CreateStatus, OrtStatus*, (OrtErrorCode code, const char* msg))
  SK_ORT_SLOT(1, GetErrorCode, OrtErrorCode, (const OrtStatus* status))
  SK_ORT_SLOT(2, GetErrorMessage, const char*, (const OrtStatus* status))
  SK_ORT_SLOT(93, ReleaseStatus, void, (OrtStatus* status))
  // registration
  SK_ORT_SLOT(26, CreateCustomOpDomain, OrtStatus*, (const char* domain, OrtCustomOpDomain** out))
  SK_ORT_SLOT(27, CustomOpDomain_Add, OrtStatus*, (OrtCustomOpDomain* d, const OrtCustomOp* op))
  SK_ORT_SLOT(28, AddCustomOpDomain, OrtStatus*, (OrtSessionOptions* o, OrtCustomOpDomain* d))
  // kernel info (creation time)
  SK_ORT_SLOT(85, KernelInfoGetAttribute_float, OrtStatus*,
              (const OrtKernelInfo* info, const char* name, float* out))
  SK_ORT_SLOT(86, KernelInfoGetAttribute_int64, OrtStatus*,
              (const OrtKernelInfo* info, const char* name, int64_t* out))
  SK_ORT_SLOT(87, KernelInfoGetAttribute_string, OrtStatus*,
              (const OrtKernelInfo* info, const char* name, char* out, size_t* size))
  SK_ORT_SLOT(162, KernelInfoGetAttributeArray_float, OrtStatus*,
              (const OrtKernelInfo* info, const char* name, float* out, size_t* size))
  SK_ORT_SLOT(163, KernelInfoGetAttributeArray_int64, OrtStatus*,
              (const OrtKernelInfo* info, const char* name, int64_t* out, size_t* size))
  SK_ORT_SLOT(230, KernelInfo_GetInputCount, OrtStatus*, (const OrtKernelInfo* info, size_t* out))
  SK_ORT_SLOT(232, KernelInfo_GetInputName, OrtStatus*,
              (const OrtKernelInfo* info, size_t index, char* out, size_t* size))
  SK_ORT_SLOT(234, KernelInfo_GetInputTypeInfo, OrtStatus*,
              (const OrtKernelInfo* info, size_t index, OrtTypeInfo** type_info))
  SK_ORT_SLOT(244, KernelInfo_GetNodeName, OrtStatus*,
              (const OrtKernelInfo* info, char* out, size_t* size))
  SK_ORT_SLOT(245, KernelInfo_GetLogger, OrtStatus*,
              (const OrtKernelInfo* info, const OrtLogger** logger))
  SK_ORT_SLOT(249, KernelInfoGetConstantInput_tensor, OrtStatus*,
              (const OrtKernelInfo* info, size_t index, int* is_constant, const OrtValue** out))
  // type info
  SK_ORT_SLOT(55, CastTypeInfoToTensorInfo, OrtStatus*,
              (const OrtTypeInfo* type_info, const OrtTensorTypeAndShapeInfo** out))
  SK_ORT_SLOT(56, GetOnnxTypeFromTypeInfo, OrtStatus*, (const OrtTypeInfo* ti, ONNXType* out))
  SK_ORT_SLOT(98, ReleaseTypeInfo, void, (OrtTypeInfo* type_info))
  // kernel context (run time)
  SK_ORT_SLOT(88, KernelContext_GetInputCount, OrtStatus*, (const OrtKernelContext* c, size_t* out))
  SK_ORT_SLOT(90, KernelContext_GetInput, OrtStatus*,
              (const OrtKernelContext* c, size_t index, const OrtValue** out))
  SK_ORT_SLOT(91, KernelContext_GetOutput, OrtStatus*,
              (OrtKernelContext* c, size_t index, const int64_t* dims, size_t dim_count,
               OrtValue** out))
  SK_ORT_SLOT(274, KernelContext_ParallelFor, OrtStatus*,
              (const OrtKernelContext* c, void (*fn)(void* usr, size_t i), size_t total,
               size_t num_batch, void* usr))
  // values / tensors
  SK_ORT_SLOT(50, IsTensor, OrtStatus*, (const OrtValue* value, int* out))
  SK_ORT_SLOT(51, GetTensorMutableData, OrtStatus*, (OrtValue* value, void** out))
  SK_ORT_SLOT(65, GetTensorTypeAndShape, OrtStatus*,
              (const OrtValue* value, OrtTensorTypeAndShapeInfo** out))
  SK_ORT_SLOT(60, GetTensorElementType, OrtStatus*,
              (const OrtTensorTypeAndShapeInfo* info, ONNXTensorElementDataType* out))
  SK_ORT_SLOT(61, GetDimensionsCount, OrtStatus*,
              (const OrtTensorTypeAndShapeInfo* info, size_t* out))
  SK_ORT_SLOT(62, GetDimensions, OrtStatus*,
              (const OrtTensorTypeAndShapeInfo* info, int64_t* dims, size_t dims_length))
  SK_ORT_SLOT(64, GetTensorShapeElementCount, OrtStatus*,
              (const OrtTensorTypeAndShapeInfo* info, size_t* out))
  SK_ORT_SLOT(99, ReleaseTensorTypeAndShapeInfo, void, (OrtTensorTypeAndShapeInfo* info))
  // logging
  SK_ORT_SLOT(247, Logger_LogMessage, OrtStatus*,
              (const OrtLogger* logger, OrtLoggingLevel severity, const char* message,
               const char* file_path, int line_number, const char* func_name))
#undef SK_ORT_SLOT

 private:
  using AnyFn = void (*)(void);
  AnyFn slot(size_t index) const { return reinterpret_cast<const AnyFn*>(t_)[index]; }
  const OrtApi* t_;
};

}  // namespace skort
