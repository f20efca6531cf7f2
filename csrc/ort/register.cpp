// PLACEHOLDER until the custom-op library lands.
struct OrtStatus; struct OrtSessionOptions; struct OrtApiBase;
extern "C" __attribute__((visibility("default")))
OrtStatus* RegisterCustomOps(OrtSessionOptions*, const OrtApiBase*) { return nullptr; }
