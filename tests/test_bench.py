"""bench: statistics, inputs, reports and a smoke run on a tiny model (no timing asserted)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from sparsekit import bench as B
from sparsekit import sessions
from sparsekit.cli import main
from sparsekit.errors import SparsekitError
from sparsekit.timing import Stats, interleaved, ratio


def test_stats_against_numpy():
    t = np.array([5.0, 1.0, 3.0, 2.0, 4.0, 10.0])
    s = Stats.of(t)
    assert s.median == np.median(t) and s.min == 1.0 and s.runs == 6
    assert s.p90 == pytest.approx(np.percentile(t, 90))
    assert s.iqr == pytest.approx(np.percentile(t, 75) - np.percentile(t, 25))


def test_ratio_is_dense_over_sparse_with_round_spread():
    dense = np.array([10.0, 12.0, 11.0, 10.0])
    sparse = np.array([5.0, 4.0, 5.5, 5.0])
    r = ratio(dense, sparse)
    assert r["speedup"] == pytest.approx(np.median(dense) / np.median(sparse))
    per = dense / sparse
    assert r["round_ratio_q1"] == pytest.approx(np.percentile(per, 25))
    assert r["round_ratio_q3"] == pytest.approx(np.percentile(per, 75))


def test_interleaved_alternates_order_and_counts_runs():
    calls = []
    out = interleaved({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                      warmup=1, runs=4)
    assert calls == ["a", "b"] + ["a", "b", "b", "a", "a", "b", "b", "a"]
    assert len(out["a"]) == len(out["b"]) == 4


def test_interleaved_bursts_split_cold_from_warm(monkeypatch):
    import sparsekit.timing as timing

    # a fake clock: a run takes 5 ms when another contender ran last (cold), else 1 ms
    clock = {"t": 0.0, "last": None}
    calls = []

    def contender(name):
        def run():
            clock["t"] += (1.0 if clock["last"] == name else 5.0) / 1e3
            clock["last"] = name
            calls.append(name)
        return run

    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["t"])
    cold = {}
    out = interleaved({"a": contender("a"), "b": contender("b")}, warmup=0, runs=3, burst=3,
                      cold=cold)
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3 + ["a"] * 3 + ["b"] * 3
    assert len(out["a"]) == len(out["b"]) == 6 and len(cold["a"]) == len(cold["b"]) == 3
    assert np.allclose(out["a"], 1.0) and np.allclose(out["b"], 1.0)
    # round 2 starts with b right after b: that first run found its own caches
    assert np.allclose(cold["a"], [5.0, 5.0, 1.0]) and np.allclose(cold["b"], [5.0, 1.0, 5.0])
    with pytest.raises(ValueError, match="burst"):
        interleaved({"a": contender("a")}, burst=0)


def _matmul_model(sym=False):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 32)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    dims = ["batch", 64] if sym else [4, 64]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 32])],
        [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_make_inputs_shapes_and_errors(tmp_path):
    feeds = sessions.make_inputs(_matmul_model(sym=True), {"batch": 3})
    assert feeds["x"].shape == (3, 64) and feeds["x"].dtype == np.float32
    with pytest.raises(SparsekitError, match="--shape batch=N"):
        sessions.make_inputs(_matmul_model(sym=True))
    npz = tmp_path / "in.npz"
    np.savez(npz, x=np.ones((4, 64), np.float32))
    assert sessions.make_inputs(_matmul_model(), npz=str(npz))["x"].sum() == 256
    np.savez(npz, other=np.ones(3))
    with pytest.raises(SparsekitError, match="no array for model input"):
        sessions.make_inputs(_matmul_model(), npz=str(npz))
    np.savez(npz, x=np.ones((4, 64), np.int64))
    with pytest.raises(SparsekitError, match="model wants float32"):
        sessions.make_inputs(_matmul_model(), npz=str(npz))


def test_parse_shapes_and_device():
    assert sessions.parse_shapes(["seq=128", "batch=1"]) == {"seq": 128, "batch": 1}
    for bad in (["seq"], ["seq=x"], ["seq=0"]):
        with pytest.raises(SparsekitError):
            sessions.parse_shapes(bad)
    B.check_device("cpu")
    with pytest.raises(SparsekitError, match="supported: cpu"):
        B.check_device("cuda")


def test_smoke_run_json(tmp_path, capsys):
    dense = tmp_path / "dense.onnx"
    onnx.save(_matmul_model(), str(dense))
    code = main(["bench", str(dense), "--pattern", "unstructured", "--sparsity", "0.9",
                 "--threads", "1,2", "--runs", "3", "--warmup", "1", "--no-memory", "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rep = json.loads(out.out)
    assert [r["threads"] for r in rep["results"]] == [1, 2]
    for r in rep["results"]:  # 3 rounds of bursts of 5 (the default): 4 warm runs each
        assert r["dense"]["runs"] == r["sparse"]["runs"] == 12
        assert r["cold_dense"]["runs"] == r["cold_sparse"]["runs"] == 3
        assert r["speedup"] == pytest.approx(r["dense"]["median"] / r["sparse"]["median"])
        assert any(o["op"] == "SparseGemm" for o in r["sparse_top_ops"])
    assert rep["max_relative_difference"] < 1e-4
    assert rep["environment"]["onnxruntime"] and rep["files"]["sparse_bytes"] > 0


def test_smoke_sparse_against_dense(tmp_path, capsys):
    dense = tmp_path / "dense.onnx"
    sparse = tmp_path / "sparse.onnx"
    onnx.save(_matmul_model(), str(dense))
    assert main(["convert", str(dense), "-o", str(sparse)]) == 0
    capsys.readouterr()
    code = main(["bench", str(sparse), "--against", str(dense), "--runs", "3", "--no-memory",
                 "--no-profile"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "speedup" in out.out and "outputs agree" in out.out


@pytest.mark.parametrize("args,needle", [
    (["bench"], "nothing to benchmark"),
    (["bench", "--zoo", "mobilenet_v1", "--device", "gpu"], "supported: cpu"),
    (["bench", "--zoo", "nope"], "unknown zoo model"),
    (["bench", "--zoo", "mobilenet_v1", "--threads", "a,b"], "--threads"),
    (["bench", "--zoo", "mobilenet_v1", "--threads", "0"], "--threads"),
    (["bench", "--zoo", "mobilenet_v1", "--sparsity", "1.5"], "--sparsity"),
    (["bench", "--zoo", "mobilenet_v1", "--sweep", "0.5,2"], "--sweep"),
])
def test_bad_arguments(args, needle, capsys):
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and err[0].startswith("error:") and needle in err[0]


def test_sparse_model_needs_against(tmp_path, capsys):
    dense = tmp_path / "dense.onnx"
    sparse = tmp_path / "sparse.onnx"
    onnx.save(_matmul_model(), str(dense))
    assert main(["convert", str(dense), "-o", str(sparse)]) == 0
    capsys.readouterr()
    assert main(["bench", str(sparse)]) != 0
    assert "--against" in capsys.readouterr().err


def test_sweep_points(tmp_path):
    pts = B.sweep(_matmul_model(), [0.5, 0.9], ["block"], threads=[1], runs=3)
    assert [(p.pattern, p.sparsity, p.threads) for p in pts] == [("block", 0.5, 1), ("block", 0.9, 1)]
    assert all(p.speedup > 0 and p.converted in (0, 1) for p in pts)


def test_plot_files(tmp_path):
    pytest.importorskip("matplotlib")
    from sparsekit.plot import plot_bench, plot_sweep
    rep = B.bench(B.prepare(_matmul_model(), "block", 0.9)[1], _matmul_model(), runs=3,
                  warmup=1, profile=False, memory=False)
    plot_bench(rep, str(tmp_path / "b.png"))
    plot_sweep(B.sweep(_matmul_model(), [0.5, 0.9], ["block"], runs=3), str(tmp_path / "s.png"))
    for name in ("b.png", "s.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_pinned_pins_workers_and_restores_affinity():
    import os

    from sparsekit.sessions import pinned
    with pinned(1) as cfg:
        assert cfg == {}
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and 2 CPUs")
    before = os.sched_getaffinity(0)
    cpus = sorted(before)
    with pinned(2) as cfg:
        assert os.sched_getaffinity(0) == {cpus[0]}
        assert cfg == {"session.intra_op_thread_affinities": str(cpus[1] + 1)}
        # onnxruntime accepts it: a pinned 2-thread session runs
        x = helper.make_tensor_value_info("X", TensorProto.FLOAT, [4])
        y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
        m = helper.make_model(helper.make_graph([helper.make_node("Relu", ["X"], ["Y"])], "g",
                                                [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
        sess = sessions.session(m, 2, {**sessions.TIMING_CONFIG, **cfg}, custom_ops=False)
        out = sess.run(None, {"X": -np.ones(4, np.float32)})[0]
        assert (out == 0).all()
    assert os.sched_getaffinity(0) == before
    with pinned(len(cpus) + 1) as cfg:  # more threads than CPUs: nothing pinned
        assert cfg == {} and os.sched_getaffinity(0) == before
    with pinned(2, enabled=False) as cfg:
        assert cfg == {}
