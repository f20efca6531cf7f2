"""Side-by-side timing protocol and statistics: several callables run interleaved in one process,
medians compared.

Absolute times on shared machines drift; running the contenders in alternating order, round
after round, makes them see the same drift, so their ratio holds.  Pure Python and numpy: the
onnxruntime side (sessions, threads, pinning) is :func:`sparsekit.sessions.time_models`, which
`bench`, `convert --autotune` and `convert --predict-relu --autotune` time with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np


@dataclass
class Stats:
    """Latency summary of one contender, in milliseconds."""
    median: float
    p90: float
    min: float
    mean: float
    iqr: float
    runs: int

    @classmethod
    def of(cls, times_ms) -> "Stats":
        t = np.asarray(times_ms, dtype=np.float64)
        q1, q3 = np.percentile(t, [25, 75])
        return cls(float(np.median(t)), float(np.percentile(t, 90)), float(t.min()),
                   float(t.mean()), float(q3 - q1), int(t.size))

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def interleaved(contenders: Dict[str, Callable[[], object]], *, warmup: int = 3,
                runs: int = 20, seconds: Optional[float] = None,
                progress: Optional[Callable[[int, int], None]] = None) -> Dict[str, np.ndarray]:
    """Time each callable `runs` times (or until `seconds` pass, at least 3 rounds), interleaved.

    Every round runs all contenders once, in an order that alternates between rounds.
    Returns the per-round times in milliseconds for each name.
    """
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times = {n: [] for n in names}
    start = time.perf_counter()
    total = runs
    for r in range(runs):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            t0 = time.perf_counter()
            contenders[n]()
            times[n].append((time.perf_counter() - t0) * 1e3)
        if progress:
            progress(r + 1, total)
        if seconds is not None and r >= 2 and time.perf_counter() - start > seconds:
            break
    return {n: np.asarray(v) for n, v in times.items()}


def ratio(base_ms: np.ndarray, new_ms: np.ndarray) -> dict:
    """Speedup base/new: the ratio of medians, and the spread of the per-round ratios."""
    per_round = np.asarray(base_ms) / np.asarray(new_ms)
    q1, q3 = np.percentile(per_round, [25, 75])
    return {"speedup": float(np.median(base_ms) / np.median(new_ms)),
            "round_ratio_q1": float(q1), "round_ratio_q3": float(q3)}
