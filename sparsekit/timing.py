"""Side-by-side timing protocol and statistics: several callables run interleaved in one process,
medians compared.

Absolute times on shared machines drift; running the contenders in alternating order, round
after round, makes them see the same drift, so their ratio holds.  Within a round each contender
runs a burst of back-to-back runs: the first of a burst starts from the caches the other
contenders left ("cold"), the rest from its own ("warm", a model served in a loop).  A small
sparse model after a large dense one is the case where the two differ: on a Zen 5 EPYC,
MobileNetV1 90% 1x4 ran 1.5-1.8 ms warm and 2.2-2.4 ms right after the dense model (5.5 ms
either way), so single runs round-robin gave a two-mode mixture whose median sat between.

Pure Python and numpy: the onnxruntime side (sessions, threads, pinning) is
:func:`sparsekit.sessions.time_models`, which `bench`, `convert --autotune` and
`convert --predict-relu --autotune` time with.
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
                progress: Optional[Callable[[int, int], None]] = None, burst: int = 1,
                cold: Optional[Dict[str, list]] = None) -> Dict[str, np.ndarray]:
    """Time each callable for `runs` rounds (or until `seconds` pass, at least 3 rounds),
    interleaved.

    Every round runs all contenders, in an order that alternates between rounds, each `burst`
    times back to back.  Returns the per-run times in milliseconds for each name: with
    burst > 1 the warm runs only (runs 2..burst of each burst; the first of each goes to
    ``cold[name]`` when a dict is given), with burst 1 every run.
    """
    if burst < 1:
        raise ValueError(f"burst must be >= 1, got {burst}")
    names = list(contenders)
    for _ in range(warmup):
        for n in names:
            contenders[n]()
    times = {n: [] for n in names}
    if cold is not None:
        for n in names:
            cold[n] = []
    start = time.perf_counter()
    total = runs
    for r in range(runs):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            for i in range(burst):
                t0 = time.perf_counter()
                contenders[n]()
                ms = (time.perf_counter() - t0) * 1e3
                if burst > 1 and i == 0:
                    if cold is not None:
                        cold[n].append(ms)
                else:
                    times[n].append(ms)
        if progress:
            progress(r + 1, total)
        if seconds is not None and r >= 2 and time.perf_counter() - start > seconds:
            break
    out = {n: np.asarray(v) for n, v in times.items()}
    if cold is not None:
        for n in names:
            cold[n] = np.asarray(cold[n])
    return out


def ratio(base_ms: np.ndarray, new_ms: np.ndarray) -> dict:
    """Speedup base/new: the ratio of medians, and the spread of the per-round ratios."""
    per_round = np.asarray(base_ms) / np.asarray(new_ms)
    q1, q3 = np.percentile(per_round, [25, 75])
    return {"speedup": float(np.median(base_ms) / np.median(new_ms)),
            "round_ratio_q1": float(q1), "round_ratio_q3": float(q3)}
