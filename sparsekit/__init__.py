"""sparsekit: weight sparsity that makes ONNX models faster on CPUs.

Pipeline: ``prune`` (plain ONNX with zeros) -> ``convert`` (ai.sparsekit ops) -> run in
onnxruntime with the custom-op library from ``get_library_path()``.
"""
from .errors import SparsekitError

__version__ = "0.1.0"

__all__ = ["SparsekitError", "__version__"]
