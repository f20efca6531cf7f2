"""What convert decided: a row per layer, and the whole report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..predict import PredictedLayer

__all__ = ["LayerDecision", "ConvertReport"]


@dataclass
class LayerDecision:
    name: str
    op: str
    shape: List[int]              # the weight matrix [M, K]
    density: float                # nonzero weights / size
    pattern: str                  # what the zeros look like (detect.Pattern.describe)
    decision: str                 # "sparse", "dense", "depthwise"
    reason: str
    format: Optional[str] = None  # e.g. "bsr 1x4", "bank 64 1x1"; None when kept dense
    fused: str = ""               # absorbed epilogue, e.g. "batchnorm+residual+relu"
    dense_bytes: int = 0          # the weight as stored in the input model
    sparse_bytes: Optional[int] = None  # values + indices (+ group_ptr) in the output
    dense_ms: Optional[float] = None    # autotune timings of this layer (with its epilogue)
    sparse_ms: Optional[float] = None
    note: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ConvertReport:
    layers: List[LayerDecision] = field(default_factory=list)
    # Conv/Gemm/MatMul (and int8 ops) that are not candidates: no constant weight initializer
    skipped: List[Dict[str, str]] = field(default_factory=list)
    folded_bn: List[Dict[str, str]] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    settings: Dict[str, object] = field(default_factory=dict)
    # with predict_relu: one row per Conv -> ReLU/Clip(0, x) chain (predict.PredictedLayer)
    predicted: Optional[List[PredictedLayer]] = None

    @property
    def totals(self) -> dict:
        sparse = [l for l in self.layers if l.decision == "sparse"]
        dense_b = sum(l.dense_bytes for l in sparse)
        sparse_b = sum(l.sparse_bytes or 0 for l in sparse)
        before = sum(l.dense_bytes for l in self.layers)
        after = sum(l.sparse_bytes if l.decision in ("sparse", "depthwise") else l.dense_bytes
                    for l in self.layers)
        return {"converted": len(sparse),
                "depthwise": sum(l.decision == "depthwise" for l in self.layers),
                "kept_dense": sum(l.decision == "dense" for l in self.layers),
                "skipped": len(self.skipped),
                "converted_dense_bytes": dense_b, "converted_sparse_bytes": sparse_b,
                "converted_bytes_ratio": (sparse_b / dense_b) if dense_b else None,
                "weight_bytes_before": before, "weight_bytes_after": after}

    def to_dict(self) -> dict:
        return {"settings": dict(self.settings), "layers": [l.to_dict() for l in self.layers],
                "skipped": list(self.skipped), "folded_bn": list(self.folded_bn),
                "notes": list(self.notes), "totals": self.totals,
                **({} if self.predicted is None else
                   {"predicted": [r.to_dict() for r in self.predicted]})}
