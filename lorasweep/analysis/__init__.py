"""Analysis of tracked sweeps: the LoRA paper's rank tables, adapter spectra and subspace figures, from MLflow."""
