"""What convert decided: a row per layer, and the whole report."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

from ..predict import PredictedLayer

NO_ZEROS = "no zeros"   # a dense row's reason when the weights have no zeros to pack

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
    # chains of ops that can run in 8-channel blocks and the layout each got (layout.Chain)
    chains: list = field(default_factory=list)

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

    @property
    def nothing_converted(self) -> Optional[str]:
        """None when convert rewrote at least one layer; else one line with the main reasons,
        e.g. "nothing converted: 0 of 12 layers sparse (9 have no zeros, 3 float16)".  The
        model convert returns is then the input's graph unchanged (the CLI refuses to write it
        without --allow-empty)."""
        if any(l.decision in ("sparse", "depthwise") for l in self.layers) or \
                any(r.replaced for r in self.predicted or []):
            return None
        kinds: Dict[str, int] = {}
        for l in self.layers:
            k = _reason_kind(l.reason)
            kinds[k] = kinds.get(k, 0) + 1
        if self.skipped:
            kinds["not candidates"] = len(self.skipped)
        n = len(self.layers) + len(self.skipped)
        if not n:
            return "nothing converted: the model has no Conv, Gemm, MatMul, LSTM or GRU layer"
        why = ", ".join(f"{c} {k}" for k, c in sorted(kinds.items(), key=lambda kv: -kv[1]))
        return f"nothing converted: 0 of {n} layer(s) sparse ({why})"

    def to_dict(self) -> dict:
        return {"settings": dict(self.settings), "layers": [l.to_dict() for l in self.layers],
                "skipped": list(self.skipped), "folded_bn": list(self.folded_bn),
                "notes": list(self.notes), "totals": self.totals,
                "chains": [c.to_dict() for c in self.chains],
                **({} if self.predicted is None else
                   {"predicted": [r.to_dict() for r in self.predicted]})}


def _reason_kind(reason: str) -> str:
    """A short group name for a dense row's reason (nothing_converted's summary)."""
    if reason == NO_ZEROS:
        return "have no zeros"
    if reason.startswith("density "):
        return "too dense"
    if reason.endswith("weights are not supported (float32 only)"):
        return reason.split()[0]                       # the dtype: float16, float64, ...
    if reason.startswith("non-finite"):
        return "non-finite weights"
    if reason.startswith("excluded"):
        return "excluded"
    return reason.split(" (")[0].split(":")[0][:60] or "kept dense"
