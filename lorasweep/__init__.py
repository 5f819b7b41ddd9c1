"""lorasweep: hyperparameter sweeps and experiment tracking for LoRA and QLoRA fine-tuning."""

from lorasweep import quiet

__version__ = "0.1.0"
quiet.install()  # first, before any module of the package imports bitsandbytes
