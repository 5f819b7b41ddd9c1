"""analysis/: reports built from MLflow runs made here with known metrics and saved adapters (no training)."""

import json
import math
import re
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from mlflow.entities import Metric, Param
from safetensors.torch import save_file

from lorasweep.analysis import arms, rejudge, report, runs, subspace, tables, verdicts
from lorasweep.errors import ConfigError

K = 96  # width of the toy A matrices (k >= the largest r)
LAYERS = 2
MODULES = {
    "q": "attention.self.query",
    "v": "attention.self.value",
    "k": "attention.self.key",
    "o": "attention.output.dense",
}


# ----------------------------------------------------------------------------------------- building runs


def basis(seed: int) -> torch.Tensor:
    """A K×K orthonormal basis per seed: the adapters of one seed share right-singular vectors."""
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.linalg.qr(torch.randn(K, K, generator=g, dtype=torch.float64)).Q


def lora_a(r: int, seed: int, layer: int, mtype: str) -> torch.Tensor:
    """A = diag(s) Qᵀ with decreasing s: its top-i right-singular vectors are the first i columns of Q, so
    r=8 and r=64 of one seed share their top subspaces (φ = 1), and two seeds do not."""
    q = basis(seed * 100 + layer * 10 + "qkvo".index(mtype))
    s = torch.linspace(2.0, 1.0, r, dtype=torch.float64)
    return (s[:, None] * q[:, :r].T).float()


def write_adapter(path: Path, r: int, seed: int, targets: list[str]) -> None:
    path.mkdir(parents=True)
    tensors = {}
    for layer in range(LAYERS):
        for t in targets:
            name = f"base_model.model.bert.encoder.layer.{layer}.{MODULES[t]}"
            tensors[f"{name}.lora_A.weight"] = lora_a(r, seed, layer, t).contiguous()
            tensors[f"{name}.lora_B.weight"] = torch.zeros(K, r)
    save_file(tensors, str(path / "adapter_model.safetensors"))
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": r}))


