"""After training: merge check per variant (fp32 and quantized tiny_llama), adapter size and serving rank,
forgetting perplexity against a direct computation, and the spectrum target rule (planted signal, MiniLM)."""

import json
import math
from pathlib import Path

import mlflow
import pytest
import torch
from torch import nn

from lorasweep import after, model, spectrum
from lorasweep.base import CACHE, folder
from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.targets import resolve_targets, spectrum_pick
from lorasweep.trial import run_trial
from tests.test_trial import RANKED, TINY

FORGET = ["tracking.forgetting=true", "tracking.forgetting_tokens=512", "tracking.forgetting_window=64"]
MERGE_TOL = 1e-4  # max |logit difference| of a correct fp32 merge: float rounding only


def _run(summary: dict) -> mlflow.entities.Run:
    run = mlflow.MlflowClient().get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    return run


def _trained(m: dict) -> None:
    """The adapter moved off its no-op start, so a merge that dropped it would show."""
    assert m["effective_rank_mean"] > 0 or m["forget_ppl_after"] != m["forget_ppl_before"]


# ----------------------------------------------------------------------------------------------- merge


@pytest.mark.slow
@pytest.mark.parametrize("variant", RANKED)  # IA3's merge and full's lack of one: tests/test_trial.py
def test_fp32_merge_matches_unmerged_for_every_variant(variant, store):
    limit = 2 if variant == "dora" else 4  # r=4: within a limit of 4, over a limit of 2
    summary = run_trial(
        compose(
            [
                *TINY,
                f"adapter.variant={variant}",
                "adapter.r=4",
                "tracking.merge_check=true",
                f"tracking.max_serving_rank={limit}",
                *FORGET,
            ]
        )
    )
    run = _run(summary)
    m = run.data.metrics
    _trained(m)
    assert not [k for k in run.data.tags if k.endswith("_check")]  # every variant merges on a float base
    assert m["merge_max_abs_logit_diff"] <= MERGE_TOL, m["merge_max_abs_logit_diff"]
    assert abs(m["merge_metric_delta"]) <= 1e-5 * summary["eval_perplexity"]
    assert "merge_requant_max_abs_logit_diff" not in m  # nothing to re-quantize
    # size: the saved safetensors; rank: against the limit
    local = Path(mlflow.artifacts.download_artifacts(summary["adapter_uri"]))
    assert m["adapter_size_mb"] == pytest.approx((local / "adapter_model.safetensors").stat().st_size / 2**20)
    assert m["adapter_max_rank"] == 4 and m["serving_rank_ok"] == float(4 <= limit)


@pytest.mark.slow
@pytest.mark.parametrize("variant,quant", [("lora", "nf4"), ("dora", "nf4"), ("adalora", "nf4")])
def test_quantized_merge_reports_dequantized_and_requantized(variant, quant, store):
    summary = run_trial(
        compose(
            [
                *TINY,
                f"quant={quant}",
                f"adapter.variant={variant}",
                "adapter.r=4",
                "tracking.merge_check=true",
                "tracking.save_adapter=false",
            ]
        )
    )
    run = _run(summary)
    m, tags = run.data.metrics, run.data.tags
    # dequantized base + merged ΔW reproduces the 4-bit model: the layers compute with the dequantized weight
    assert m["merge_max_abs_logit_diff"] <= MERGE_TOL, m["merge_max_abs_logit_diff"]
    assert abs(m["merge_metric_delta"]) <= 1e-5 * summary["eval_perplexity"]
    if variant == "adalora":  # PEFT's AdaLoRA 4-bit layers have no merge: one line says so, no metrics
        why = tags["merge_requant_check"]
        assert why.startswith("not possible for adalora on quant nf4: NotImplementedError") and "\n" not in why
        assert "merge_requant_max_abs_logit_diff" not in m
    else:
        assert math.isfinite(m["merge_requant_max_abs_logit_diff"]) and m["merge_requant_max_abs_logit_diff"] > 0
        assert math.isfinite(m["merge_requant_metric_delta"])


