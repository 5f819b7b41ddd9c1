"""Signal-to-noise ratio of base weights (Marchenko–Pastur noise edge) for the `spectrum:<k>%` target rule.

Formula and its sources: docs/spectrum.md. Scores are computed once per base model and cached as JSON.
"""

import json
import math
import os
import time
from functools import lru_cache
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lorasweep.base import AUTO, CACHE, folder, weights_key
from lorasweep.targets import linear_names


@lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law with aspect ratio beta = n/m ≤ 1 and unit variance."""
    from scipy.integrate import quad
    from scipy.optimize import brentq

    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(t: float) -> float:
        return math.sqrt(max((hi - t) * (t - lo), 0.0)) / (2 * math.pi * beta * t)

    def cdf(x: float) -> float:
        return quad(density, lo, x, limit=200)[0]

    return brentq(lambda x: cdf(x) - 0.5, lo, hi, xtol=1e-10)


def snr(weight: torch.Tensor) -> dict[str, float]:
    """Noise scale, MP bulk edge, signal count and SNR of one weight matrix (any orientation)."""
    w = weight.detach().double()
    w = w.reshape(w.shape[0], -1)
    m, n = max(w.shape), min(w.shape)
    sv = torch.linalg.svdvals(w)
    beta = n / m
    # Pure noise with entry std s has σ²/m following MP; its median pins s without being moved by a few
    # large signal values (the median is a robust statistic, unlike the mean or the top σ).
    sigma_noise = float(sv.median()) / math.sqrt(m * mp_median(beta))
    edge = sigma_noise * (math.sqrt(m) + math.sqrt(n))
    signal, noise = float(sv[sv > edge].sum()), float(sv[sv <= edge].sum())
    return {
        "m": m,
        "n": n,
        "sigma1": float(sv[0]),
        "sigma_noise": sigma_noise,
        "edge": edge,
        "n_signal": int((sv > edge).sum()),
        "snr": signal / noise if noise > 0 else math.inf,
    }


def scores(model: nn.Module) -> dict[str, dict[str, float]]:
    """snr() of every Linear layer an adapter may target, keyed by full module name."""
    mods = dict(model.named_modules())
    return {name: snr(mods[name].weight) for name in linear_names(model)}


def cached_scores(cfg: DictConfig) -> dict[str, dict[str, float]]:
    """The base model's scores, from the cache when this exact base was scored before (the weights are
    loaded in float32 and unquantized: the rule ranks the pretrained weights, not a quantization of them)."""
    path = cache_file(cfg)
    if path.exists():
        return json.loads(path.read_text())["modules"]
    start = time.perf_counter()
    base = AUTO[cfg.model.task].from_pretrained(folder(cfg.model), dtype=torch.float32)
    loaded = time.perf_counter()
    table = scores(base)
    done = time.perf_counter()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent trials each write their own, then one rename wins
    tmp.write_text(
        json.dumps(
            {"model": cfg.model.name, "load_s": loaded - start, "svd_s": done - loaded, "modules": table}, indent=1
        )
    )
    tmp.rename(path)  # whole or absent: a concurrent trial never reads half a file
    return table


def cache_file(cfg: DictConfig) -> Path:
    return CACHE / "spectrum" / f"{cfg.model.name}-{weights_key(cfg.model)}.json"
