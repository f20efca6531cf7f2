"""Sparsity masks on a 2-D weight matrix ``W[M, K]`` (pure numpy, vectorised).

``M`` counts output rows (Conv output channels, Gemm/MatMul output features) and ``K`` the
reduction (``C·kh·kw`` for a Conv, input features for Gemm/MatMul); see docs/format.md for how
a layer's weight maps onto this matrix and docs/prune.md for the exact rules implemented here.

Every function returns a boolean mask of W's shape (True = keep).  Rules shared by all of them:

* counts are ``round_half_up(n · (1 - sparsity))`` (:func:`keep_count`): the nearest integer,
  halves rounded up, with a 1e-9 tolerance so that e.g. ``10 · (1 - 0.95)`` counts as 0.5;
  sparsity 0 keeps everything, and at least one entry is kept whenever ``sparsity < 1``;
* magnitudes are compared as ``|w|`` (or a block's L2 norm / RMS); NaN ranks below everything;
* ties are broken deterministically: the lower index wins (same result as a stable argsort of
  the negated score), so the same W always gives the same mask.
"""
from __future__ import annotations

import math
import re
from typing import Optional, Tuple

import numpy as np

from .errors import SparsekitError

__all__ = [
    "PATTERNS",
    "DEFAULT_BLOCK",
    "keep_count",
    "positive_int",
    "topk_flat",
    "resolve_bank_size",
    "bank_keep_counts",
    "bank_mask",
    "recorded_mask",
    "block_mask",
    "unstructured_mask",
    "parse_block",
]

PATTERNS = ("bank", "block", "unstructured")  # the sparsity patterns prune makes and convert packs
DEFAULT_BLOCK = (1, 4)          # the block pattern's block when none is given
_ROUND_TOL = 1e-9


# --------------------------------------------------------------------------- helpers

def _check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool):
        raise SparsekitError(f"sparsity must be a number in [0, 1], got {sparsity!r}")
    try:
        s = float(sparsity)
    except (TypeError, ValueError):
        raise SparsekitError(f"sparsity must be a number in [0, 1], got {sparsity!r}") from None
    if not (0.0 <= s <= 1.0):  # also rejects NaN
        raise SparsekitError(f"sparsity must be in [0, 1], got {sparsity!r}")
    return s


def _as_matrix(W) -> np.ndarray:
    W = np.asarray(W)
    if W.ndim != 2:
        raise SparsekitError(f"weight matrix must be 2-D [M, K], got shape {list(W.shape)}")
    if W.size == 0:
        raise SparsekitError(f"weight matrix is empty (shape {list(W.shape)})")
    return W


def positive_int(value, what: str) -> int:
    """``value`` as an int >= 1 (an integral float is accepted); SparsekitError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise SparsekitError(f"{what} must be a positive integer, got {value!r}")
    if value < 1:
        raise SparsekitError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


def keep_count(n: int, sparsity: float) -> int:
    """How many of ``n`` entries survive ``sparsity``: round half up, >= 1 when sparsity < 1."""
    s = _check_sparsity(sparsity)
    if n <= 0:
        return 0
    if s == 0.0:
        return n
    keep = int(math.floor(n * (1.0 - s) + 0.5 + _ROUND_TOL))
    if s < 1.0:
        keep = max(keep, 1)
    return min(keep, n)


def _scores(x: np.ndarray) -> np.ndarray:
    """Non-negative float score array with NaN mapped below every real score.

    float32 scores (|w| of a float32 weight: exact) stay float32, which sorts faster; anything
    else is compared in float64.
    """
    s = np.asarray(x)
    if s.dtype != np.float32:
        s = s.astype(np.float64)
    if np.isnan(s).any():
        s = np.where(np.isnan(s), -1.0, s)
    return s


def topk_flat(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest entries of a 1-D array; ties go to the lower index.

    Equivalent to taking the first k of ``argsort(-scores, kind="stable")`` but O(n): the k-th
    largest value comes from a partition, everything above it is kept, and the remaining slots
    go to the lowest-indexed entries equal to it.
    """
    n = scores.size
    mask = np.zeros(n, dtype=bool)
    if k <= 0:
        return mask
    if k >= n:
        mask[:] = True
        return mask
    thr = np.partition(scores, n - k)[n - k]
    mask = scores > thr
    need = k - int(np.count_nonzero(mask))
    if need > 0:
        mask[np.flatnonzero(scores == thr)[:need]] = True
    return mask


