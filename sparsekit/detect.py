"""Find the sparsity pattern of a weight matrix from its zeros alone.

Used by `convert` (models pruned by other tools carry no recipe) and `inspect`. Works on the
2-D view W[M, K] (rows = output channels/features, K = reduction), as everywhere in sparsekit.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np

# Bank sizes tried, largest structure first is not the goal: the smallest bank that holds gives
# the most regular kernel work, and <= 256 keeps in-bank offsets in one byte.
_BANK_CANDIDATES = (4, 8, 16, 32, 64, 128, 256)


@dataclass
class Pattern:
    """What the zeros of a weight matrix look like."""
    kind: str                    # "dense", "block", "bank", "unstructured", "empty"
    density: float               # nonzeros / size
    block_rows: int = 1          # 4 when every group of 4 output rows shares its zeros (1x4)
    bank_size: Optional[int] = None  # set when every bank of every row (group) keeps one count
    keep: Optional[int] = None   # kept positions per full bank

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.kind in ("dense", "empty", "unstructured"):
            return self.kind
        parts = []
        if self.block_rows > 1:
            parts.append(f"1x{self.block_rows} blocks")
        if self.bank_size:
            parts.append(f"bank-balanced (bank {self.bank_size}, keep {self.keep})")
        return " + ".join(parts)


def group_mask(mask: np.ndarray, rows: int) -> Optional[np.ndarray]:
    """The [G, K] mask of groups of `rows` output rows, or None if a group's rows differ."""
    M, K = mask.shape
    G = -(-M // rows)
    padded = np.zeros((G * rows, K), dtype=bool)
    padded[:M] = mask
    grouped = padded.reshape(G, rows, K)
    first = grouped[:, 0, :]
    full = M // rows
    if not (grouped[:full] == first[:full, None, :]).all():
        return None
    if full < G:  # partial last group: its real rows must agree with each other
        tail = mask[full * rows:]
        if not (tail == tail[0]).all():
            return None
    return first


def ragged_keep(length: int, keep: int, bank_size: int) -> int:
    """Blocks the ragged last bank keeps: the same density as full banks (docs/format.md)."""
    return min(length, math.ceil(length * keep / bank_size))


def bank_keep(mask: np.ndarray, bank_size: int) -> Optional[int]:
    """Per-bank kept count if `mask` [R, K] is bank-balanced with this bank size, else None."""
    R, K = mask.shape
    if bank_size > K:
        return None
    full = K // bank_size
    counts = mask[:, :full * bank_size].reshape(R, full, bank_size).sum(axis=2)
    keep = int(counts.flat[0])
    if not (counts == keep).all():
        return None
    rest = K - full * bank_size
    if rest:
        tail = mask[:, full * bank_size:].sum(axis=1)
        if not (tail == ragged_keep(rest, keep, bank_size)).all():
            return None
    return keep


def detect(weight: np.ndarray, prefer_bank: Optional[int] = None) -> Pattern:
    """Classify the zeros of W [M, K]: 1x4 blocks, bank-balanced (with bank size), or neither.

    `prefer_bank` (e.g. the bank size a recipe recorded) is tried first, so a bank size that is
    not a power of two is still found.
    """
    W = np.asarray(weight)
    mask = W != 0
    density = float(mask.mean()) if mask.size else 0.0
    if density == 1.0:
        return Pattern("dense", 1.0)
    if density == 0.0:
        return Pattern("empty", 0.0)
    block_rows = 1
    rows_mask = mask
    grouped = group_mask(mask, 4) if mask.shape[0] >= 4 else None
    if grouped is not None:
        block_rows, rows_mask = 4, grouped
    # the whole row as one bank last: "every row keeps the same count" (offsets fit uint16)
    K = rows_mask.shape[1]
    candidates = ((prefer_bank,) if prefer_bank else ()) + _BANK_CANDIDATES + \
        ((K,) if K <= 65536 else ())
    for size in candidates:
        keep = bank_keep(rows_mask, size)
        if keep is not None and keep < size:
            return Pattern("bank", density, block_rows, size, keep)
    if block_rows > 1:
        return Pattern("block", density, block_rows)
    return Pattern("unstructured", density)
