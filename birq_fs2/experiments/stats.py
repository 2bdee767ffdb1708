"""Statistics of experiments over seeds and test utterances: means over seeds, paired
differences of two arms with a bootstrap interval over the test set, and a t-interval over
training runs (seeds)."""

from __future__ import annotations

import numpy as np

T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]
"""Student t quantiles (0.975) for 1-10 degrees of freedom."""

UtteranceErrors = dict[str, tuple]
"""{utterance id: (word errors, reference words, char errors, reference chars)}."""


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), (float(v.std(ddof=1)) if len(v) > 1 else None)


def seed_interval(per_seed: np.ndarray) -> list[float] | None:
    """95 % t-interval of the mean per-seed difference: the spread of training runs, which
    the utterance bootstrap does not see (None with one seed)."""
    n = len(per_seed)
    if n < 2:
        return None
    half = T_975[min(n - 1, len(T_975)) - 1] * per_seed.std(ddof=1) / np.sqrt(n)
    return [round(float(per_seed.mean() - half), 2), round(float(per_seed.mean() + half), 2)]


def interval_sign(ci: list[float]) -> int:
    """-1: the interval lies below 0, +1: above 0, 0: it holds 0 (undecided)."""
    return -1 if ci[1] < 0 else 1 if ci[0] > 0 else 0


def bootstrap_difference(
    arm: dict[int, UtteranceErrors], base: dict[int, UtteranceErrors], *,
    samples: int = 2000, seed: int = 0,
) -> dict:  # fmt: skip
    """Mean over the paired seeds of (arm - base) corpus WER and CER, with a 95 % percentile
    bootstrap interval over test utterances (one resample shared by both arms and every
    seed, so what is resampled is the test set, not the runs)."""
    seeds = sorted(set(arm) & set(base))
    ids = sorted(set.intersection(*(set(arm[s]) & set(base[s]) for s in seeds)))
    a = np.array([[arm[s][u] for u in ids] for s in seeds], dtype=np.float64)  # (S, U, 4)
    b = np.array([[base[s][u] for u in ids] for s in seeds], dtype=np.float64)

    def rates(x: np.ndarray, idx: np.ndarray) -> np.ndarray:  # -> (B, S, 2) in percent
        sums = x[:, idx].sum(axis=2)  # (S, B, 4)
        wer, cer = sums[..., 0] / sums[..., 1], sums[..., 2] / sums[..., 3]
        return 100 * np.stack([wer, cer], axis=-1).transpose(1, 0, 2)

    full = np.arange(len(ids))[None]
    diff = (rates(a, full) - rates(b, full))[0]  # (S, 2): per seed
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(ids), size=(samples, len(ids)))
    boot = (rates(a, idx) - rates(b, idx)).mean(axis=1)  # (B, 2)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {
        "seeds": seeds,
        "utterances": len(ids),
        "wer_diff_per_seed": [round(float(d), 2) for d in diff[:, 0]],
        "cer_diff_per_seed": [round(float(d), 2) for d in diff[:, 1]],
        "wer_diff": round(float(diff[:, 0].mean()), 2),
        "cer_diff": round(float(diff[:, 1].mean()), 2),
        "wer_ci95": [round(float(lo[0]), 2), round(float(hi[0]), 2)],
        "cer_ci95": [round(float(lo[1]), 2), round(float(hi[1]), 2)],
        "wer_seed_ci95": seed_interval(diff[:, 0]),
        "cer_seed_ci95": seed_interval(diff[:, 1]),
    }
