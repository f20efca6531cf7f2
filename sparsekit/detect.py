"""Find the sparsity pattern of a weight matrix from its zeros alone.

Used by `convert` (models pruned by other tools carry no recipe) and `inspect`. Works on the
2-D view W[M, K] (rows = output channels/features, K = reduction), as everywhere in sparsekit.

* **1x4 blocks**: every group of 4 consecutive rows (the last group may be partial) has the same
  zero positions.  Groups of 8, 16, ... rows pass this test too: they are 1x4 blocks as well.
* **bank-balanced**: for some bank size b, every full bank of b consecutive reduction positions
  of every row (or row group) holds the same number `keep` of nonzeros, and the ragged last bank
  holds `min(L, ceil(L*keep/b))` (docs/format.md; format.py counts them).  Any multiple of a
  balanced bank size is balanced as well, so small sizes are tried first: a size the caller
  suggests (the recipe's), then powers of two (what pruners use), then every other size from 3
  to K, so bank sizes such as 48 are found too.  In a small layer a size can balance by chance;
  any balanced size packs correctly.
* otherwise **unstructured**.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterable, Optional

import numpy as np

from .format import MAX_BANK_SIZE, bank_keep, group_rows, ragged_keep


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
    M = mask.shape[0]
    grouped = group_rows(np.asarray(mask, dtype=bool), rows)
    G = grouped.shape[0]
    first = grouped[:, 0, :]
    full = M // rows
    if not (grouped[:full] == first[:full, None, :]).all():
        return None
    if full < G:  # partial last group: its real rows must agree with each other
        tail = mask[full * rows:]
        if not (tail == tail[0]).all():
            return None
    return first


def _row_candidates(row: np.ndarray, sizes: Iterable[int]) -> list:
    """Bank sizes under which one row (a cheap filter before checking every row) is balanced."""
    K = row.shape[0]
    csum = np.concatenate([[0], np.cumsum(row, dtype=np.int64)])
    sizes = np.asarray(list(sizes), dtype=np.int64)
    if sizes.size > 16:  # vectorised necessary conditions: the first two banks agree, keep < b
        first = csum[sizes]
        two = np.minimum(2 * sizes, K)
        second = csum[two] - first
        full2 = 2 * sizes <= K
        rest = K - sizes  # when only one full bank fits, the rest is the ragged bank
        ragged = np.array([ragged_keep(int(r), int(k), int(b)) if not f and r else 0
                           for r, k, b, f in zip(rest, first, sizes, full2)]) \
            if (~full2).any() else np.zeros_like(sizes)
        ok = (first < sizes) & np.where(full2, second == first, second == ragged)
        sizes = sizes[ok]
    out = []
    for b in sizes.tolist():
        full = K // b
        ends = csum[b:full * b + 1:b]
        counts = np.diff(ends, prepend=0)
        keep = int(counts[0])
        if keep >= b or not (counts == keep).all():
            continue
        rest = K - full * b
        if rest and int(csum[K] - csum[full * b]) != ragged_keep(rest, keep, b):
            continue
        out.append(b)
    return out


def find_bank(mask: np.ndarray, prefer: Optional[int] = None) -> Optional[tuple]:
    """(bank_size, keep) of the smallest bank size that balances every row of `mask` [R, K].

    `prefer` (e.g. the bank size a recipe recorded) is tried first.  Banks that keep every
    position (keep == bank size) do not count: that is a dense row, not a pattern.
    """
    R, K = mask.shape
    if R == 0 or K < 2:
        return None
    if prefer:
        keep = bank_keep(mask, int(prefer))
        if keep is not None and keep < prefer:
            return int(prefer), keep
    top = min(K, MAX_BANK_SIZE)
    pow2 = [1 << i for i in range(1, top.bit_length()) if (1 << i) <= top]
    # powers of two first (what pruners use; a small layer may balance by chance with a
    # neighbouring size too), then every other size, smallest first
    sizes = pow2 + [b for b in range(3, top + 1) if b & (b - 1)]
    # filter with a few rows (O(K/b) each), then confirm the survivors on the whole mask
    for r in np.unique(np.linspace(0, R - 1, num=min(R, 4)).astype(int)):
        sizes = _row_candidates(mask[r], sizes)
        if not sizes:
            return None
    for b in sizes:
        keep = bank_keep(mask, b)
        if keep is not None and keep < b:
            return b, keep
    return None


def detect(weight: np.ndarray, prefer_bank: Optional[int] = None) -> Pattern:
    """Classify the zeros of W [M, K]: 1x4 blocks, bank-balanced (with bank size), or neither.

    `prefer_bank` (e.g. the bank size a recipe recorded) is tried first.
    """
    W = np.asarray(weight)
    if W.ndim != 2:
        raise ValueError(f"detect expects a 2-D weight matrix [M, K], got shape {list(W.shape)}")
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
    found = find_bank(rows_mask, prefer_bank)
    if found is not None:
        return Pattern("bank", density, block_rows, found[0], found[1])
    if block_rows > 1:
        return Pattern("block", density, block_rows)
    return Pattern("unstructured", density)
