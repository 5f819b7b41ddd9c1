"""Resources: the CPUs and GPU share of each trial, and the fit check that refuses a trial its share cannot hold."""

from omegaconf import DictConfig

from lorasweep import storage
from lorasweep.errors import ConfigError

SHARES = (0.125, 0.25, 0.5, 1.0)  # GPU shares gpus_per_trial=auto picks from


def gpu_memory_gb(cfg: DictConfig) -> float:
    if cfg.engine.gpu_memory_gb:
        return float(cfg.engine.gpu_memory_gb)
    import torch

    if not torch.cuda.is_available():
        raise ConfigError("engine.gpu_memory_gb", None, "the GiB of one GPU: this machine has no GPU to read it from")
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def gpu_share(cfg: DictConfig, gpu_gb: float) -> float:
    """gpus_per_trial=auto: the smallest share of one GPU (1/8 ... 1) that holds the trial's estimated peak."""
    from lorasweep.estimate import estimate, gpu_fraction

    need = gpu_fraction(estimate(cfg), gpu_gb)
    return next((s for s in SHARES if need <= s), 1.0)


def fit_check(cfg: DictConfig, share: float) -> None:
    """A trial the estimator says cannot fit its GPU share fails at once, with both sizes, before it loads anything."""
    from lorasweep.estimate import estimate

    have = share * gpu_memory_gb(cfg)
    need = estimate(cfg)["memory"]["total"]["bytes"] / 2**30
    if need > have:
        raise MemoryError(
            f"would need {need:.1f} GB, has {have:.1f} GB ({share:g} of a GPU); "
            "try quant=nf4, a smaller train.batch_size or train.gradient_checkpointing=true, "
            "or engine.skip_fit_check=true to run it anyway"
        )


def share_of(cfg: DictConfig) -> float:
    """The GPU share of one trial: engine.gpus_per_trial, or (auto) sized from that trial's own estimate."""
    g = cfg.engine.gpus_per_trial
    return gpu_share(cfg, gpu_memory_gb(cfg)) if g == "auto" else float(g)


def check_engine(cfg: DictConfig) -> None:
    """Engine fields, before the sweep's MLflow run exists (auto shares need the GPU's size up front)."""
    e = cfg.engine
    storage.check(e.storage)
    c = e.cpus_per_trial
    if c != "auto" and (isinstance(c, bool) or not isinstance(c, (int, float)) or c <= 0):
        raise ConfigError("engine.cpus_per_trial", c, "auto, or a number > 0")
    g = e.gpus_per_trial
    if g != "auto" and (isinstance(g, bool) or not isinstance(g, (int, float)) or g < 0 or (g > 1 and g != int(g))):
        raise ConfigError("engine.gpus_per_trial", g, "auto, a share in [0, 1], or a whole number of GPUs")
    if g == "auto":
        gpu_memory_gb(cfg)


def cpus_per_trial(e: DictConfig, max_concurrent: int) -> float:
    """engine.cpus_per_trial=auto: the cluster's CPUs shared among the trials that run at once, at most one node's
    worth, so one trial at a time still uses every core (a task can only use the CPUs of the node it lands on)."""
    if e.cpus_per_trial != "auto":
        return float(e.cpus_per_trial)
    import ray

    nodes = [n["Resources"].get("CPU", 0.0) for n in ray.nodes() if n["Alive"]]
    return float(max(1, min(max(nodes), sum(nodes) // max(1, max_concurrent))))
