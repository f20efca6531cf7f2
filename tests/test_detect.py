"""Pattern detection from zeros alone, on masks built here independently of the pruner."""
import numpy as np
import pytest

from sparsekit.detect import detect
from sparsekit.format import ragged_keep


def _bank_matrix(rng, M, K, bank, keep, block_rows=1):
    G = -(-M // block_rows)
    mask = np.zeros((G, K), dtype=bool)
    for g in range(G):
        for start in range(0, K, bank):
            length = min(bank, K - start)
            n = keep if length == bank else ragged_keep(length, keep, bank)
            mask[g, start + rng.choice(length, n, replace=False)] = True
    mask = np.repeat(mask, block_rows, axis=0)[:M]
    return np.where(mask, rng.standard_normal((M, K)) + 3.0, 0.0).astype(np.float32)


@pytest.mark.parametrize("M,K,bank,keep", [(16, 64, 16, 3), (7, 100, 32, 4), (5, 300, 64, 10),
                                           (3, 256, 256, 20)])
def test_bank_balanced_found_with_its_bank_size(M, K, bank, keep):
    W = _bank_matrix(np.random.default_rng(0), M, K, bank, keep)
    p = detect(W)
    assert p.kind == "bank" and p.block_rows == 1
    # a smaller bank size may also hold by chance only if counts match exactly; with these
    # sizes the pruned bank is the smallest that balances
    assert p.bank_size == bank and p.keep == keep


def test_block_1x4_found_and_bank_combination():
    rng = np.random.default_rng(1)
    W = _bank_matrix(rng, 10, 128, 32, 5, block_rows=4)
    p = detect(W)
    assert (p.kind, p.block_rows, p.bank_size, p.keep) == ("bank", 4, 32, 5)


def test_plain_1x4_blocks_are_block():
    rng = np.random.default_rng(2)
    keep = rng.random((16, 200)) < 0.1
    W = np.repeat(keep, 4, axis=0) * (rng.standard_normal((64, 200)) + 3)
    p = detect(W)
    assert p.kind == "block" and p.block_rows == 4
    assert p.density == pytest.approx(keep.mean())


def test_unstructured_dense_empty():
    rng = np.random.default_rng(3)
    W = rng.standard_normal((32, 64)) * (rng.random((32, 64)) < 0.2)
    assert detect(W).kind == "unstructured"
    assert detect(np.ones((4, 4))).kind == "dense"
    assert detect(np.zeros((4, 4))).kind == "empty"


def test_one_broken_row_breaks_the_pattern():
    rng = np.random.default_rng(4)
    W = _bank_matrix(rng, 8, 64, 16, 2, block_rows=4)
    W[5, np.flatnonzero(W[5] == 0)[0]] = 1.0  # one extra nonzero in one row of one group
    p = detect(W)
    assert p.block_rows == 1 and p.kind == "unstructured"
