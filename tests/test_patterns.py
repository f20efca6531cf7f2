"""Masks of sparsekit.patterns checked against brute-force numpy written here independently."""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sparsekit.errors import SparsekitError
from sparsekit.patterns import (bank_keep_counts, bank_mask, block_mask, keep_count, parse_block,
                                unstructured_mask)

SETTINGS = settings(max_examples=120, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


# ----------------------------------------------------------------- brute-force references

def ref_keep(n, s):
    """Round half up, >= 1 below sparsity 1, sparsity 0 keeps all (docs/prune.md)."""
    if s == 0:
        return n
    k = math.floor(n * (1 - s) + 0.5 + 1e-9)
    return min(n, max(1, k)) if s < 1 else min(n, k)


def ref_banks(K, bank_size):
    """List of (start, stop) of each bank."""
    return [(b, min(b + bank_size, K)) for b in range(0, K, bank_size)]


def ref_bank_count(L, bank_size, s):
    keep = ref_keep(bank_size, s)
    if L == bank_size:
        return keep
    return min(L, math.ceil(L * keep / bank_size))


def check_topk(scores, kept, count):
    """kept is exactly `count` entries, none below a dropped one, ties to the lower index."""
    scores = np.asarray(scores, dtype=np.float64)
    kept = np.asarray(kept, dtype=bool)
    assert kept.sum() == count
    if 0 < count < kept.size:
        lo = scores[kept].min()
        hi = scores[~kept].max()
        assert lo >= hi
        if lo == hi:  # a tie at the boundary: kept copies come before dropped ones
            idx = np.arange(scores.size)
            assert idx[kept & (scores == lo)].max() < idx[~kept & (scores == lo)].min()


@st.composite
def matrices(draw, max_m=37, max_k=70):
    M = draw(st.integers(1, max_m))
    K = draw(st.integers(1, max_k))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        W = rng.standard_normal((M, K)).astype(np.float32)
    else:  # small integers: many ties
        W = rng.integers(-3, 4, size=(M, K)).astype(np.float32)
    return W


sparsities = st.one_of(st.floats(0.0, 0.99, exclude_max=True),
                       st.sampled_from([0.0, 0.5, 0.75, 0.8, 0.9, 0.95]))


# ----------------------------------------------------------------- keep_count

@given(st.integers(0, 5000), sparsities)
def test_keep_count_matches_reference(n, s):
    assert keep_count(n, s) == ref_keep(n, s)


def test_keep_count_rounding_examples():
    assert keep_count(10, 0.95) == 1      # 0.5 rounds up
    assert keep_count(4, 0.875) == 1      # 0.5 rounds up
    assert keep_count(16, 0.9) == 2       # 1.6
    assert keep_count(32, 0.9) == 3       # 3.2
    assert keep_count(10, 0.99) == 1      # at least one below sparsity 1
    assert keep_count(10, 1.0) == 0
    assert keep_count(7, 0.0) == 7


# ----------------------------------------------------------------- bank

@SETTINGS
@given(matrices(), sparsities, st.integers(1, 40))
def test_bank_mask_rows(W, s, bank_size):
    mask = bank_mask(W, s, bank_size=bank_size)
    M, K = W.shape
    assert mask.shape == W.shape and mask.dtype == bool
    A = np.abs(W)
    for r in range(M):
        for (a, b) in ref_banks(K, bank_size):
            check_topk(A[r, a:b], mask[r, a:b], ref_bank_count(b - a, bank_size, s))
    # perfect balance: every row the same nonzero count
    counts = mask.sum(axis=1)
    assert (counts == counts[0]).all()


@SETTINGS
@given(matrices(), sparsities, st.integers(1, 12))
def test_bank_mask_by_number_of_banks(W, s, banks):
    K = W.shape[1]
    if banks > K:
        with pytest.raises(SparsekitError, match="banks"):
            bank_mask(W, s, banks=banks)
        return
    bs = -(-K // banks)
    assert np.array_equal(bank_mask(W, s, banks=banks), bank_mask(W, s, bank_size=bs))


@SETTINGS
@given(matrices(), sparsities, st.integers(1, 40), st.sampled_from([2, 4]))
def test_bank_mask_block_rows(W, s, bank_size, rows):
    mask = bank_mask(W, s, bank_size=bank_size, block_rows=rows)
    M, K = W.shape
    W64 = W.astype(np.float64)
    for g0 in range(0, M, rows):
        grp = mask[g0:g0 + rows]
        assert (grp == grp[0]).all(), "mask must be constant across a row group"
        norms = np.sqrt((W64[g0:g0 + rows] ** 2).sum(axis=0))
        for (a, b) in ref_banks(K, bank_size):
            check_topk(norms[a:b], grp[0, a:b], ref_bank_count(b - a, bank_size, s))


def test_bank_ragged_last_bank_rule():
    # K = 70, bank 32: banks of 32, 32, 6; sparsity 0.9 keeps 3 per full bank, ceil(6*3/32)=1
    W = np.random.default_rng(0).standard_normal((8, 70)).astype(np.float32)
    m = bank_mask(W, 0.9, bank_size=32)
    assert (m[:, :32].sum(1) == 3).all() and (m[:, 32:64].sum(1) == 3).all()
    assert (m[:, 64:].sum(1) == 1).all()
    assert bank_keep_counts(70, 32, 0.9) == (3, 3, 1)
    # a bank longer than K: one ragged bank
    m = bank_mask(W, 0.5, bank_size=100)
    assert (m.sum(1) == 35).all()  # keep 50 of 100 -> ceil(70*50/100) = 35


def test_bank_errors():
    W = np.ones((4, 10), np.float32)
    with pytest.raises(SparsekitError, match="bank_size"):
        bank_mask(W, 0.5, bank_size=0)
    with pytest.raises(SparsekitError, match="banks"):
        bank_mask(W, 0.5, banks=11)
    with pytest.raises(SparsekitError, match="banks"):
        bank_mask(W, 0.5, banks=0)
    with pytest.raises(SparsekitError, match="exactly one"):
        bank_mask(W, 0.5)
    with pytest.raises(SparsekitError, match="exactly one"):
        bank_mask(W, 0.5, bank_size=4, banks=2)
    with pytest.raises(SparsekitError, match="sparsity"):
        bank_mask(W, 1.5, bank_size=4)
    with pytest.raises(SparsekitError, match="2-D"):
        bank_mask(np.ones(5), 0.5, bank_size=4)


# ----------------------------------------------------------------- block

@SETTINGS
@given(matrices(), sparsities, st.sampled_from([(1, 4), (1, 1), (2, 4), (1, 8), (4, 1), (3, 2)]))
def test_block_mask(W, s, block):
    a, b = block
    M, K = W.shape
    if a > K or b > M:
        with pytest.raises(SparsekitError, match="larger"):
            block_mask(W, s, block)
        return
    mask = block_mask(W, s, block)
    assert mask.shape == W.shape
    W64 = W.astype(np.float64)
    rms, kept = [], []
    for r0 in range(0, M, b):
        for c0 in range(0, K, a):
            tile = mask[r0:r0 + b, c0:c0 + a]
            assert (tile == tile.flat[0]).all(), "blocks are kept or dropped whole"
            rms.append(np.sqrt((W64[r0:r0 + b, c0:c0 + a] ** 2).mean()))
            kept.append(bool(tile.flat[0]))
    check_topk(np.array(rms), np.array(kept), ref_keep(len(rms), s))


def test_block_full_blocks_ranked_by_l2_norm():
    W = np.array([[1, 0, 5],
                  [1, 0, 0],
                  [1, 3, 0],
                  [1, 0, 0]], np.float32)  # column norms 2, 3, 5
    assert block_mask(W, 1 - 1 / 3, (1, 4)).tolist() == [[False, False, True]] * 4
    assert block_mask(W, 1 / 3, (1, 4)).tolist() == [[False, True, True]] * 4


def test_block_partial_edge_block_ranked_by_rms():
    # rows 0-3 form a full group, row 4 a partial one.  Column 0: full block of 1s (norm 2,
    # rms 1); column 1 in the partial group: a single 1.5 (norm 1.5, rms 1.5) must win by RMS.
    W = np.zeros((5, 2), np.float32)
    W[0:4, 0] = 1.0
    W[4, 1] = 1.5
    m = block_mask(W, 0.75, (1, 4))  # 4 blocks, keep 1
    assert m.sum() == 1 and m[4, 1]


def test_block_errors():
    W = np.ones((3, 10), np.float32)
    with pytest.raises(SparsekitError, match="larger"):
        block_mask(W, 0.5, (1, 4))
    with pytest.raises(SparsekitError, match="larger"):
        block_mask(W, 0.5, (11, 1))
    with pytest.raises(SparsekitError, match="bad block"):
        block_mask(W, 0.5, "1x")


# ----------------------------------------------------------------- unstructured

@SETTINGS
@given(matrices(), sparsities)
def test_unstructured_mask(W, s):
    mask = unstructured_mask(W, s)
    check_topk(np.abs(W).ravel(), mask.ravel(), ref_keep(W.size, s))


# ----------------------------------------------------------------- shared properties

@SETTINGS
@given(matrices())
def test_sparsity_zero_is_identity(W):
    for m in (bank_mask(W, 0.0, bank_size=7), bank_mask(W, 0.0, bank_size=5, block_rows=4),
              unstructured_mask(W, 0.0)):
        assert m.all()
    if W.shape[0] >= 4:
        assert block_mask(W, 0.0, (1, 4)).all()


@SETTINGS
@given(matrices(), sparsities)
def test_deterministic(W, s):
    W2 = W.copy()
    for f in (lambda x: bank_mask(x, s, bank_size=8), lambda x: unstructured_mask(x, s),
              lambda x: bank_mask(x, s, bank_size=8, block_rows=4)):
        assert np.array_equal(f(W), f(W2))
    assert np.array_equal(W, W2), "inputs are not modified"


def test_nan_ranks_lowest():
    W = np.array([[np.nan, 1.0, 2.0, 0.5]], np.float32)
    assert unstructured_mask(W, 0.75).tolist() == [[False, False, True, False]]
    assert bank_mask(W, 0.5, bank_size=4).tolist() == [[False, True, True, False]]


def test_large_matrix_shapes():
    W = np.random.default_rng(1).standard_normal((4096, 1500)).astype(np.float32)
    m = bank_mask(W, 0.9, bank_size=32)
    assert (m.sum(1) == m.sum(1)[0]).all()
    m = block_mask(W, 0.9, (1, 4))
    assert m.sum() == 4 * ref_keep(1024 * 1500, 0.9)
    m = unstructured_mask(W, 0.9)
    assert m.sum() == ref_keep(W.size, 0.9)


# ----------------------------------------------------------------- parse_block

@pytest.mark.parametrize("text,expected", [("1x4", (1, 4)), ("4X1", (4, 1)), (" 2x8 ", (2, 8)),
                                           ((1, 4), (1, 4)), ([2, 2], (2, 2))])
def test_parse_block(text, expected):
    assert parse_block(text) == expected


@pytest.mark.parametrize("bad", ["1x", "x4", "1x4x2", "0x4", "1x0", "ax4", "", "1*4", (1,),
                                 (1, 0), None, 4, (1.0, 4)])
def test_parse_block_errors(bad):
    with pytest.raises(SparsekitError, match="block"):
        parse_block(bad)
