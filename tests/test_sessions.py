"""sparsekit.sessions: the one session factory, its options, and side-by-side timing
(no elapsed time asserted)."""
import os

import numpy as np
import pytest
from onnx import TensorProto, helper

import sparsekit
from sparsekit import sessions
from sparsekit.errors import SparsekitError
from sparsekit.format import opset_import
from sparsekit.pack import make_sparse_gemm_node


def _block_sparse(rng, M=8, K=16):
    """W [M, K] whose zeros come in whole 4-row blocks of a column (the bsr4 layout)."""
    W = rng.uniform(0.25, 1.25, (M, K)).astype(np.float32) * rng.choice([-1.0, 1.0], (M, K))
    keep = rng.random((M // 4, K)) >= 0.5
    return (W * np.repeat(keep, 4, axis=0)).astype(np.float32)


def _models(rng):
    """(dense MatMul model, SparseGemm model, W) computing the same Y = X @ W.T."""
    W = _block_sparse(rng)
    x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [2, 16])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    node, inits = make_sparse_gemm_node("fc", "X", "Y", W)
    sparse = helper.make_model(helper.make_graph([node], "sparse", [x], [y], inits),
                               opset_imports=[helper.make_opsetid("", 17), opset_import()],
                               ir_version=9)
    wt = helper.make_tensor("Wt", TensorProto.FLOAT, [16, 8], W.T.ravel().tolist())
    dense = helper.make_model(
        helper.make_graph([helper.make_node("MatMul", ["X", "Wt"], ["Y"])], "dense", [x], [y],
                          [wt]),
        opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return dense, sparse, W


def test_factory_registers_the_library_and_matches_numpy():
    rng = np.random.default_rng(0)
    _, sparse, W = _models(rng)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    y = sessions.session(sparse).run(None, {"X": x})[0]
    np.testing.assert_allclose(y, x @ W.T, rtol=1e-5, atol=1e-5)
    # the package-level name is the same factory
    assert sparsekit.session is sessions.session
    assert sparsekit.get_library_path is sessions.get_library_path


def test_node_times_reads_and_removes_the_profile():
    rng = np.random.default_rng(2)
    _, sparse, _ = _models(rng)
    sess = sessions.session(sparse, profile=True)
    for _ in range(3):
        sess.run(None, {"X": rng.standard_normal((2, 16)).astype(np.float32)})
    ended = []
    end = sess.end_profiling
    sess.end_profiling = lambda: ended.append(end()) or ended[-1]
    times = sessions.node_times(sess)
    assert len(ended) == 1 and not os.path.exists(ended[0])
    assert list(times) == ["fc"]
    op, runs = times["fc"]
    assert op == "SparseGemm" and len(runs) == 3 and all(t >= 0 for t in runs)


def test_dense_sessions_do_not_load_the_library(tmp_path):
    rng = np.random.default_rng(1)
    dense, sparse, W = _models(rng)
    x = rng.standard_normal((2, 16)).astype(np.float32)
    y = sessions.session(dense, custom_ops=False).run(None, {"X": x})[0]
    np.testing.assert_allclose(y, x @ W.T, rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="ai.sparsekit|SparseGemm"):
        sessions.session(sparse, custom_ops=False)


def test_threads_config_and_settings_reach_the_options():
    import onnxruntime as ort

    so = sessions.session_options(3, {"session.intra_op.allow_spinning": "0"},
                                  custom_ops=False, log_severity_level=3)
    assert so.intra_op_num_threads == 3 and so.log_severity_level == 3
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert sessions.session_options(custom_ops=False).intra_op_num_threads == \
        ort.SessionOptions().intra_op_num_threads
    dense, _, _ = _models(np.random.default_rng(2))
    s = sessions.session(dense, 2, sessions.TIMING_CONFIG, custom_ops=False)
    opts = s.get_session_options()
    assert opts.intra_op_num_threads == 2
    for k, v in sessions.TIMING_CONFIG.items():
        assert opts.get_session_config_entry(k) == v
    with pytest.raises(SparsekitError, match="threads must be >= 1"):
        sessions.session_options(0)
    with pytest.raises(SparsekitError, match="unknown onnxruntime SessionOptions setting"):
        sessions.session_options(custom_ops=False, no_such_setting=1)


def test_profile_writes_a_profile_named_by_side():
    rng = np.random.default_rng(3)
    dense, sparse, _ = _models(rng)
    feeds = {"X": rng.standard_normal((2, 16)).astype(np.float32)}
    for model, custom, prefix in ((dense, False, "sparsekit_dense"),
                                  (sparse, True, "sparsekit_sparse")):
        s = sessions.session(model, 1, custom_ops=custom, profile=True)
        assert s.get_session_options().enable_profiling
        s.run(None, feeds)
        path = s.end_profiling()
        try:
            assert os.path.basename(path).startswith(prefix)
        finally:
            os.unlink(path)


def test_sources_bytes_and_paths(tmp_path):
    dense, _, _ = _models(np.random.default_rng(4))
    p = tmp_path / "d.onnx"
    p.write_bytes(dense.SerializeToString())
    for src in (dense.SerializeToString(), str(p), p):
        assert sessions.session(src, custom_ops=False).get_inputs()[0].name == "X"
    with pytest.raises(SparsekitError, match="no such file"):
        sessions.session(tmp_path / "missing.onnx")


def test_paired_timing_returns_both_medians():
    rng = np.random.default_rng(5)
    dense, sparse, _ = _models(rng)
    feeds = {"X": rng.standard_normal((2, 16)).astype(np.float32)}
    d, s = sessions.time_pair(dense, sparse, feeds, 1, warmup=1, runs=3)
    assert isinstance(d, float) and isinstance(s, float) and d > 0 and s > 0
    calls = []
    times = sessions.time_models(dense, sparse, feeds, 2, warmup=1, runs=4,
                                 progress=lambda done, total: calls.append((done, total)))
    assert set(times) == {"dense", "sparse"}
    assert len(times["dense"]) == len(times["sparse"]) == 4
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_paired_timing_restores_affinity():
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and 2 CPUs")
    before = os.sched_getaffinity(0)
    dense, sparse, _ = _models(np.random.default_rng(6))
    feeds = {"X": np.ones((2, 16), np.float32)}
    sessions.time_pair(dense, sparse, feeds, 2, warmup=0, runs=2)
    assert os.sched_getaffinity(0) == before
