"""sparsekit.format: the packed-format rules, each checked against a plain loop written here from
docs/format.md (not from the code under test), on swept and hypothesis-drawn shapes whose last
bank is ragged, for groups of 1 and 4 rows and for the LSTM row layout."""
import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from sparsekit import format as fmt
from sparsekit import pack, sequence
from sparsekit.detect import detect, find_bank, group_mask
from sparsekit.errors import SparsekitError

# ------------------------------------------------------------------------- references --


def ref_ragged_keep(length, keep, bank_size):
    return min(length, math.ceil(length * keep / bank_size))


def ref_kept_groups(mask, block):
    """[G, K] by loops: group g keeps k when any of its (existing) rows is kept there."""
    M, K = mask.shape
    G = -(-M // block)
    out = np.zeros((G, K), dtype=bool)
    for g in range(G):
        for k in range(K):
            out[g, k] = any(mask[r, k] for r in range(g * block, min(M, g * block + block)))
    return out


def ref_bank_counts(kept, bank_size):
    R, K = kept.shape
    starts = range(0, K, bank_size)
    return np.array([[int(kept[r, s:s + bank_size].sum()) for s in starts] for r in range(R)],
                    dtype=np.int64).reshape(R, len(starts))


def ref_bank_keep(kept, bank_size, exact):
    """docs/format.md's balance rule with loops: full banks keep `keep` (exact) or at most the
    largest full-bank count (tolerant); a ragged bank of length L its share of keep."""
    R, K = kept.shape
    if not 1 <= bank_size <= K or R == 0:
        return None
    counts = ref_bank_counts(kept, bank_size)
    full = K // bank_size
    keep = int(counts[0, 0]) if exact else int(counts[:, :full].max())
    for r in range(R):
        for b, start in enumerate(range(0, K, bank_size)):
            length = min(bank_size, K - start)
            cap = keep if length == bank_size else ref_ragged_keep(length, keep, bank_size)
            if (counts[r, b] != cap) if exact else (counts[r, b] > cap):
                return None
    return keep


def ref_pack_bank(W, bank_size, block, keep):
    """Format "bank" by loops: per group and bank, the kept blocks in increasing offset, then
    zero padding up to keep."""
    M, K = W.shape
    G, nbanks = -(-M // block), -(-K // bank_size)
    values = np.zeros((G, nbanks, keep, block), dtype=np.float32)
    indices = np.zeros((G, nbanks, keep), dtype=np.uint8 if bank_size <= 256 else np.uint16)
    for g in range(G):
        rows = W[g * block:min(M, g * block + block)]
        for bank in range(nbanks):
            slot = 0
            for k in range(bank * bank_size, min(K, bank * bank_size + bank_size)):
                if (rows[:, k] != 0).any():
                    values[g, bank, slot, :len(rows)] = rows[:, k]
                    indices[g, bank, slot] = k - bank * bank_size
                    slot += 1
    return {"values": values, "indices": indices}


def assert_same_bytes(got, want):
    for key in ("values", "indices"):
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        assert got[key].tobytes() == want[key].tobytes(), key


def balanced_matrix(rng, M, K, bank_size, block, keep, zero_kept=0.0):
    """W [M, K] whose row groups keep `keep` random positions per full bank and the ragged
    share in the last; within a kept block some rows may be zero (the block is still kept).
    `zero_kept`: fraction of kept blocks then zeroed whole (kept weights that are exactly 0)."""
    G = -(-M // block)
    W = np.zeros((G * block, K), dtype=np.float32)
    for g in range(G):
        for start in range(0, K, bank_size):
            length = min(bank_size, K - start)
            n = keep if length == bank_size else ref_ragged_keep(length, keep, bank_size)
            for k in start + rng.choice(length, n, replace=False):
                if rng.random() < zero_kept:
                    continue
                col = rng.standard_normal(block).astype(np.float32)
                col[rng.random(block) < 0.3] = 0.0
                # at least one nonzero row that exists (the last group may be partial)
                col[rng.integers(min(block, M - g * block))] = 1.0 + rng.random()
                W[g * block:g * block + block, k] = col
    return W[:M]


# -------------------------------------------------------------------- domain, layering --

def test_domain_and_opset_are_formats_and_shared():
    op = fmt.opset_import()
    assert (op.domain, op.version) == ("ai.sparsekit", 1) == (fmt.DOMAIN, fmt.OPSET_VERSION)
    node, _ = sequence.make_sparse_lstm_node("l", "x", ["y", "yh", "yc"],
                                             np.ones((1, 8, 4), np.float32),
                                             np.ones((1, 8, 2), np.float32),
                                             w_bank_size=2, r_bank_size=2)
    assert node.domain == fmt.DOMAIN


def test_format_imports_only_errors():
    tree = ast.parse((Path(fmt.__file__)).read_text())
    local = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level}
    assert local <= {"errors"}, local


# ----------------------------------------------------------------------- rules, swept --

def test_ragged_keep_matches_the_documented_formula():
    for bank_size in (1, 2, 3, 7, 16, 48, 256, 300):
        for length in range(1, bank_size + 1):
            for keep in range(0, bank_size + 1):
                assert fmt.ragged_keep(length, keep, bank_size) == \
                    ref_ragged_keep(length, keep, bank_size)
    # the int arithmetic stays exact where float division would not
    assert fmt.ragged_keep(2**40 + 1, 2**40 - 1, 2**41) == -(-(2**40 + 1) * (2**40 - 1) // 2**41)


@pytest.mark.parametrize("M", [1, 3, 4, 5, 9])
@pytest.mark.parametrize("block", [1, 2, 4])
def test_groups_pad_with_zero_rows(M, block):
    rng = np.random.default_rng(M * 10 + block)
    W = rng.standard_normal((M, 11)).astype(np.float32) * (rng.random((M, 11)) < 0.4)
    grouped = fmt.group_rows(W, block)
    G = -(-M // block)
    assert grouped.shape == (G, block, 11) and fmt.num_groups(M, block) == G
    assert np.array_equal(grouped.reshape(G * block, 11)[:M], W)
    assert not grouped.reshape(G * block, 11)[M:].any()
    assert np.array_equal(fmt.kept_groups(W != 0, block), ref_kept_groups(W != 0, block))


@pytest.mark.parametrize("K", [1, 5, 16, 17, 33, 100])
def test_bank_counts_caps_and_keep_on_a_sweep(K):
    rng = np.random.default_rng(K)
    for bank_size in range(1, K + 2):
        for density in (0.1, 0.5, 1.0):
            kept = rng.random((3, K)) < density
            if bank_size <= K:
                assert np.array_equal(fmt.bank_counts(kept, bank_size),
                                      ref_bank_counts(kept, bank_size))
                caps = fmt.bank_caps(K, bank_size, 3)
                assert len(caps) == fmt.num_banks(K, bank_size) == -(-K // bank_size)
                last = K - (len(caps) - 1) * bank_size
                assert caps[-1] == (3 if last == bank_size else ref_ragged_keep(last, 3, bank_size))
            for exact in (True, False):
                assert fmt.bank_keep(kept, bank_size, exact) == \
                    ref_bank_keep(kept, bank_size, exact), (bank_size, exact)


# ------------------------------------------------------------------- rules, hypothesis --

shapes = st.tuples(st.integers(1, 13), st.integers(1, 90), st.integers(1, 90),
                   st.sampled_from([1, 4]), st.floats(0.0, 1.0), st.integers(0, 2**31))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shape=shapes, zero_kept=st.sampled_from([0.0, 0.0, 0.2]))
def test_balanced_layers_count_and_pack_like_the_loops(shape, zero_kept):
    M, K, bank_size, block, keep_frac, seed = shape
    bank_size = min(bank_size, K)
    keep = int(round(keep_frac * bank_size))
    rng = np.random.default_rng(seed)
    W = balanced_matrix(rng, M, K, bank_size, block, keep, zero_kept)
    kept = fmt.kept_groups(W != 0, block)
    assert np.array_equal(kept, ref_kept_groups(W != 0, block))
    for exact in (True, False):
        assert fmt.bank_keep(kept, bank_size, exact) == ref_bank_keep(kept, bank_size, exact)
    if zero_kept == 0.0:
        assert fmt.bank_keep(kept, bank_size) == keep
    want = ref_pack_bank(W, bank_size, block, keep)
    assert_same_bytes(fmt.pack_bank_blocks(fmt.group_rows(W, block).transpose(0, 2, 1),
                                           bank_size, keep), want)
    assert_same_bytes(pack.pack_bank(W, bank_size, block, keep=keep), want)
    if zero_kept == 0.0:  # balanced exactly: pack finds keep itself
        assert_same_bytes(pack.pack_bank(W, bank_size, block), want)
    if block == 1:
        assert_same_bytes(sequence.pack_bank_rows(W, bank_size, keep), want)
        assert np.array_equal(pack.unpack(want, M, K, "bank", 1, bank_size), W)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(D=st.sampled_from([1, 2]), H=st.integers(1, 7), I=st.integers(1, 40),
       w_bank=st.integers(1, 40), r_bank=st.integers(1, 7), seed=st.integers(0, 2**31))
def test_lstm_rows_pack_like_the_loops(D, H, I, w_bank, r_bank, seed):
    """SparseLSTM's W [D, 4H, I] / R [D, 4H, H] as rows [D·4H, K], banks along K, block 1."""
    rng = np.random.default_rng(seed)
    w_bank, r_bank = min(w_bank, I), min(r_bank, H)
    w_keep, r_keep = int(rng.integers(0, w_bank + 1)), int(rng.integers(0, r_bank + 1))
    W = balanced_matrix(rng, D * 4 * H, I, w_bank, 1, w_keep).reshape(D, 4 * H, I)
    R = balanced_matrix(rng, D * 4 * H, H, r_bank, 1, r_keep, zero_kept=0.1).reshape(D, 4 * H, H)
    direction = "bidirectional" if D == 2 else "forward"
    _, inits = sequence.make_sparse_lstm_node("l", "x", ["y", "yh", "yc"], W, R,
                                              direction=direction, w_bank_size=w_bank,
                                              r_bank_size=r_bank, w_keep=w_keep, r_keep=r_keep)
    got = {t.name: t for t in inits}
    for part, M2, bank, keep in (("W", W, w_bank, w_keep), ("R", R, r_bank, r_keep)):
        want = ref_pack_bank(M2.reshape(D * 4 * H, -1), bank, 1, keep)
        assert_same_bytes({"values": numpy_helper.to_array(got[f"l.{part}_values"]),
                           "indices": numpy_helper.to_array(got[f"l.{part}_indices"])}, want)


def test_wide_banks_use_uint16_offsets_and_bsr_int32_indices():
    rng = np.random.default_rng(3)
    W = balanced_matrix(rng, 5, 700, 300, 4, 9)
    want = ref_pack_bank(W, 300, 4, 9)
    assert want["indices"].dtype == np.uint16
    assert_same_bytes(pack.pack_bank(W, 300, 4), want)
    assert fmt.bsr_index_dtype(65536) == np.uint16 and fmt.bsr_index_dtype(65537) == np.int32
    assert fmt.bank_index_dtype(256) == np.uint8 and fmt.bank_index_dtype(257) == np.uint16


def test_packer_refuses_a_bank_over_keep():
    W = np.ones((1, 8, 1), np.float32)
    with pytest.raises(SparsekitError, match="more than keep = 3"):
        fmt.pack_bank_blocks(W, 4, 3)


def test_detect_still_finds_grouped_banks():
    rng = np.random.default_rng(5)
    kept = fmt.kept_groups(balanced_matrix(rng, 10, 100, 32, 4, 5) != 0, 4)
    W = np.where(np.repeat(kept, 4, axis=0)[:10], 1.5, 0.0).astype(np.float32)  # 1x4 blocks
    assert np.array_equal(group_mask(W != 0, 4), kept)
    assert find_bank(fmt.kept_groups(W != 0, 4)) == (32, 5)
    p = detect(W)
    assert (p.kind, p.block_rows, p.bank_size, p.keep) == ("bank", 4, 32, 5)