def _b_doubled(dup: nn.Module) -> None:  # every B scaled on its way into the merge
    for mod in dup.modules():
        if "default" in getattr(mod, "lora_B", {}):
            mod.lora_B["default"].weight.data.mul_(2)


def _wrong_scaling(dup: nn.Module) -> None:  # rsLoRA's α/√r where the adapter was trained with α/r
    for mod in dup.modules():
        if hasattr(mod, "scaling") and "default" in getattr(mod, "lora_A", {}):
            mod.scaling["default"] = mod.lora_alpha["default"] / math.sqrt(mod.r["default"])


def _one_module_left_out(dup: nn.Module) -> None:  # the last adapted layer's ΔW never reaches the merged weights
    last = [mod for mod in dup.modules() if "default" in getattr(mod, "lora_B", {})][-1]
    torch.nn.init.zeros_(last.lora_B["default"].weight)


@pytest.mark.parametrize(
    "wrong",
    [
        _b_doubled,
        _wrong_scaling,
        _one_module_left_out,
    ],
    ids=["B_doubled", "rslora_scaling", "one_module_left_out"],
)
def test_merge_check_catches_a_wrong_merge_and_passes_the_right_one(wrong, tmp_path, monkeypatch):
    """Negative control: merge_check, unchanged but for a merge broken on purpose (B scaled, the wrong scaling, a
    module left out), reports a logit difference above the tolerance a correct merge stays under."""
    import copy

    cfg = compose([*TINY, "adapter.r=8", "tracking.merge_check=true"])  # r=8: α/√r is not α/r doubled
    tuned, _ = model.load(cfg, model.targets(cfg, None)[0], 4, None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # B starts at zero: give the adapter an update to merge, as training would
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    ids = torch.randint(0, tuned.config.vocab_size, (2, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0  # padding: left out of the comparison
    batches = [{"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}]

    right, _ = after.merge_check(cfg, tuned, batches, tmp_path)
    assert right["merge_max_abs_logit_diff"] <= MERGE_TOL, right

    def wrong_merge(peft_model, quantized, adapter_dir):
        dup = copy.deepcopy(peft_model)
        wrong(dup)
        return dup.merge_and_unload()

    monkeypatch.setattr(after, "_merged_float", wrong_merge)
    caught, _ = after.merge_check(cfg, tuned, batches, tmp_path)
    assert caught["merge_max_abs_logit_diff"] > MERGE_TOL, caught
    assert caught["merge_metric_delta"] != 0


def test_merge_check_off_by_default_logs_size_only(store):
    summary = run_trial(compose([*TINY, "train.max_steps=2", "tracking.save_adapter=false"]))
    m = _run(summary).data.metrics
    assert m["adapter_size_mb"] > 0 and m["serving_rank_ok"] == 1.0  # r=8 <= 64
    assert not [k for k in m if k.startswith(("merge_", "forget_"))]


# ----------------------------------------------------------------------------------------------- forgetting


def test_forgetting_before_equals_a_direct_computation(store):
    cfg = compose([*TINY, *FORGET])
    cache = CACHE / "forgetting" / f"{cfg.model.name}-{after._before_key(cfg)}.json"
    cache.unlink(missing_ok=True)
    peft_model, tok = model.load(cfg, model.targets(cfg, None)[0], 4, None)
    before = after.forgetting_before(cfg, peft_model, tok)
    assert cache.exists() and json.loads(cache.read_text())["perplexity"] == before
    # direct: the plain base (no PEFT), transformers' own shifted-token loss, one window at a time
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(folder(cfg.model)).eval()
    rows = after.windows(cfg.tracking, tok)
    assert rows.shape == (512 // 64, 64)
    assert tok.decode(rows[0][:6]).lower().startswith("in the beginning god")  # the KJV, verse numbers cut
    with torch.no_grad():
        losses = [float(base(input_ids=r[None], labels=r[None]).loss) for r in rows]
    assert before == pytest.approx(math.exp(sum(losses) / len(losses)), rel=1e-5)
    # a cached value is what the next trial on this base reads
    assert after.forgetting_before(cfg, peft_model, tok) == before


def test_forgetting_is_logged_after_a_trial(store):
    cfg = compose([*TINY, *FORGET])
    summary = run_trial(cfg)
    m = _run(summary).data.metrics
    cached = json.loads((CACHE / "forgetting" / f"{cfg.model.name}-{after._before_key(cfg)}.json").read_text())
    assert m["forget_ppl_before"] == pytest.approx(cached["perplexity"])
    assert m["forget_ppl_after"] > 1 and m["forget_ppl_after"] != m["forget_ppl_before"]
    assert m["forget_ppl_delta"] == pytest.approx(m["forget_ppl_after"] - m["forget_ppl_before"])
    assert m["forget_ppl_ratio"] == pytest.approx(m["forget_ppl_after"] / m["forget_ppl_before"])


def test_forgetting_reads_a_local_text_file(tmp_path):
    text = tmp_path / "general.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 40)
    cfg = compose([*TINY, *FORGET, f"tracking.forgetting_text={text}", "tracking.forgetting_tokens=128"])
    _, tok = model.load(cfg, model.targets(cfg, None)[0], 4, None)
    rows = after.windows(cfg.tracking, tok)
    assert rows.shape == (2, 64) and tok.decode(rows[0][:4]) == "the quick brown fox"


# ----------------------------------------------------------------------------------------------- spectrum


def _planted(m: int, n: int, rank: int, seed: int, noise: float = 1.0) -> torch.Tensor:
    """noise·G plus, when rank > 0, a rank-`rank` signal with singular values well above the MP edge."""
    g = torch.Generator().manual_seed(seed)
    w = noise * torch.randn(m, n, generator=g, dtype=torch.float64)
    if rank:
        u = torch.linalg.qr(torch.randn(m, rank, generator=g, dtype=torch.float64)).Q
        v = torch.linalg.qr(torch.randn(n, rank, generator=g, dtype=torch.float64)).Q
        edge = noise * (math.sqrt(m) + math.sqrt(n))
        w += u @ torch.diag(torch.linspace(3 * edge, 1.5 * edge, rank, dtype=torch.float64)) @ v.T
    return w


def test_snr_finds_a_planted_low_rank_signal():
    pure = spectrum.snr(_planted(256, 128, 0, 0, noise=0.02))
    assert pure["n_signal"] == 0 and pure["snr"] == 0
    assert pure["sigma_noise"] == pytest.approx(0.02, rel=0.05)
    for w in (_planted(256, 128, 3, 1, noise=0.02), _planted(256, 128, 3, 1, noise=0.02).T):  # both orientations
        hit = spectrum.snr(w)
        assert hit["n_signal"] == 3 and hit["snr"] > 0 and hit["sigma_noise"] == pytest.approx(0.02, rel=0.05)
    assert spectrum.mp_median(1.0) == pytest.approx(0.6528, abs=1e-4)  # the square-matrix value (Gavish–Donoho)


class _Layers(nn.Module):
    """Six Llama-named layers whose q_proj weights are pure noise except in the planted layers."""

    def __init__(self, planted: set[int]):
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(6):
            layer = nn.Module()
            layer.q_proj = nn.Linear(128, 256, bias=False)
            with torch.no_grad():
                layer.q_proj.weight.copy_(_planted(256, 128, 4 if i in planted else 0, 10 + i, noise=0.05))
            self.layers.append(layer)


def test_spectrum_rule_picks_the_planted_layers():
    toy = _Layers({1, 4})
    snr = {name: row["snr"] for name, row in spectrum.scores(toy).items()}
    assert spectrum_pick(snr, "llama", 25) == ["layers.1.q_proj", "layers.4.q_proj"]  # ceil(25 % of 6) = 2
    assert resolve_targets(toy, "llama", ["spectrum:25%"], snr) == ["layers.1.q_proj", "layers.4.q_proj"]
    assert len(spectrum_pick(snr, "llama", 50)) == 3 and len(spectrum_pick(snr, "llama", 100)) == 6
    with pytest.raises(ConfigError, match="adapter.targets='spectrum:25%'"):
        resolve_targets(toy, "llama", ["spectrum:25%"])  # no scores: the estimator's meta model


def test_minilm_spectrum_list_is_stable_and_cached():
    cfg = compose(["adapter.targets=[spectrum:25%]"])
    lists = []
    for _ in range(2):  # two cold computations must agree
        spectrum.cache_file(cfg).unlink(missing_ok=True)
        lists.append(model.targets(cfg, 3)[0])
    # Cached: a later call reads the cache file, not the weights. Shown without wall times: with the cached scores
    # reversed by hand, the same call picks other modules.
    cached = spectrum.cache_file(cfg)
    table = json.loads(cached.read_text())
    for row in table["modules"].values():
        row["snr"] = -row["snr"]
    cached.write_text(json.dumps(table))
    assert set(model.targets(cfg, 3)[0]).isdisjoint(lists[0])
    cached.unlink()
    assert model.targets(cfg, 3)[0] == lists[0]
    # 6 layers × 6 module types (pooler left out): ceil(25 % of 6) = 2 per type
    from lorasweep.targets import module_type

    types = [module_type(n, "bert") for n in lists[0]]
    assert len(lists[0]) == 12 and sorted(set(types)) == ["down", "k", "o", "q", "up", "v"]
    assert all(types.count(t) == 2 for t in set(types))
    full = compose(["adapter.targets=[spectrum:100%]"])
    every = model.targets(compose(["adapter.targets=[all-linear]"]), 3)[0]
    assert model.targets(full, 3)[0] == [n for n in every if "pooler" not in n] and len(every) == 37


@pytest.mark.slow
def test_trial_logs_the_resolved_spectrum_list(store):
    summary = run_trial(
        compose([*TINY, "adapter.targets=[spectrum:50%]", "train.max_steps=2", "tracking.save_adapter=false"])
    )
    run = _run(summary)
    logged = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/targets.json")
    assert logged["adapter.targets"] == ["spectrum:50%"]
    # tiny_llama: 2 layers × 7 module types, ceil(50 % of 2) = 1 per type
    assert len(logged["resolved"]) == 7 and run.data.metrics["adapted_modules"] == 7
    assert {n.rsplit(".", 1)[-1] for n in logged["resolved"]} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }


# ----------------------------------------------------------------------------------------------- as a sweep metric


@pytest.mark.parametrize(
    "overrides,starts",
    [
        (
            ["sweep.metric=forget_ppl_ratio"],
            (
                "sweep.metric='forget_ppl_ratio' is not allowed: a metric the trials log: "
                "forget_ppl_ratio needs tracking.forgetting=true"
            ),
        ),
        (
            ["sweep.metric=merge_metric_delta"],
            (
                "sweep.metric='merge_metric_delta' is not allowed: a metric the trials log: "
                "merge_metric_delta needs tracking.merge_check=true"
            ),
        ),
        (
            ["sweep.metric=merge_requant_metric_delta", "tracking.merge_check=true"],
            "sweep.metric='merge_requant_metric_delta'",
        ),
    ],
)
def test_a_sweep_ranking_by_an_unlogged_metric_is_refused(overrides, starts):
    with pytest.raises(ConfigError) as e:
        from lorasweep.config import validate

        validate(compose(["sweep=smoke", *overrides]), has_cuda=False)
    assert str(e.value).startswith(starts)


@pytest.mark.slow
def test_a_sweep_ranks_by_forget_ppl_ratio(store):
    from lorasweep.sweep import run_sweep

    s = run_sweep(
        [
            "sweep=smoke",
            "sweep.num_trials=2",
            "sweep.metric=forget_ppl_ratio",
            "sweep.mode=min",
            "sweep.pruner.name=none",
            *FORGET,
        ]
    )
    runs = [
        r
        for r in mlflow.MlflowClient().search_runs([e.experiment_id for e in mlflow.search_experiments()])
        if r.data.tags.get("mlflow.parentRunId")
    ]
    ratios = sorted(r.data.metrics["forget_ppl_ratio"] for r in runs)
    assert len(ratios) == 2 and s["best_value"] == pytest.approx(ratios[0])
