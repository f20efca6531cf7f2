"""sparsekit analyze: sensitivity, allocation exactly at the target, and the recipe it writes."""
import itertools
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sparsekit.analyze import allocate, analyze
from sparsekit.calibration import Calibration
from sparsekit.cli import main
from sparsekit.errors import SparsekitError
from sparsekit.prune import prune

DATA = Path(__file__).parent / "data"
GRID = [0.3, 0.5, 0.7, 0.9]


@settings(max_examples=80, deadline=None)
@given(costs=st.lists(st.integers(1, 10 ** 6), min_size=1, max_size=8),
       target=st.floats(0.01, 0.9), seed=st.integers(0, 2 ** 16))
def test_allocation_meets_the_target_exactly(costs, target, seed):
    rng = np.random.default_rng(seed)
    errors = np.sort(rng.exponential(1.0, (len(costs), len(GRID))) ** 2, axis=1)
    alloc, predicted = allocate(costs, GRID, errors, target)
    assert abs(np.dot(costs, alloc) / np.sum(costs) - target) < 1e-9
    assert all(0.0 <= s <= GRID[-1] + 1e-12 for s in alloc)
    assert all(p >= 0 for p in predicted)


def test_allocation_is_optimal_on_the_grid():
    # when the target is reachable with grid points only, the greedy hull walk finds the best combination
    rng = np.random.default_rng(1)
    costs = [100, 300, 200]
    grid = [0.25, 0.5, 0.75]
    errors = np.cumsum(rng.exponential(1.0, (3, 3)), axis=1) * np.array([[1], [5], [0.2]])
    errors = np.array([[e * (1 + i) ** 2 for i, e in enumerate(row)] for row in errors])   # convex
    target = (100 * 0.5 + 300 * 0.25 + 200 * 0.75) / 600
    alloc, predicted = allocate(costs, grid, errors, target)
    best = min((sum(np.interp(s, [0] + grid, [0] + list(errors[i])) for i, s in enumerate(combo)), combo)
               for combo in itertools.product([0] + grid, repeat=3)
               if abs(np.dot(costs, combo) / 600 - target) < 1e-12)
    assert sum(predicted) <= best[0] + 1e-9


def test_least_sensitive_layer_gets_the_most_sparsity():
    errors = [[0.01, 0.02, 0.05, 0.1], [1.0, 2.0, 5.0, 10.0]]
    alloc, _ = allocate([1000, 1000], GRID, errors, 0.5)
    assert alloc[0] == pytest.approx(0.9) and alloc[1] == pytest.approx(0.1)


def test_unreachable_target_is_an_error():
    with pytest.raises(SparsekitError, match="outside"):
        allocate([1], GRID, [[0.1] * 4], 0.95)


def _digits_calibration(n=256):
    d = np.load(DATA / "digits.npz")
    x = d["images"].astype(np.float32)[:, None] / 16.0
    return Calibration({"input": x[d["train_idx"][:n]]}, 64, "digits")


@pytest.mark.parametrize("by", ["params", "flops"])
def test_analyze_digits_recipe_reaches_the_target(by):
    model = onnx.load(DATA / "digits_cnn.onnx")
    rep = analyze(model, _digits_calibration(), 0.8, by=by, pattern="unstructured", grid=GRID, samples=128)
    assert [ls.name for ls in rep.layers] == ["conv2", "conv3", "fc1", "fc2"]
    assert rep.achieved == pytest.approx(0.8, abs=1e-9)
    assert rep.achieved_counts == pytest.approx(0.8, abs=2e-3)    # whole weights per layer
    for ls in rep.layers:   # more weights removed, more error (the trials are real prunes)
        assert ls.errors[-1] > ls.errors[0] >= 0
    recipe = rep.recipe()
    assert recipe["default"] == {"pattern": "unstructured", "sparsity": 0.0}
    pruned, report = prune(model, "block", 0.5, recipe=recipe)
    got = {r.name: r.achieved for r in report.layers}
    for ls in rep.layers:
        if ls.sparsity > 0:
            assert got[ls.name] == pytest.approx(ls.sparsity, abs=2e-3)
    costs = {ls.name: (ls.params if by == "params" else ls.flops) for ls in rep.layers}
    total = sum(costs.values())
    assert sum(costs[n] * got.get(n, 0.0) for n in costs) / total == pytest.approx(0.8, abs=2e-3)


def test_analyze_magnitude_method_and_bad_settings():
    model = onnx.load(DATA / "digits_cnn.onnx")
    cal = _digits_calibration(128)
    rep = analyze(model, cal, 0.5, method="magnitude", grid=GRID, samples=64)
    assert all(ls.method == "magnitude" for ls in rep.layers)
    for kw, match in [({"by": "bytes"}, "by must be"), ({"method": "x"}, "method must be"),
                      ({"grid": [0.0, 0.5]}, "grid"), ({"grid": [0.3, 0.4]}, "above the largest grid")]:
        with pytest.raises(SparsekitError, match=match):
            analyze(model, cal, 0.5, **kw)
    with pytest.raises(SparsekitError, match="target"):
        analyze(model, cal, 1.5)


def test_cli_analyze_then_prune_with_recipe(tmp_path, capsys):
    d = np.load(DATA / "digits.npz")
    x = d["images"].astype(np.float32)[:, None] / 16.0
    np.savez(tmp_path / "cal.npz", input=x[d["train_idx"][:128]])
    recipe, plot = tmp_path / "r.yaml", tmp_path / "s.png"
    args = ["analyze", str(DATA / "digits_cnn.onnx"), "--calibration", str(tmp_path / "cal.npz"),
            "--target", "0.75", "--pattern", "bank", "--grid", "0.5,0.7,0.9", "--samples", "64",
            "-o", str(recipe), "--plot", str(plot), "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["achieved"] == pytest.approx(0.75) and plot.stat().st_size > 1000
    data = yaml.safe_load(recipe.read_text())
    assert data["default"]["pattern"] == "bank" and set(data["layers"]) == {"conv2", "conv3", "fc1", "fc2"}
    assert main(args) == 1                       # outputs exist: --force needed
    assert "already exists" in capsys.readouterr().err
    pruned = tmp_path / "p.onnx"
    assert main(["prune", str(DATA / "digits_cnn.onnx"), "--recipe", str(recipe), "--calibration",
                 str(tmp_path / "cal.npz"), "-o", str(pruned), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["layers"]
    assert all(r["method"] == "reconstruction" and r["error"] <= r["error_magnitude"] for r in rows)
    assert main(["analyze", str(DATA / "digits_cnn.onnx"), "--target", "0.5"]) == 1
    assert "needs --calibration" in capsys.readouterr().err
    assert main(["prune", str(DATA / "digits_cnn.onnx"), "-o", str(tmp_path / "q.onnx"),
                 "--preprocess", "imagenet"]) == 1
    assert "need --calibration" in capsys.readouterr().err
    assert not (tmp_path / "q.onnx").exists()
