"""Which packed format a weight gets, and the density limits of the threshold rule."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from ..detect import Pattern, detect
from ..format import bank_keep, kept_groups
from ..errors import SparsekitError

__all__ = ["DEFAULT_MAX_DENSITY", "FORMAT_LABEL", "FormatChoice", "choose_format", "thresholds"]

# Highest density at which a format is still expected to beat onnxruntime's dense kernels
# (docs/convert.md).  block4: the AVX2 kernels' measured break-even, sparsity 0.3 on 1x1 convs
# of 28x28 pixels and more, 0.35-0.45 on 14x14 and 7x7 (docs/performance.md).  block1: the
# prototype's estimate, not re-measured.  `autotune` measures on the machine instead.
DEFAULT_MAX_DENSITY = {"block4": 0.6, "block1": 0.3}
FORMAT_LABEL = {"block4": "1x4 blocks", "block1": "single weights"}


def thresholds(max_density) -> Dict[str, float]:
    out = dict(DEFAULT_MAX_DENSITY)
    if max_density is None:
        return out
    if not isinstance(max_density, dict):
        raise SparsekitError("max_density must be a dict like {'block4': 0.6, 'block1': 0.3}")
    for k, v in max_density.items():
        if k not in DEFAULT_MAX_DENSITY:
            raise SparsekitError(f"max_density: unknown format {k!r} (use "
                                 f"{' or '.join(DEFAULT_MAX_DENSITY)})")
        try:
            d = float(v)
        except (TypeError, ValueError):
            raise SparsekitError(f"max_density[{k!r}] = {v!r} is not a number") from None
        if not 0.0 <= d <= 1.0:
            raise SparsekitError(f"max_density[{k!r}] = {d} must be in [0, 1]")
        out[k] = d
    return out


@dataclass
class FormatChoice:
    fmt: str
    block: int
    bank_size: Optional[int]
    keep: Optional[int]
    density: float        # the stored fraction the threshold is compared with
    key: str              # "block4" | "block1"
    pattern: str          # for the report

    @property
    def label(self) -> str:
        return f"{self.fmt} {'' if self.bank_size is None else str(self.bank_size) + ' '}" \
               f"1x{self.block}"


def choose_format(W: np.ndarray, entry: Optional[dict] = None) -> Tuple[Optional[FormatChoice], Pattern]:
    """The packed format for W [M, K] and the detected pattern (None: no zeros).

    The zeros decide; the recipe `entry` prune recorded (pattern, bank_size, block) is a hint:
    its bank size is tried first, and when the zeros alone do not show the recorded structure
    because some kept weights are exactly zero, the recorded structure is packed with those
    zeros stored (they cost their slot, nothing else).
    """
    entry = entry if isinstance(entry, dict) else {}
    rec_pattern = entry.get("pattern")
    rec_bank = entry.get("bank_size") if rec_pattern == "bank" else None
    rec_bank = int(rec_bank) if isinstance(rec_bank, (int, float)) and rec_bank >= 2 else None
    rec_block = entry.get("block")
    rec_rows = int(rec_block[1]) if rec_pattern in ("bank", "block") and \
        isinstance(rec_block, (list, tuple)) and len(rec_block) == 2 else 1
    p = detect(W, prefer_bank=rec_bank)
    M, K = W.shape
    mask = W != 0
    if p.kind == "dense":
        return None, p
    if p.kind == "empty":
        B = 4 if M >= 4 else 1
        return FormatChoice("bsr", B, None, None, 0.0, f"block{B}", "empty (all zeros)"), p

    B = p.block_rows if p.block_rows in (1, 4) else 4
    if rec_rows % 4 == 0 and B == 1:
        B = 4  # recorded 1x4 blocks: pack 4-row groups even if a kept weight is zero
    kept = kept_groups(mask, B)
    stored = float(kept.mean())
    pattern = p.describe()
    if p.kind == "bank" and p.block_rows == B:
        return FormatChoice("bank", B, p.bank_size, p.keep, stored, f"block{B}", pattern), p
    if rec_bank:
        # every bank holds at most `keep` kept positions (the ragged one at most its share): a
        # bank-balanced layer some of whose kept weights are exactly zero
        keep = bank_keep(kept, rec_bank, exact=False)
        if keep is not None and 1 <= keep < rec_bank:
            return FormatChoice("bank", B, rec_bank, keep, stored, f"block{B}",
                           f"bank-balanced (bank {rec_bank}, keep {keep}) per the recipe, "
                           "some kept weights zero"), p
    if B == 4 and p.block_rows != 4:
        pattern = "1x4 blocks per the recipe, some kept weights zero"
    return FormatChoice("bsr", B, None, None, stored, f"block{B}", pattern), p
