"""lorasweep: hyperparameter sweeps and experiment tracking for LoRA and QLoRA fine-tuning."""

__version__ = "0.1.0"
