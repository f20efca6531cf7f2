"""The rules of the packed format (docs/format.md), written once: the op domain, row groups,
bank counts with the ragged last bank, index types, and the vectorised bank packer.

Everything works on the 2-D view ``W2d [M, K]`` (rows = output channels/features, K =
reduction).  Rows are grouped in blocks of ``B`` consecutive rows (the last group zero-padded);
a group keeps reduction position k when any of its rows is nonzero there.  The reduction axis is
cut into banks of ``bank_size``; a ragged last bank of length L keeps
``min(L, ceil(L·keep/bank_size))`` blocks, the same density as the full banks.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import onnx
from onnx import helper

from .errors import SparsekitError

__all__ = ["DOMAIN", "OPSET_VERSION", "FORMATS", "BLOCK_SIZES", "MAX_BANK_SIZE", "opset_import",
           "num_groups", "group_rows", "kept_groups", "num_banks", "ragged_keep", "bank_counts",
           "bank_caps", "bank_keep", "bsr_index_dtype", "bank_index_dtype", "pack_bank_blocks",
           "MAX_STRIDE", "MAX_KERNEL_EXTENT", "conv_geometry_problem"]

DOMAIN = "ai.sparsekit"
OPSET_VERSION = 1
FORMATS = ("bsr", "bank")
BLOCK_SIZES = (1, 4)
MAX_BANK_SIZE = 65536  # in-bank offsets are stored as uint16 at most
# the conv ops' geometry bounds (csrc/ort/sparse_conv.cpp conv_check_geometry), which keep
# index arithmetic and output sizes bounded; stock Conv allows more
MAX_STRIDE = 4096
MAX_KERNEL_EXTENT = 1 << 20


def opset_import() -> onnx.OperatorSetIdProto:
    """The opset_import entry a model using ai.sparsekit ops needs."""
    return helper.make_opsetid(DOMAIN, OPSET_VERSION)


def conv_geometry_problem(kernel, strides, dilations, pads) -> str:
    """Why SparseConv/DepthwiseConv/PredictedConv would refuse this 2-D geometry ("" if they
    accept it): strides and dilations in [1, MAX_STRIDE], dilated kernel extent at most
    MAX_KERNEL_EXTENT, each pad (``[top, left, bottom, right]``) in [0, extent)."""
    for ax in range(2):
        s, d = int(strides[ax]), int(dilations[ax])
        if not (1 <= s <= MAX_STRIDE and 1 <= d <= MAX_STRIDE):
            return f"strides {list(strides)} / dilations {list(dilations)} outside [1, {MAX_STRIDE}]"
        extent = d * (int(kernel[ax]) - 1) + 1
        if extent > MAX_KERNEL_EXTENT:
            return f"dilated kernel extent {extent} > {MAX_KERNEL_EXTENT}"
        for p in (int(pads[ax]), int(pads[ax + 2])):
            if not 0 <= p < extent:
                return (f"pads {list(pads)} not below the dilated kernel extent {extent} "
                        "(the padding alone makes outputs; sparse conv ops refuse it)")
    return ""


# ---------------------------------------------------------------------------------------------
# row groups

def num_groups(rows: int, block: int) -> int:
    """G = ceil(rows / block)."""
    return -(-int(rows) // int(block))


def group_rows(matrix: np.ndarray, block: int) -> np.ndarray:
    """[M, K] -> [G, block, K]: rows in groups of ``block``, rows past M zero (False)."""
    M, K = matrix.shape
    G = num_groups(M, block)
    padded = np.zeros((G * block, K), dtype=matrix.dtype)
    padded[:M] = matrix
    return padded.reshape(G, block, K)


def kept_groups(mask: np.ndarray, block: int) -> np.ndarray:
    """[G, K]: group g keeps position k when any of its ``block`` rows is kept there."""
    return group_rows(np.asarray(mask, dtype=bool), block).any(axis=1)


# ---------------------------------------------------------------------------------------------
# banks

def num_banks(K: int, bank_size: int) -> int:
    """ceil(K / bank_size): the last bank is ragged when bank_size does not divide K."""
    return -(-int(K) // int(bank_size))


def ragged_keep(length: int, keep: int, bank_size: int) -> int:
    """Blocks a ragged bank of ``length`` keeps: min(L, ceil(L·keep/bank_size)).

    Integer arithmetic, so the result is exact for any size (the same density as full banks).
    """
    length, keep, bank_size = int(length), int(keep), int(bank_size)
    return min(length, -(-length * keep // bank_size))


def bank_counts(kept: np.ndarray, bank_size: int) -> np.ndarray:
    """[R, nbanks]: how many positions each row (group) of ``kept`` [R, K] keeps per bank.

    The last column is the ragged bank when bank_size does not divide K.
    """
    R, K = kept.shape
    full = K // bank_size
    counts = kept[:, :full * bank_size].reshape(R, full, bank_size).sum(axis=2)
    if full * bank_size < K:
        tail = kept[:, full * bank_size:].sum(axis=1)
        counts = np.concatenate([counts, tail[:, None]], axis=1)
    return counts


def bank_caps(K: int, bank_size: int, keep: int) -> np.ndarray:
    """[nbanks]: what each bank of a balanced row keeps: ``keep``, and the ragged bank's share."""
    nbanks = num_banks(K, bank_size)
    caps = np.full(nbanks, int(keep), dtype=np.int64)
    rest = int(K) - (nbanks - 1) * int(bank_size)
    if rest < bank_size:
        caps[-1] = ragged_keep(rest, keep, bank_size)
    return caps


