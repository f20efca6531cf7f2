"""Reference architectures (the zoo), built in plain onnx."""
