"""Shared test set-up: offline hub, a private MLflow store per test, one model cache per session."""

import atexit
import os
import shutil
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# A model cache of this session's own (before lorasweep.model is imported): no test relies on one left by a past run.
if "LORASWEEP_CACHE" not in os.environ:
    os.environ["LORASWEEP_CACHE"] = tempfile.mkdtemp(prefix="lorasweep-test-cache-")
    atexit.register(shutil.rmtree, os.environ["LORASWEEP_CACHE"], True)

import mlflow
import pytest


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store; returns its URI."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # artifacts land under tmp_path/mlruns
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run():
        mlflow.end_run()


def all_runs(uri: str):
    client = mlflow.MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps) if exps else []


@pytest.fixture
def no_gpu(monkeypatch):
    """What a host without CUDA sees, on any host: tests of GPU-less behaviour hold on a GPU box too."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