def _group_rows_sq(W: np.ndarray, rows: int) -> np.ndarray:
    """Sum of squares over groups of ``rows`` consecutive rows: shape [ceil(M/rows), K]."""
    M, K = W.shape
    G = -(-M // rows)
    sq = np.square(W.astype(np.float64))
    if G * rows != M:
        sq = np.concatenate([sq, np.zeros((G * rows - M, K))], axis=0)
    return sq.reshape(G, rows, K).sum(axis=1)


# --------------------------------------------------------------------------- patterns

def resolve_bank_size(K: int, bank_size: Optional[int] = None, banks: Optional[int] = None) -> int:
    """The bank length for a reduction of length K: ``bank_size`` or ``ceil(K / banks)``.

    Exactly one of the two must be given.  ``bank_size > K`` is allowed (one ragged bank);
    ``banks > K`` is an error.  With ``banks`` the actual number of banks is
    ``ceil(K / bank_size)``, which can be fewer than asked (K=10, banks=6 -> 5 banks of 2).
    """
    if (bank_size is None) == (banks is None):
        raise SparsekitError("bank pattern needs exactly one of bank_size or banks")
    if bank_size is not None:
        return positive_int(bank_size, "bank_size")
    nb = positive_int(banks, "banks")
    if nb > K:
        raise SparsekitError(f"banks={nb} is more than the reduction length K={K}")
    return -(-K // nb)


def bank_keep_counts(K: int, bank_size: int, sparsity: float) -> Tuple[int, int, int]:
    """``(nbanks, keep, keep_last)`` for a reduction of length K cut into banks.

    ``keep = keep_count(bank_size, sparsity)``; a ragged last bank of length L < bank_size keeps
    ``min(L, ceil(L·keep/bank_size))`` (docs/format.md); a full last bank keeps ``keep``.
    """
    nbanks = -(-K // bank_size)
    keep = keep_count(bank_size, sparsity)
    last = K - (nbanks - 1) * bank_size
    keep_last = min(last, -(-last * keep // bank_size))
    return nbanks, keep, keep_last


def bank_mask(W, sparsity: float, bank_size: Optional[int] = None, banks: Optional[int] = None,
              block_rows: int = 1) -> np.ndarray:
    """Bank-balanced mask: every bank of every row (or row group) keeps the same count.

    The reduction axis is cut into banks of ``bank_size`` consecutive positions (or ``banks``
    equal banks, ``bank_size = ceil(K/banks)``).  With ``block_rows = 1`` each row keeps, in every
    bank, the ``keep`` entries of largest ``|w|``.  With ``block_rows = B > 1`` rows are grouped in
    B consecutive rows (the last group may be partial) and each group keeps, in every bank, the
    ``keep`` reduction positions with the largest L2 norm over the group's rows; a kept position
    is kept for all rows of the group (1xB blocks balanced per bank).
    """
    W = _as_matrix(W)
    s = _check_sparsity(sparsity)
    rows = positive_int(block_rows, "block_rows")
    M, K = W.shape
    bs = resolve_bank_size(K, bank_size, banks)
    nbanks, keep, keep_last = bank_keep_counts(K, bs, s)
    if s == 0.0:
        return np.ones((M, K), dtype=bool)

    if rows == 1:
        score = _scores(np.abs(W))
    else:
        score = _scores(_group_rows_sq(W, rows))  # ranking by the squared norm = by the norm
    G = score.shape[0]
    pad = nbanks * bs - K
    if pad:
        # Padding ranks below every real score (even NaN's -1) and the ragged bank keeps fewer.
        score = np.concatenate([score, np.full((G, pad), -np.inf, dtype=score.dtype)], axis=1)
    order = np.argsort(-score.reshape(G, nbanks, bs), axis=2, kind="stable")
    counts = np.full(nbanks, keep, dtype=np.int64)
    counts[-1] = keep_last
    take = np.arange(bs)[None, None, :] < counts[None, :, None]
    kept = np.zeros((G, nbanks, bs), dtype=bool)
    np.put_along_axis(kept, order, np.broadcast_to(take, kept.shape), axis=2)
    kept = kept.reshape(G, nbanks * bs)[:, :K]
    if rows > 1:
        kept = np.repeat(kept, rows, axis=0)[:M]
    return kept


_BAND_ELEMENTS = 1 << 21   # float64 elements per band of block_mask's sums (16 MiB)


def block_mask(W, sparsity: float, block=DEFAULT_BLOCK) -> np.ndarray:
    """Layer-wise block mask: ``a x b`` blocks kept or dropped together.

    ``block = (a, b)``: a consecutive reduction positions x b consecutive output rows ("1x4" =
    one reduction position, four output rows).  The matrix is tiled from (0, 0); edge tiles are
    partial.  Blocks are ranked by RMS over their entries (for full blocks the same order as the
    L2 norm; partial edge blocks are not penalised for their size) and the
    ``keep_count(nblocks, sparsity)`` best are kept; ties go to the lower block index
    (row-group major).
    """
    W = _as_matrix(W)
    s = _check_sparsity(sparsity)
    a, b = parse_block(block)
    M, K = W.shape
    if a > K or b > M:
        raise SparsekitError(
            f"block {a}x{b} is larger than the weight matrix [M={M}, K={K}] "
            f"(needs K >= {a} and M >= {b})")
    G, C = -(-M // b), -(-K // a)
    if s == 0.0:
        return np.ones((M, K), dtype=bool)
    # block sums of squares in float64, a band of row groups at a time: the same sums as over
    # the whole padded matrix, without holding float64 copies of a big weight (3x its size)
    sums = np.empty((G, C))
    band = max(1, _BAND_ELEMENTS // max(b * C * a, 1))
    for g0 in range(0, G, band):
        g1 = min(G, g0 + band)
        sq = np.zeros(((g1 - g0) * b, C * a))
        rows = W[g0 * b:min(M, g1 * b)]
        sq[:rows.shape[0], :K] = np.square(rows.astype(np.float64))
        sums[g0:g1] = sq.reshape(g1 - g0, b, C, a).sum(axis=(1, 3))
    rows_in = np.full(G, b)
    rows_in[-1] = M - (G - 1) * b
    cols_in = np.full(C, a)
    cols_in[-1] = K - (C - 1) * a
    rms = _scores(sums / (rows_in[:, None] * cols_in[None, :]))
    kept = topk_flat(rms.ravel(), keep_count(G * C, s)).reshape(G, C)
    full = np.repeat(np.repeat(kept, b, axis=0), a, axis=1)
    return full[:M, :K]


def unstructured_mask(W, sparsity: float) -> np.ndarray:
    """Layer-wise magnitude mask: keep the ``keep_count(M·K, sparsity)`` largest ``|w|``."""
    W = _as_matrix(W)
    s = _check_sparsity(sparsity)
    if s == 0.0:
        return np.ones(W.shape, dtype=bool)
    return topk_flat(_scores(np.abs(W)).ravel(), keep_count(W.size, s)).reshape(W.shape)


_BLOCK_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_block(block) -> Tuple[int, int]:
    """``"1x4"`` (or ``(1, 4)``) -> ``(1, 4)``: (reduction extent, output-row extent)."""
    if isinstance(block, str):
        m = _BLOCK_RE.match(block)
        if not m:
            raise SparsekitError(
                f"bad block {block!r}: expected AxB with positive integers, e.g. 1x4")
        a, b = int(m.group(1)), int(m.group(2))
    elif isinstance(block, (tuple, list)) and len(block) == 2 and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in block):
        a, b = int(block[0]), int(block[1])
    else:
        raise SparsekitError(f"bad block {block!r}: expected AxB with positive integers, e.g. 1x4")
    if a < 1 or b < 1:
        raise SparsekitError(f"bad block {block!r}: both extents must be at least 1")
    return a, b


def recorded_mask(W, pattern: str, sparsity: float, bank_size: Optional[int] = None,
                  block=None) -> np.ndarray:
    """The mask of one layer's pattern as prune records it in the model's metadata (pattern,
    resolved bank size, block ``[A, B]`` or None), at ``sparsity``: how fine-tuning re-prunes a
    layer gradually with the constraints prune chose."""
    if pattern == "bank":
        rows = int(block[1]) if block else 1
        return bank_mask(W, sparsity, bank_size=bank_size, block_rows=rows)
    if pattern == "block":
        return block_mask(W, sparsity, tuple(block) if block else DEFAULT_BLOCK)
    if pattern == "unstructured":
        return unstructured_mask(W, sparsity)
    raise ValueError(f"unknown pattern {pattern!r}")