def bank_keep(kept: np.ndarray, bank_size: int, exact: bool = True) -> Optional[int]:
    """The per-bank kept count of ``kept`` [R, K] under this bank size, or None if unbalanced.

    ``exact``: every full bank keeps the same count and the ragged bank exactly its share.
    Otherwise ``keep`` is the largest full-bank count and every bank keeps at most its cap (a
    balanced layer some of whose kept weights are exactly zero).  None when bank_size is not
    in [1, K] or there are no rows.
    """
    R, K = kept.shape
    bank_size = int(bank_size)
    if bank_size < 1 or bank_size > K or R == 0:
        return None
    counts = bank_counts(kept, bank_size)
    full = K // bank_size
    keep = int(counts[0, 0]) if exact else int(counts[:, :full].max())
    caps = bank_caps(K, bank_size, keep)
    balanced = (counts == caps).all() if exact else (counts <= caps).all()
    return keep if balanced else None


# ---------------------------------------------------------------------------------------------
# packed tensors

def bsr_index_dtype(K: int):
    """bsr indices: uint16 when every k fits (K <= 65536), else int32."""
    return np.uint16 if K <= 65536 else np.int32


def bank_index_dtype(bank_size: int):
    """bank offsets: one byte when bank_size <= 256, else uint16."""
    return np.uint8 if bank_size <= 256 else np.uint16


def pack_bank_blocks(grouped: np.ndarray, bank_size: int, keep: int) -> dict:
    """Format "bank" tensors for grouped weights [G, K, B] (block B = grouped.shape[2]).

    A block (g, k) is kept when any of its B weights is nonzero.  Each bank's kept blocks go
    first in increasing offset, the rest of its ``keep`` slots are padding (value 0, offset 0).
    Returns values [G, nbanks, keep, B] float32 and indices [G, nbanks, keep].  Balance is the
    caller's to check (its messages name its layout); a bank with more than ``keep`` kept
    blocks raises SparsekitError.
    """
    G, K, B = grouped.shape
    bank_size, keep = int(bank_size), int(keep)
    nbanks = num_banks(K, bank_size)
    kept = np.zeros((G, nbanks * bank_size), dtype=bool)
    kept[:, :K] = (grouped != 0).any(axis=2)
    per_bank = kept.reshape(G, nbanks, bank_size)
    counts = per_bank.sum(axis=2)                                    # [G, nbanks]
    if (counts > keep).any():
        g, bank = np.argwhere(counts > keep)[0]
        raise SparsekitError(f"group {g} bank {bank} keeps {counts[g, bank]} blocks, more than "
                             f"keep = {keep}")
    # nonzero walks row-major: by group, bank, then increasing offset, so a block's slot is
    # its rank among the kept blocks of its (group, bank)
    g_idx, bank_idx, offset = np.nonzero(per_bank)
    flat_counts = counts.ravel()
    first_of_bank = np.cumsum(flat_counts) - flat_counts
    slot = np.arange(len(g_idx)) - np.repeat(first_of_bank, flat_counts)
    values = np.zeros((G, nbanks, keep, B), dtype=np.float32)
    indices = np.zeros((G, nbanks, keep), dtype=bank_index_dtype(bank_size))
    values[g_idx, bank_idx, slot] = grouped[g_idx, bank_idx * bank_size + offset]
    indices[g_idx, bank_idx, slot] = offset
    return {"values": values, "indices": indices}