def make_sweep(
    tmp: Path,
    name: str,
    cells: list[dict],
    metric: str = "eval_accuracy",
    mode: str = "max",
    stamp: str = "20260101-000000",
    adapters: bool = False,
) -> tuple[str, str]:
    """A parent run tagged as a sweep and a child per cell: cell = {targets, r, seed, value, state?, extra?}."""
    client = mlflow.MlflowClient()
    exp = mlflow.set_experiment("lorasweep").experiment_id
    sweep_id = f"{name}-{stamp}"
    parent = client.create_run(
        exp,
        tags={
            "lorasweep_role": "sweep",
            "sweep_id": sweep_id,
            "device": "cpu (test)",
            "git_commit": "0123456789" * 4,
            "torch_version": "9.9",
            "command": f"lorasweep sweep sweep={name}",
        },
    ).info.run_id
    client.log_batch(
        parent,
        params=[
            Param("sweep.metric", metric),
            Param("sweep.mode", mode),
            Param("model.name", "minilm"),
            Param("data.name", "tweets"),
        ],
    )
    for c in cells:
        run = client.create_run(
            exp, tags={"mlflow.parentRunId": parent, "sweep_id": sweep_id, "trial_state": c.get("state", "COMPLETE")}
        ).info.run_id
        params = {
            "adapter.r": c["r"],
            "adapter.targets": json.dumps(c["targets"], separators=(",", ":")),
            "adapter.alpha": 16,
            "seed": c["seed"],
            "train.seed": c["seed"],
            "model.name": "minilm",
            "train.max_steps": 60,
            **c.get("params", {}),
        }
        n = len(c["targets"])
        er = min(c["r"], 3)  # effective rank 95 % capped at 3: a low-rank update
        metrics = {
            **({} if "history" in c else {metric: c["value"]}),
            "trainable_params": 2 * K * c["r"] * n * LAYERS,
            "peak_memory_mb": 500 + c["r"],
            "energy_rank95_mean": er,
            "effective_rank_mean": er + 0.5,
            **{f"energy_rank95_{t}_mean": er for t in c["targets"]},
            **{f"effective_rank_{t}_mean": er + 0.5 for t in c["targets"]},
            **c.get("metrics", {}),
        }
        now = int(time.time() * 1000)
        client.log_batch(
            run,
            params=[Param(k, str(v)) for k, v in params.items()],
            metrics=[Metric(k, float(v), now, 60) for k, v in metrics.items()],
        )
        for step, v in c.get("history", []):
            client.log_metric(run, metric, v, step=step)
        if adapters:
            d = tmp / "art" / run
            write_adapter(d / "adapter", c["r"], c["seed"], c["targets"])
            client.log_artifacts(run, str(d / "adapter"), "adapter")
            spectra = [
                {"name": f"layer.{l}.{t}", "module_type": t, "r": c["r"], "sv": [1.0 / (i + 1) for i in range(c["r"])]}
                for l in range(LAYERS)
                for t in c["targets"]
            ]
            (d / "spectra.json").write_text(json.dumps(spectra))
            client.log_artifact(run, str(d / "spectra.json"), "spectra")
        client.set_terminated(run, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return sweep_id, parent


TABLE6_CELLS = [
    {"targets": t, "r": r, "seed": s, "value": 0.60 + 0.01 * s + (0.05 if t == ["q", "v"] else 0)}
    for t in (["q"], ["q", "v"])
    for r in (1, 8, 64)
    for s in (0, 1, 2)
]


# ----------------------------------------------------------------------------------------- φ


def test_phi_is_one_for_identical_and_zero_for_orthogonal_subspaces():
    a = torch.randn(8, 32)
    assert np.allclose(subspace.phi_grid(a, a), 1.0)
    assert np.allclose(subspace.phi_grid(a, 3.0 * a), 1.0)  # scale does not move the subspace
    e = torch.eye(32)
    a1, a2 = e[:4] * torch.tensor([4.0, 3, 2, 1])[:, None], e[4:12]
    assert np.allclose(subspace.phi_grid(a1, a2), 0.0)
    assert subspace.phi(a1, a2, 4, 8) == pytest.approx(0.0, abs=1e-12)
    # one subspace inside the other: φ(i, j) = 1 whenever the smaller top subspace is contained
    big = torch.cat([a1, e[4:8] * 0.5])
    assert subspace.phi_grid(a1, big)[3, 3] == pytest.approx(1.0)


def test_phi_matches_a_direct_computation_on_random_matrices():
    g = torch.Generator().manual_seed(0)
    a1, a2 = torch.randn(8, 40, generator=g), torch.randn(64, 40, generator=g)
    grid = subspace.phi_grid(a1, a2)
    assert grid.shape == (8, 40)  # A₂ has rank 40 < 64: only 40 right-singular vectors
    _, _, v1 = np.linalg.svd(a1.double().numpy(), full_matrices=False)
    _, _, v2 = np.linalg.svd(a2.double().numpy(), full_matrices=False)
    for i, j in [(1, 1), (1, 40), (3, 7), (8, 8), (8, 33), (5, 2)]:
        u1, u2 = v1[:i].T, v2[:j].T  # Eq. 4: the top-i and top-j right-singular vectors as columns
        direct = np.linalg.norm(u1.T @ u2, "fro") ** 2 / min(i, j)
        assert grid[i - 1, j - 1] == pytest.approx(direct, abs=1e-9)
        assert subspace.phi(a1, a2, i, j) == pytest.approx(direct, abs=1e-9)
    assert ((grid >= -1e-12) & (grid <= 1 + 1e-12)).all()


def test_module_names_layers_and_types():
    key = "base_model.model.bert.encoder.layer.3.attention.self.query.lora_A.weight"
    name = subspace.module_name(key)
    assert name == "bert.encoder.layer.3.attention.self.query"
    assert subspace.layer_of(name) == 3 and subspace.type_of(name) == "q"
    assert subspace.type_of("model.layers.7.mlp.down_proj") == "down"
    assert subspace.type_of("bert.encoder.layer.0.output.dense") == "down"


# ----------------------------------------------------------------------------------------- stats and verdicts


def test_group_stats_mean_std_n():
    df = pd.DataFrame({"weights": ["Wq"] * 3 + ["Wq+Wv"], "r": [8, 8, 8, 4], "value": [60.0, 62.0, 64.0, 70.0]})
    s = tables.group_stats(df, ["weights", "r"], "value")
    assert list(s.columns) == ["weights", "r", "mean", "std", "n", "values"]
    wq = s[s["weights"] == "Wq"].iloc[0]
    assert (wq["mean"], wq["std"], wq["n"]) == (62.0, 2.0, 3)  # sample std, ddof=1
    assert wq["values"] == (60.0, 62.0, 64.0)  # the seeds a verdict is tested on
    assert math.isnan(s[s["weights"] == "Wq+Wv"].iloc[0]["std"])  # one seed: no std


def stats(rows):
    """Group stats rows (weights, r, mean, std, n=3), each with three seeds' values: mean - std, mean, mean + std,
    whose sample mean and std are the row's."""
    assert all(n == 3 for *_, n in rows)
    return pd.DataFrame(
        [(w, r, m, sd, n, (m - sd, m, m + sd)) for w, r, m, sd, n in rows],
        columns=["weights", "r", "mean", "std", "n", "values"],
    )


def test_rank_verdict_agrees_inside_the_margin_disagrees_outside_and_is_undecided_across_it():
    agree = verdicts.table6_verdicts(stats([("Wq", 1, 60.0, 0.1, 3), ("Wq", 64, 60.5, 0.1, 3)]), "%")
    assert agree[0]["verdict"].startswith("agree") and agree[0]["claim"] == "Wq: r=1 is within 1.00 pts of r=64"
    assert agree[0]["difference"] == -0.5 and agree[0]["tolerance"] == 1.0  # the 1-pt margin of a metric in %
    # Welch by hand: se = √(0.01/3 + 0.01/3) = 0.0816, 4 degrees of freedom, t = 2.776: -0.5 ± 0.227
    assert agree[0]["interval"] == "[-0.727, -0.273]"
    assert "68.8 vs 70.0 (-1.2)" in agree[0]["paper"]  # from the paper's Table 6
    far = verdicts.table6_verdicts(stats([("Wq", 1, 50.0, 1.0, 3), ("Wq", 64, 60.0, 1.0, 3)]), "%")
    assert far[0]["verdict"].startswith("disagree") and far[0]["difference"] == -10.0
    # the same means with noisy seeds: -0.5 ± 2.27 covers both "within 1 pt" and "not": undecided. Seeds that would
    # decide it, by hand: (1.96 + 0.84)² · (1² + 1²) / 0.5² + 1.96² / 4 = 63.75 -> 64 per config
    noisy = verdicts.table6_verdicts(stats([("Wq", 1, 60.0, 1.0, 3), ("Wq", 64, 60.5, 1.0, 3)]), "%")
    assert noisy[0]["verdict"].startswith("undecided") and noisy[0]["interval"] == "[-2.767, +1.767]"
    assert "~64 seeds per config would decide it" in noisy[0]["verdict"]
    # one seed per cell has no spread: undecided, and no count can be given
    single = pd.DataFrame(
        [("Wq", 1, 60.0, math.nan, 1, (60.0,)), ("Wq", 64, 60.5, math.nan, 1, (60.5,))],
        columns=["weights", "r", "mean", "std", "n", "values"],
    )
    (one, *_) = verdicts.table6_verdicts(single, "%")
    assert one["verdict"].startswith("undecided") and "no interval: a group with one seed" in one["verdict"]
    assert "would decide" not in one["verdict"]


def test_sufficient_rank_verdict_wq_needs_larger_r_than_wq_wv():
    # Wq is 4 pts short at r=1 and reaches its best at r=4; Wq+Wv is within 1 pt of its best already at r=1
    agree = verdicts.table6_verdicts(
        stats(
            [
                ("Wq", 1, 60.0, 0.5, 3),
                ("Wq", 4, 64.0, 0.5, 3),
                ("Wq", 64, 63.5, 0.5, 3),
                ("Wq+Wv", 1, 69.5, 0.5, 3),
                ("Wq+Wv", 4, 70.0, 0.5, 3),
                ("Wq+Wv", 64, 70.0, 0.5, 3),
            ]
        ),
        "%",
    )[-1]
    assert agree["claim"].startswith("Wq alone needs a larger r") and agree["verdict"].startswith("agree")
    assert agree["difference"] == 2.0 and "Wq r=4" in agree["ours"] and "Wq+Wv r=1" in agree["ours"]
    assert "WikiSQL: Wq r=2, Wq+Wv r=1; MultiNLI: Wq r=1, Wq+Wv r=1" == agree["paper"]  # from Table 6, 1-pt floor
    same = verdicts.table6_verdicts(
        stats(
            [("Wq", 1, 63.5, 0.5, 3), ("Wq", 64, 64.0, 0.5, 3), ("Wq+Wv", 1, 66.0, 0.5, 3), ("Wq+Wv", 64, 70.0, 0.5, 3)]
        ),
        "%",
    )[-1]
    assert same["verdict"].startswith("disagree") and same["difference"] == -6.0  # log2(1/64): Wq+Wv needs more
    lower_is_better = verdicts.table6_verdicts(
        stats(
            [("Wq", 1, 2.0, 0.01, 3), ("Wq", 64, 1.0, 0.01, 3), ("Wq+Wv", 1, 1.0, 0.01, 3), ("Wq+Wv", 64, 1.0, 0.01, 3)]
        ),
        "",
        "min",
    )[-1]
    assert lower_is_better["verdict"].startswith("agree")
    one_rank = verdicts.table6_verdicts(stats([("Wq", 8, 60.0, 0.5, 3), ("Wq+Wv", 8, 61.0, 0.5, 3)]), "%")[-1]
    assert one_rank["verdict"].startswith("n/a")


def test_equal_budget_verdicts_on_agreeing_and_disagreeing_data():
    good = stats(
        [("Wq", 8, 60.0, 0.5, 3), ("Wk", 8, 59.0, 0.5, 3), ("Wv", 8, 63.0, 0.5, 3), ("Wq+Wv", 4, 64.0, 0.5, 3)]
    )
    v = {x["claim"].split(" ")[0]: x for x in verdicts.table5_verdicts(good, "%", "max")}
    assert v["Wq+Wv"]["verdict"].startswith("agree") and v["Wq+Wv"]["difference"] == -1.0  # the best other, Wv
    assert v["Wq"]["verdict"].startswith("agree") and v["Wq"]["difference"] == 4.0
    assert v["Wk"]["verdict"].startswith("agree") and v["Wk"]["difference"] == 5.0
    bad = stats([("Wq", 8, 66.0, 0.5, 3), ("Wk", 8, 63.5, 0.5, 3), ("Wq+Wv", 4, 63.0, 0.5, 3)])
    v = {x["claim"].split(" ")[0]: x for x in verdicts.table5_verdicts(bad, "%", "max")}
    assert v["Wq+Wv"]["verdict"].startswith("disagree") and v["Wq+Wv"]["difference"] == 3.0
    assert v["Wq"]["verdict"].startswith("disagree") and v["Wk"]["verdict"].startswith("disagree")
    # mode=min (a loss): lower is better, so the same numbers read the other way
    v = {x["claim"].split(" ")[0]: x for x in verdicts.table5_verdicts(bad, "", "min")}
    assert v["Wq+Wv"]["verdict"].startswith("agree")
    # Wq+Wv 1.5 pts ahead of Wq, ± 1.13 (Welch, 4 df): across the 1-pt margin. By hand:
    # (1.96 + 0.84)² · (0.5² + 0.5²) / 0.5² + 1.96² / 4 = 16.66 -> 17 seeds per config
    close = stats([("Wq", 8, 62.5, 0.5, 3), ("Wq+Wv", 4, 64.0, 0.5, 3)])
    v = {x["claim"].split(" ")[0]: x for x in verdicts.table5_verdicts(close, "%", "max")}
    assert v["Wq"]["verdict"].startswith("undecided") and "~17 seeds per config would decide it" in v["Wq"]["verdict"]
    missing = verdicts.table5_verdicts(stats([("Wq", 8, 60.0, 0.5, 3)]), "%", "max")
    assert all(x["verdict"].startswith("n/a") for x in missing)


def test_low_rank_verdict():
    t = pd.DataFrame(
        {
            "r": [64, 64, 8],
            "metrics.energy_rank95_q_mean": [10.0, 12.0, 5.0],
            "metrics.energy_rank95_v_mean": [50.0, 40.0, 8.0],
        }
    )
    v = {x["claim"][:4]: x for x in verdicts.spectra_verdicts(t)}
    assert v["ΔWq:"]["verdict"].startswith("agree") and v["ΔWq:"]["difference"] == pytest.approx(11 / 64, abs=1e-3)
    assert v["ΔWv:"]["verdict"].startswith("disagree")


def test_a_single_seed_has_no_std_and_shows_a_dash_not_nan():
    t = pd.DataFrame({"r": [64], "metrics.energy_rank95_q_mean": [19.5]})
    (v,) = verdicts.spectra_verdicts(t)
    assert v["ours"] == "k = 19.5 ± – of r = 64 (n=1)"
    two = verdicts.spectra_verdicts(pd.DataFrame({"r": [64, 64], "metrics.energy_rank95_q_mean": [19.0, 20.0]}))
    assert two[0]["ours"] == f"k = 19.5 ± {math.sqrt(0.5):.1f} of r = 64 (n=2)"  # sample std of 19 and 20 by hand


# ----------------------------------------------------------------------------------------- reports end to end


def test_report_imports_no_bitsandbytes_and_prints_no_kernel_failure(store, tmp_path):
    """`lorasweep report` on a sweep with adapters (the subspace figures read them) in a fresh process, offline:
    bitsandbytes is never imported, so nothing about its hub kernel is printed."""
    import subprocess
    import sys

    sweep_id, _ = make_sweep(tmp_path, "paper_table6", TABLE6_CELLS, adapters=True)
    code = (
        "import sys; from lorasweep.cli import main; rc = main(['report', sys.argv[1], '--no-log']); "
        "print('bitsandbytes imported:', 'bitsandbytes' in sys.modules); sys.exit(rc)"
    )
    p = subprocess.run(
        [sys.executable, "-c", code, sweep_id], capture_output=True, text=True, timeout=900, cwd=tmp_path
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert "bitsandbytes imported: False" in p.stdout
    assert "kernels-community" not in p.stdout + p.stderr and "gemm_4bit" not in p.stdout + p.stderr
    assert (tmp_path / "reports" / sweep_id / "subspace.csv").exists()  # the adapters were read


def test_table6_report_from_mlflow(store, tmp_path):
    sweep_id, parent = make_sweep(tmp_path, "paper_table6", TABLE6_CELLS, adapters=True)
    assert report.cli([sweep_id]) == 0
    out = Path("reports") / sweep_id
    for f in [
        "README.md",
        "verdicts.md",
        "verdicts.tex",
        "verdicts.csv",
        "table6.md",
        "table6.tex",
        "table6.csv",
        "table6_grid.csv",
        "metric_vs_rank.png",
        "effective_rank.png",
        "effective_rank.csv",
        "spectra.png",
        "cost.png",
        "subspace_fig3.png",
        "subspace_fig4.png",
        "subspace.csv",
        "leaderboard.csv",
        "summary.csv",
        "objective.png",
    ]:
        assert (out / f).exists(), f

    t6 = pd.read_csv(out / "table6.csv")
    assert list(t6.columns) == [
        "weight type",
        "r",
        "mean",
        "std",
        "n",
        "paper (GPT-3 175B) WikiSQL",
        "paper (GPT-3 175B) MultiNLI",
    ]
    assert list(zip(t6["weight type"], t6["r"])) == [(w, r) for w in ("Wq", "Wq+Wv") for r in (1, 8, 64)]
    wq1 = t6.iloc[0]
    assert wq1["mean"] == pytest.approx(61.0) and wq1["std"] == pytest.approx(1.0) and wq1["n"] == 3  # in %
    assert wq1["paper (GPT-3 175B) WikiSQL"] == 68.8 and t6.iloc[5]["paper (GPT-3 175B) MultiNLI"] == 91.4
    grid = pd.read_csv(out / "table6_grid.csv")
    assert list(grid.columns) == ["source", "weight type", "r=1", "r=8", "r=64"]
    assert grid.iloc[0]["r=1"] == "61.0 ± 1.0 (n=3)" and grid["source"].str.startswith("paper (GPT-3 175B)").sum() == 4
    tex = (out / "table6.tex").read_text()
    assert "\\toprule" in tex and "61.0 $\\pm$ 1.0" in tex

    v = pd.read_csv(out / "verdicts.csv")
    rank = v[v["claim"].str.contains(" is within ")]
    # equal means across r by construction, but seeds 1 pt apart: ±2.27 covers the 1-pt margin. By hand:
    # (1.96 + 0.84)² · (1² + 1²) / 1² + 1.96² / 4 = 16.66 -> 17 seeds per config would decide it
    assert len(rank) == 2 and rank["verdict"].str.startswith("undecided").all()
    assert rank["verdict"].str.contains("~17 seeds per config would decide it").all()
    needs = v[v["claim"].str.startswith("Wq alone needs a larger r")].iloc[0]
    assert needs["verdict"].startswith("disagree") and needs["difference"] == 0.0  # both sufficient at r=1
    fig3 = v[v["claim"].str.contains("same config share")]
    fig4 = v[v["claim"].str.contains("two seeds")]
    assert set(fig3["claim"].str[:4]) == {"ΔWq:", "ΔWv:"} and fig3["verdict"].str.startswith("agree").all()
    assert fig4["verdict"].str.startswith("disagree").all()  # random bases per seed: chance-level overlap
    low = v[v["claim"].str.contains("95 % of the update")]
    assert low["verdict"].str.startswith("agree").all()  # k = 3 of r = 64
    phi = pd.read_csv(out / "subspace.csv")
    assert set(phi["figure"]) == {"fig3", "fig4"} and len(phi[phi["figure"] == "fig3"]) == 3 * LAYERS * 2
    assert np.allclose(phi.loc[phi["figure"] == "fig3", "phi11"], 1.0)

    readme = (out / "README.md").read_text()
    for piece in [
        "![metric against rank](metric_vs_rank.png)",
        "## Verdicts",
        "Hu et al. 2021",
        "## Table 6",
        "![subspace fig3](subspace_fig3.png)",
        "## Leaderboard",
        "## Pruning",
    ]:
        assert piece in readme
    assert re.search(
        r"- ran `lorasweep sweep sweep=paper_table6` on cpu \(test\) \(torch 9\.9\), lorasweep commit `0123456`; "
        r"started \d{4}-\d\d-\d\d "
        r"\d\d:\d\d UTC, wall \d+\.\d min \(FINISHED\)",
        readme,
    )
    logged = {f.path for f in mlflow.MlflowClient().list_artifacts(parent, "report")}
    assert {f"report/{f.name}" for f in out.iterdir()} <= logged


def test_table5_report_and_sweep_resolution(store, tmp_path):
    rows = [(["q"], 8), (["k"], 8), (["v"], 8), (["o"], 8), (["q", "k"], 4), (["q", "v"], 4), (["q", "k", "v", "o"], 4)]
    cells = [
        {"targets": t, "r": r, "seed": s, "value": 0.5 + 0.02 * i + 0.01 * s}
        for i, (t, r) in enumerate(rows)
        for s in (0, 1, 2)
    ]
    cells.append({"targets": ["q"], "r": 8, "seed": 3, "value": 0.99, "state": "PRUNED"})  # never counted
    old, _ = make_sweep(tmp_path, "paper_table5", cells[:3], stamp="20250101-000000")
    sweep_id, parent = make_sweep(tmp_path, "paper_table5", cells)
    # a name means its latest sweep; a parent run id and a sweep id mean that sweep
    assert runs.find_sweep("paper_table5").sweep_id == sweep_id
    assert runs.find_sweep(parent).sweep_id == sweep_id and runs.find_sweep(old).sweep_id == old
    for bad in ["paper_table7", "", "0" * 32]:
        with pytest.raises(ConfigError) as e:
            report.cli([bad])
        assert e.value.field == "SWEEP"

    report.cli(["sweep=paper_table5", "--out", "out"])
    t5 = pd.read_csv(Path("out") / sweep_id / "table5.csv")
    assert list(t5["weight type"]) == ["Wq", "Wk", "Wv", "Wo", "Wq+Wk", "Wq+Wv", "Wq+Wk+Wv+Wo"]
    assert t5.iloc[0]["n"] == 3 and t5.iloc[0]["mean"] == pytest.approx(51.0)  # the pruned 0.99 is left out
    assert t5.iloc[0]["paper (GPT-3 175B) WikiSQL"] == 70.4
    assert math.isnan(t5.iloc[6]["paper (GPT-3 175B) WikiSQL"])  # our r=4 is not the paper's r=2: no reference
    shown = (Path("out") / sweep_id / "table5.md").read_text()
    assert "– (paper: r=2)" in shown
    v = pd.read_csv(Path("out") / sweep_id / "verdicts.csv")
    best = v[v["claim"].str.startswith("Wq+Wv is best")].iloc[0]
    # all four is 2 pts up on Wq+Wv, ± 2.27 over 3 seeds: beyond the 1-pt margin or not, the seeds cannot tell
    assert best["verdict"].startswith("undecided") and best["difference"] == pytest.approx(2.0)
    assert "~17 seeds per config would decide it" in best["verdict"]


def test_any_sweep_gets_leaderboard_importances_and_pruning(store, tmp_path):
    cells = [
        {"targets": ["q", "v"], "r": r, "seed": 0, "value": 0.5 + 0.01 * r, "params": {"train.lr": lr}}
        for r in (2, 4, 8)
        for lr in (0.001, 0.003)
    ]
    cells.append(
        {
            "targets": ["q", "v"],
            "r": 16,
            "seed": 0,
            "value": 0.4,
            "state": "PRUNED",
            "history": [(15, 0.3), (30, 0.4)],
            "params": {"train.lr": 0.01},
        }
    )
    sweep_id, _ = make_sweep(tmp_path, "rank_alpha", cells)
    Path(f"sweeps_out/{sweep_id}").mkdir(parents=True)  # where lorasweep sweep keeps the study (cwd = tmp)
    study = optuna.create_study(
        study_name=sweep_id, storage=f"sqlite:///sweeps_out/{sweep_id}/optuna.db", direction="maximize"
    )
    for c in cells[:-1]:
        study.enqueue_trial({"adapter.r": c["r"], "train.lr": c["params"]["train.lr"]})

    def objective(t):
        r, _, _ = (
            t.suggest_categorical("adapter.r", [2, 4, 8]),
            t.suggest_float("train.lr", 1e-3, 1e-2),
            t.suggest_categorical("seed", [0]),  # one value only: left out of Optuna's views
        )
        for step in (15, 30):
            t.report(r / 100 * step / 30, step)
        return r / 100

    study.optimize(objective, n_trials=6)
    stopped = study.ask(study.trials[0].distributions)
    stopped.report(0.01, 15)
    study.tell(stopped, state=optuna.trial.TrialState.PRUNED)
    out, _ = report.build(sweep_id)
    readme = (out / "README.md").read_text()
    assert "(6 complete, 1 pruned trials), over the dimensions that varied: adapter.r, train.lr (left out, " in readme
    assert "one value only: seed)" in readme
    for view in ("learning_curves", "parallel_coordinates", "importances"):
        assert f"![{view}]({view}.png)" in readme and (out / f"{view}.png").stat().st_size > 10_000
    assert "Table" not in readme.split("## Summary")[0]  # r and lr both vary: no paper table
    assert "Pruned trials stopped at step 30 (median; 30–30), saving 30 of their 60 steps (50 %)" in readme
    imp = pd.read_csv(out / "importances.csv")
    assert set(imp["parameter"]) == {"adapter.r", "train.lr"} and imp.iloc[0]["parameter"] == "adapter.r"
    fanova = optuna.importance.get_param_importances(  # the table is Optuna's seeded fANOVA, fitted once for both
        study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=["adapter.r", "train.lr"]
    )
    assert dict(zip(imp["parameter"], imp["importance"])) == pytest.approx({k: round(v, 4) for k, v in fanova.items()})
    board = pd.read_csv(out / "leaderboard.csv")
    assert board.iloc[0]["eval_accuracy"] == pytest.approx(0.58) and len(board) == 7
    summary = pd.read_csv(out / "summary.csv")
    assert list(summary.columns[:2]) == ["r", "train.lr"] and summary["n"].eq(1).all()


def test_learns_vs_forgets_marks_the_pareto_trials(store, tmp_path):
    # (accuracy, forget ratio): C learns most, E forgets least, A trades between; B and D are dominated
    # (C learns more than B and forgets less; A beats D on both)
    points = {"A": (0.70, 1.02), "B": (0.60, 1.10), "C": (0.75, 1.05), "D": (0.55, 1.03), "E": (0.50, 1.00)}
    cells = [
        {
            "targets": ["q", "v"],
            "r": r,
            "seed": 0,
            "value": acc,
            "params": {"tag": name},
            "metrics": {"forget_ppl_ratio": ratio, "adapter_size_mb": r / 10, "merge_max_abs_logit_diff": 1e-7 * r},
        }
        for r, (name, (acc, ratio)) in zip((1, 2, 4, 8, 16), points.items())
    ]
    cells.append({"targets": ["q", "v"], "r": 32, "seed": 0, "value": 0.9})  # no forgetting measured: not plotted
    sweep_id, _ = make_sweep(tmp_path, "forgets", cells)
    out, _ = report.build(sweep_id, log=False)
    assert (out / "learns_vs_forgets.png").stat().st_size > 0
    table = pd.read_csv(out / "learns_vs_forgets.csv")
    front = set(table.loc[table["Pareto"], "tag"])
    assert front == {"A", "C", "E"} and len(table) == 5
    assert "## Learns vs forgets" in (out / "README.md").read_text()
    board = pd.read_csv(out / "after_training.csv")  # best objective first, its size and merge figures beside it
    assert list(board["eval_accuracy"][:2]) == [0.9, 0.75] and board["adapter_size_mb"][1] == pytest.approx(0.4)
    assert board["merge_max_abs_logit_diff"].notna().sum() == 5
    # a sweep without forgetting metrics gets no such section
    plain, _ = make_sweep(tmp_path, "plain", cells[-1:], stamp="20260101-000001")
    assert "Learns vs forgets" not in (report.build(plain, log=False)[0] / "README.md").read_text()


def test_a_verdict_on_cells_still_improving_says_so_and_one_without_gains_says_it_was_not_measured(store, tmp_path):
    """Cells whose objective still gained more in the last eval interval than the noise between seeds are named in
    every verdict built on them; cells that logged no gain (one eval per trial) get 'plateau not measured'."""
    rising = [
        {**c, "metrics": {"last_eval_gain": 0.04 if c["r"] == 1 else 0.001}} for c in TABLE6_CELLS
    ]  # r=1 gained 4 pts in its last interval, beyond its noise (std 1 pt); the others 0.1 pt
    make_sweep(tmp_path, "paper_table6", rising)
    out, _ = report.build("paper_table6", tmp_path / "reports", log=False)
    lines = pd.read_csv(out / "verdicts.csv").set_index("claim")["verdict"]
    wq = next(v for claim, v in lines.items() if claim.startswith("Wq: r=1 is within"))
    assert "not plateaued, trained too short: Wq r=1 still gained 4.00 pts" in wq and "Wq r=64" not in wq

    make_sweep(tmp_path, "paper_table6", TABLE6_CELLS, stamp="20260102-000000")
    out, _ = report.build("paper_table6-20260102-000000", tmp_path / "reports", log=False)
    lines = pd.read_csv(out / "verdicts.csv").set_index("claim")["verdict"]
    wq = next(v for claim, v in lines.items() if claim.startswith("Wq: r=1 is within"))
    assert wq.endswith("; plateau not measured: one eval per trial)")


@pytest.mark.parametrize("n_trials,legend", [(3, ["Trial0", "Trial1", "Trial2", "pruned here"]), (20, ["pruned here"])])
def test_learning_curves_keep_a_legend_per_trial_only_while_it_fits(n_trials, legend):
    import matplotlib

    matplotlib.use("Agg")
    from lorasweep.analysis import figures

    study = optuna.create_study(direction="maximize")
    for i in range(n_trials - 1):
        t = study.ask()
        t.suggest_float("x", 0, 1)
        t.report(i, 1)
        t.report(i + 1, 2)
        study.tell(t, i + 1)
    t = study.ask()
    t.suggest_float("x", 0, 1)
    t.report(0.0, 1)
    study.tell(t, state=optuna.trial.TrialState.PRUNED)
    ax = figures.learning_curves(study, "eval_accuracy")
    assert [x.get_text() for x in ax.get_legend().get_texts()] == legend


# ----------------------------------------------------------------------------------------- eval-set noise


def test_the_leaderboard_shows_the_metrics_interval_beside_it():
    trials = pd.DataFrame(
        {
            "tags.optuna_trial": ["0", "1"],
            "state": ["COMPLETE", "COMPLETE"],
            "metrics.eval_loss": [0.9, 0.8],
            "metrics.eval_loss_ci_low": [0.85, 0.75],
            "metrics.eval_loss_ci_high": [0.95, 0.85],
            "metrics.eval_accuracy": [0.6, 0.7],
            "metrics.eval_accuracy_ci_low": [0.55, 0.65],
            "metrics.eval_accuracy_ci_high": [0.65, 0.75],
            "run_id": ["a", "b"],
        }
    )
    board = tables.leaderboard(trials, [], "eval_accuracy", "max")
    beside = ["eval_accuracy", "eval_accuracy_ci_low", "eval_accuracy_ci_high"]
    assert list(board.columns[:5]) == ["trial", "state", *beside]
    assert "eval_loss" in board and "eval_loss_ci_low" not in board  # the other metrics' intervals stay in MLflow
    assert list(board["eval_accuracy_ci_low"]) == [0.65, 0.55]  # best first, each with its own interval


def _saved_run(outputs: dict) -> str:
    from lorasweep import evalrows

    mlflow.set_experiment("saved-rows")  # in this test's store: an earlier test may have left another active
    with mlflow.start_run() as run:
        mlflow.log_dict({"eval": outputs}, evalrows.FILE)
    return run.info.run_id


def test_the_paired_line_finds_a_planted_difference_on_saved_rows_and_not_a_null_one(store):
    """Three trials' saved predictions on the same 300 labelled rows: A right on 75 %, B and C on 62 % (different
    rows). A beats B; B and C are not distinguishable; loss (lower is better) reads the other way round."""
    from lorasweep.analysis.summary import eval_words

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    right = {name: rng.permutation(300) < k for name, k in (("a", 225), ("b", 186), ("c", 186))}
    runs = {
        name: _saved_run(
            {"labels": y.tolist(), "predictions": np.where(ok, y, (y + 1) % 3).tolist(), "losses": (1.0 - ok).tolist()}
        )
        for name, ok in right.items()
    }

    def board(*names):
        return pd.DataFrame([{"trial": n, "run_id": runs[n]} for n in names])

    win = eval_words(board("a", "b"), "eval_accuracy", "max")
    assert win.startswith("eval_accuracy on the same 300 eval rows, winner trial a vs runner-up b: +0.13 [")
    assert win.endswith(": the winner is better") and "p=0.0" in win, win
    null = eval_words(board("b", "c"), "eval_accuracy", "max")
    assert ": +0 [" in null and "not distinguishable" in null, null
    loss = eval_words(board("b", "a"), "eval_loss", "min")  # B's loss 0.38 is above A's 0.25: B is not the winner
    assert ": +0.13 [" in loss and loss.endswith(": the runner-up is better"), loss
    other = _saved_run({"labels": y[:200].tolist(), "predictions": y[:200].tolist()})
    runs["d"] = other
    assert "not scored on the same eval rows" in eval_words(board("a", "d"), "eval_accuracy", "max")
    assert "no per-row eval outputs saved" in eval_words(board("a", "b"), "eval_bleu", "max")
    with mlflow.start_run() as older:  # a run from before rows were saved
        runs["e"] = older.info.run_id
    assert "no per-row eval outputs saved" in eval_words(board("a", "e"), "eval_accuracy", "max")


# ------------------------------------------------------------------------------- saved compare reports, rejudged

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
COMPARES = sorted(p.parent.name for p in RESULTS.glob("*/arms.csv"))


def saved_copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(RESULTS / name, tmp_path / name))


def without_trials(folder: Path) -> None:
    """The leaderboard's header only: the seeds must then come from arms.csv's mean, std and n."""
    board = folder / "leaderboard.csv"
    board.write_text(board.read_text().splitlines()[0] + "\n")


@pytest.mark.parametrize("name", COMPARES)
def test_rejudge_of_a_committed_compare_result_gives_its_committed_verdicts(name, tmp_path):
    folder = saved_copy(name, tmp_path)
    rejudge.rewrite(folder)
    for file in ("verdicts.csv", "verdicts.md", "README.md"):
        assert (folder / file).read_text() == (RESULTS / name / file).read_text(), f"rerun --rejudge on {name}"


def test_rejudge_rebuilds_two_seeds_as_mean_plus_minus_std_over_root_two(tmp_path):
    name = next(n for n in COMPARES if (pd.read_csv(RESULTS / n / "arms.csv")["n"] == 2).all())
    folder = saved_copy(name, tmp_path)
    without_trials(folder)
    found, _, rebuilt = rejudge.rejudged(folder)
    assert rebuilt == list(pd.read_csv(folder / "arms.csv")["arm"])
    committed = pd.read_csv(RESULTS / name / "verdicts.csv")
    assert [v["verdict"] for v in found] == list(committed["verdict"])  # the seeds themselves, up to order
    rejudge.rewrite(folder)
    assert "two seeds rebuilt as mean ± std/√2: " + ", ".join(rebuilt) in (folder / "README.md").read_text()


def test_rejudge_refuses_more_than_two_seeds_it_cannot_find_and_writes_nothing(tmp_path):
    name = next(n for n in COMPARES if (pd.read_csv(RESULTS / n / "arms.csv")["n"] > 2).any())
    folder = saved_copy(name, tmp_path)
    without_trials(folder)
    before = {f.name: f.read_bytes() for f in folder.iterdir()}
    with pytest.raises(ConfigError, match="not recomputable from the committed tables: adapter.variant="):
        rejudge.cli([folder])
    assert {f.name: f.read_bytes() for f in folder.iterdir()} == before


def test_rejudge_keeps_the_claims_that_are_not_the_comparisons_and_says_both_rules(tmp_path):
    name = next(
        n for n in COMPARES if (~pd.read_csv(RESULTS / n / "verdicts.csv")["paper"].isin(arms.PAPERS.values())).any()
    )
    folder = saved_copy(name, tmp_path)
    saved = pd.read_csv(folder / "verdicts.csv")
    others = saved[~saved["paper"].isin(arms.PAPERS.values())]
    found, _, _ = rejudge.rejudged(folder)
    assert [v for v in found if v["paper"] not in arms.PAPERS.values()] == others.astype(object).where(
        others.notna(), None
    ).to_dict("records")
    rejudge.rewrite(folder)
    text = (folder / "README.md").read_text()
    assert "An arm ties with the best arm when the 95 % Welch interval" in text and "φ claims:" in text
