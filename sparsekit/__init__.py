"""sparsekit: weight sparsity that makes ONNX models faster on CPUs.

Pipeline: ``prune`` (plain ONNX with zeros) -> ``convert`` (ai.sparsekit ops) -> run in
onnxruntime with the custom-op library from ``get_library_path()``.
"""
from .analyze import analyze
from .calibration import load_calibration
from .convert import convert
from .errors import SparsekitError
from .finetune import finetune   # imports torch only when called: pip install 'sparsekit[train]'
from .pack import (make_depthwise_node, make_sparse_conv_node, make_sparse_gemm_node, pack_bank,
                   pack_bsr, unpack)
from .prune import prune
from .sessions import get_library_path, session
from .version import __version__

__all__ = ["prune", "analyze", "load_calibration", "convert", "finetune", "SparsekitError",
           "__version__", "get_library_path", "session", "pack_bsr",
           "pack_bank", "unpack", "make_sparse_conv_node", "make_sparse_gemm_node",
           "make_depthwise_node"]
