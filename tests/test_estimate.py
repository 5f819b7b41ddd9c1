"""The estimator: exact trainable counts against PEFT and closed forms, memory arithmetic, headlines, JSON,
calibration."""

import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf
from peft import AdaLoraConfig, IA3Config, LoraConfig, TaskType, VeraConfig, get_peft_model

from lorasweep import estimate as E
from lorasweep.base import arch_config, meta_model
from lorasweep.config import VARIANTS, compose
from lorasweep.errors import ConfigError
from lorasweep.targets import resolve_targets

REPO = Path(__file__).resolve().parent.parent
MEASURED = REPO.parent / "shared" / "gpu" / "measured"
ALIASES = {"q": ["q"], "v": ["v"], "qv": ["q", "v"], "attn": ["attn"], "mlp": ["mlp"], "all-linear": ["all-linear"]}
BIG = ["llama2_7b", "llama3_8b", "llama3_70b", "llama_65b", "mistral_7b", "qwen2_5_0_5b", "qwen2_5_7b", "gemma3_270m"]
GB = 2**30
_CFG: dict = {}


def cfg_for(model: str, *overrides: str):
    """Composing is slow (~1 s); compose each model once and copy."""
    data = "tweets" if model == "minilm" else "tweets_sft"
    key = (model, data)
    if key not in _CFG:
        _CFG[key] = compose(
            [
                f"model={model}",
                f"data={data}",
            ]
        )
    cfg = copy.deepcopy(_CFG[key])
    for o in overrides:
        k, v = o.split("=", 1)
        OmegaConf.update(cfg, k, yaml.safe_load(v), merge=False)
    return cfg


def reference_peft(cfg, num_labels: int | None):
    """An independent PEFT build at full depth, its config written out here rather than taken from the estimator;
    for full fine-tuning, torch's count of the model's own parameters, all trained."""
    m = cfg.model
    config = arch_config(m, num_labels)
    model = meta_model(config, m.task)
    if cfg.adapter.variant in ("full", "galore"):  # GaLore trains every weight too (its optimizer differs)
        return sum(p.numel() for p in model.parameters()), sum(p.numel() for p in model.parameters())
    names = resolve_targets(model, config.model_type, list(cfg.adapter.targets))
    a = cfg.adapter
    kw = dict(target_modules=names, task_type=TaskType.SEQ_CLS if m.task == "seq_cls" else TaskType.CAUSAL_LM)
    mlp = ("gate_proj", "up_proj", "down_proj", "intermediate.dense")  # the MLP Linears of Llama and BERT
    ff = [n for n in names if n.endswith(mlp) or (n.endswith("output.dense") and "attention" not in n)]
    pc = {
        "lora": lambda: LoraConfig(r=a.r, **kw),
        "loftq": lambda: LoraConfig(r=a.r, **kw),  # LoRA's shapes; only the init differs
        "rslora": lambda: LoraConfig(r=a.r, use_rslora=True, **kw),
        "dora": lambda: LoraConfig(r=a.r, use_dora=True, **kw),
        "pissa": lambda: LoraConfig(r=a.r, init_lora_weights="pissa_niter_4", **kw),
        "vera": lambda: VeraConfig(r=a.r, **kw),
        "adalora": lambda: AdaLoraConfig(init_r=a.r, target_r=max(1, a.r // 2), total_step=cfg.train.max_steps, **kw),
        "ia3": lambda: IA3Config(feedforward_modules=ff, **kw),
    }[a.variant]()
    with torch.device("meta"):
        peft = get_peft_model(model, pc)
    return sum(p.numel() for p in peft.parameters() if p.requires_grad), sum(p.numel() for p in peft.parameters())


# ---------------------------------------------------------------- exact parameter counts


def test_worked_figures_llama2_7b() -> None:
    attn = E.estimate(cfg_for("llama2_7b", "adapter.r=16", "adapter.targets=[q,k,v,o]"), batch_size=1, seq_len=8)
    assert attn["params"]["trainable"] == 16_777_216
    assert attn["target_modules"] == 4 * 32
    full = E.estimate(cfg_for("llama2_7b", "adapter.r=16", "adapter.targets=[all-linear]"), batch_size=1, seq_len=8)
    assert full["params"]["trainable"] == 39_976_960
    assert full["params"]["base"] == 6_738_415_616  # Llama-2-7B's published size
    assert full["params"]["total"] == 6_738_415_616 + 39_976_960


SMALL = [("tiny_llama", v, a) for v in VARIANTS for a in ALIASES] + [
    ("minilm", v, a) for v in VARIANTS for a in ("qv", "mlp", "all-linear")
]


@pytest.mark.parametrize("model,variant,alias", SMALL)
def test_counts_equal_peft_on_shipped_small_models(model: str, variant: str, alias: str) -> None:
    cfg = cfg_for(model, f"adapter.variant={variant}", "adapter.r=8", f"adapter.targets=[{','.join(ALIASES[alias])}]")
    est = E.estimate(cfg, batch_size=2, seq_len=16)
    labels = 3 if model == "minilm" else None
    trainable, total = reference_peft(cfg, labels)
    assert est["params"]["trainable"] == trainable
    assert est["params"]["total"] == total
    if model == "minilm":  # SEQ_CLS trains the classifier too: 384 x 3 + 3
        cfg_q = cfg_for(model, "adapter.variant=lora", "adapter.r=8", "adapter.targets=[q]")
        assert E.estimate(cfg_q, batch_size=1, seq_len=8)["params"]["trainable"] == 6 * 8 * (384 + 384) + 384 * 3 + 3


@pytest.mark.parametrize("model", ["tiny_llama", "minilm"])
@pytest.mark.parametrize("variant", ["full", "ia3"])
def test_full_and_ia3_counts_equal_the_loaded_model(model: str, variant: str) -> None:
    """The real weights through lorasweep.model.load (PEFT's IA3, or no adapter at all), counted by torch."""
    from lorasweep import model as M

    cfg = cfg_for(model, f"adapter.variant={variant}", "adapter.targets=[k,v,down]")
    labels = ["negative", "neutral", "positive"] if model == "minilm" else None  # estimate.num_labels: 3
    tuned, _ = M.load(cfg, M.targets(cfg, len(labels) if labels else None)[0], 4, labels)
    params = list(tuned.parameters())
    est = E.estimate(cfg, batch_size=1, seq_len=8)["params"]
    assert est["trainable"] == sum(p.numel() for p in params if p.requires_grad)
    assert est["total"] == sum(p.numel() for p in params)
    if variant == "full":
        assert est["trainable"] == est["total"] and est["trainable_pct"] == 100


def closed_form(c, alias: str, r: int) -> int:
    """LoRA params per alias from the preset's own architecture block (the published config.json fields), not the
    estimator's reading of it: r x (in + out) per adapted Linear, times the depth."""
    head_dim = c.get("head_dim") or c.hidden_size // c.num_attention_heads  # Gemma-3 states its own (256)
    h, i = c.hidden_size, c.intermediate_size
    hq, kv = c.num_attention_heads * head_dim, c.num_key_value_heads * head_dim
    shapes = {"q": (h, hq), "k": (h, kv), "v": (h, kv), "o": (hq, h), "gate": (h, i), "up": (h, i), "down": (i, h)}
    groups = {
        "q": ["q"],
        "v": ["v"],
        "qv": ["q", "v"],
        "attn": ["q", "k", "v", "o"],
        "mlp": ["gate", "up", "down"],
        "all-linear": list(shapes),
    }
    return c.num_hidden_layers * sum(r * sum(shapes[m]) for m in groups[alias])


@pytest.mark.parametrize("model", BIG)
def test_counts_on_big_architectures_match_closed_form(model: str) -> None:
    for alias in ALIASES:
        cfg = cfg_for(model, "adapter.r=16", f"adapter.targets=[{','.join(ALIASES[alias])}]")
        est = E.estimate(cfg, batch_size=1, seq_len=8)
        assert est["params"]["trainable"] == closed_form(cfg.model.config, alias, 16), alias


@pytest.mark.parametrize("variant", VARIANTS)
def test_variants_on_a_real_architecture_equal_full_depth_peft(variant: str) -> None:
    # The estimator wraps one block and scales; PEFT here wraps all 18 (Gemma-3: head_dim 256 != hidden/heads).
    cfg = cfg_for("gemma3_270m", f"adapter.variant={variant}", "adapter.r=16", "adapter.targets=[all-linear]")
    est = E.estimate(cfg, batch_size=1, seq_len=8)["params"]
    assert (est["trainable"], est["total"]) == reference_peft(cfg, None)


def test_variant_counts_differ_as_their_definitions_say() -> None:
    s = {
        v: E.estimate(
            cfg_for("llama2_7b", f"adapter.variant={v}", "adapter.r=16", "adapter.targets=[attn]"),
            batch_size=1,
            seq_len=8,
        )["params"]["trainable"]
        for v in VARIANTS
    }
    assert s["lora"] == s["rslora"] == s["pissa"] == 16_777_216
    assert s["dora"] == s["lora"] + 32 * 4 * 4096  # one magnitude per output feature
    assert s["adalora"] == s["lora"] + 32 * 4 * 16  # one singular value per rank
    assert s["vera"] == 32 * 4 * (16 + 4096)  # lambda_d (r) and lambda_b (out) per layer
    assert s["ia3"] == 32 * 4 * 4096  # one vector per module, of its output size (attention modules)
    assert s["full"] == s["galore"] == 6_738_415_616  # every weight
    assert s["loftq"] == s["lora"]


def test_ia3_vectors_are_output_sized_for_attention_and_input_sized_for_mlp() -> None:
    def ia3(targets: str) -> int:
        cfg = cfg_for("llama3_8b", "adapter.variant=ia3", f"adapter.targets=[{targets}]")
        return E.estimate(cfg, batch_size=1, seq_len=8)["params"]["trainable"]

    # Llama-3-8B: 32 layers, hidden 4096, MLP 14336, k and v 8 heads x 128 = 1024 wide
    assert ia3("k,v,down") == 32 * (1024 + 1024 + 14336)  # the paper's targets: down scaled at its 14336 inputs
    assert ia3("mlp") == 32 * (4096 + 4096 + 14336)  # gate, up and down all scale their inputs
    assert ia3("q,o") == 32 * (4096 + 4096)


# ---------------------------------------------------------------- memory arithmetic


def test_nf4_and_int8_bytes() -> None:
    n = 4096 * 4096
    blocks = n // 64
    assert E.nf4_bytes(n, double_quant=False) == n // 2 + 4 * blocks + 64
    assert E.nf4_bytes(n, double_quant=True) == n // 2 + blocks + 4 * (blocks // 256) + 4 + 1024 + 64
    # Double quant saves ~3.5 of the 4 bytes per block: 0.5 -> ~0.127 bits per param of constants.
    assert 0.12 < 8 * (E.nf4_bytes(n, True) - n / 2) / n < 0.13
    assert abs(8 * (E.nf4_bytes(n, False) - n / 2) / n - 0.5) < 1e-3
    assert E.int8_bytes((11008, 4096)) == 11008 * 4096 + 4 * 11008


def test_weight_memory_by_quant_llama2_7b() -> None:
    lin = 32 * (4 * 4096 * 4096 + 3 * 4096 * 11008)  # every Linear in the blocks
    rest = 6_738_415_616 - lin  # embeddings, lm_head, norms stay unquantized
    none = E.estimate(cfg_for("llama2_7b", "quant.method=none"), batch_size=1, seq_len=8)["memory"]["weights"]
    assert none["bytes"] == 2 * 6_738_415_616 and none["exact"]
    nf4 = E.estimate(cfg_for("llama2_7b", "quant.method=nf4", "quant.double_quant=true"), batch_size=1, seq_len=8)
    per = [(4096, 4096)] * 4 + [(4096, 11008)] * 3
    expect = 32 * sum(E.nf4_bytes(a * b, True) for a, b in per) + 4 * rest  # k-bit prep: the rest in fp32
    assert nf4["memory"]["weights"]["bytes"] == expect
    int8 = E.estimate(cfg_for("llama2_7b", "quant.method=int8"), batch_size=1, seq_len=8)["memory"]["weights"]["bytes"]
    assert int8 == lin + 4 * 32 * (4 * 4096 + 2 * 11008 + 4096) + 4 * rest


def test_adapter_gradient_optimizer_bytes() -> None:
    base = cfg_for("llama2_7b", "adapter.r=16", "adapter.targets=[attn]", "quant.method=nf4")
    adam = E.estimate(base, batch_size=1, seq_len=8, optim="adamw_torch")["memory"]
    paged = E.estimate(base, batch_size=1, seq_len=8, optim="paged_adamw_8bit")["memory"]
    t = 16_777_216
    assert adam["adapter"]["bytes"] == 4 * t and adam["gradients"]["bytes"] == 4 * t
    assert adam["optimizer"]["bytes"] == 8 * t and paged["optimizer"]["bytes"] == 2 * t
    parts = ["weights", "adapter", "gradients", "optimizer", "activations", "workspace"]
    assert adam["peak_allocated"]["bytes"] == sum(adam[p]["bytes"] for p in parts)
    assert adam["total"]["bytes"] == sum(
        adam[p]["bytes"] for p in ("peak_allocated", "allocator_slack", "cuda_context")
    )
    with pytest.raises(ConfigError):
        E.estimate(base, batch_size=1, seq_len=8, optim="no_such_optim")


def test_full_fine_tuning_memory_trains_every_weight_in_its_dtype() -> None:
    n = 6_738_415_616  # Llama-2-7B in bf16: no adapter; a bf16 gradient and torch AdamW's two bf16 moments per weight
    full = E.estimate(cfg_for("llama2_7b", "adapter.variant=full"), batch_size=1, seq_len=8, optim="adamw_torch")
    mem = full["memory"]
    assert full["params"]["trainable"] == n and mem["adapter"]["bytes"] == 0
    assert mem["weights"]["bytes"] == mem["gradients"]["bytes"] == 2 * n and mem["optimizer"]["bytes"] == 4 * n
    paged = E.estimate(cfg_for("llama2_7b", "adapter.variant=full"), batch_size=1, seq_len=8, optim="paged_adamw_8bit")
    assert paged["memory"]["optimizer"]["bytes"] == 2 * n  # bitsandbytes' 8-bit states, whatever the param dtype
    fp32 = E.estimate(cfg_for("tiny_llama", "adapter.variant=full"), batch_size=1, seq_len=8, optim="adamw_torch")
    t = fp32["params"]["trainable"]
    assert fp32["memory"]["gradients"]["bytes"] == 4 * t and fp32["memory"]["optimizer"]["bytes"] == 8 * t
    lora = E.estimate(cfg_for("llama2_7b"), batch_size=1, seq_len=8, optim="adamw_torch")
    assert full["memory"]["total"]["bytes"] > 3 * lora["memory"]["total"]["bytes"]  # ~54 GB against ~14 GB


def test_activations_scale_and_modes() -> None:
    cfg = cfg_for("llama2_7b", "adapter.targets=[all-linear]", "adapter.dropout=0.0")

    def act(**kw):
        return E.estimate(cfg, **kw)["memory"]["activations"]["bytes"]

    a1 = act(batch_size=1, seq_len=1024, gradient_checkpointing=False, autocast=True)
    a4 = act(batch_size=4, seq_len=1024, gradient_checkpointing=False, autocast=True)
    assert a4 == pytest.approx(4 * a1, rel=1e-6)  # linear in tokens on the flash path
    ck = act(batch_size=4, seq_len=1024, gradient_checkpointing=True, autocast=True)
    assert 4 < a4 / ck < 20
    # QLoRA without autocast keeps fp32 activations: about twice bf16 LoRA's (under autocast, as the Trainer runs it).
    q = cfg_for("mistral_7b", "adapter.targets=[all-linear]", "adapter.dropout=0.0", "quant.method=nf4")
    qa = E.estimate(q, batch_size=4, seq_len=1024, gradient_checkpointing=False, autocast=False)
    bf = E.estimate(
        cfg_for("mistral_7b", "adapter.targets=[all-linear]", "adapter.dropout=0.0"),
        batch_size=4,
        seq_len=1024,
        gradient_checkpointing=False,
        autocast=True,
    )
    ratio = qa["memory"]["activations"]["bytes"] / bf["memory"]["activations"]["bytes"]
    assert 1.5 < ratio < 2.5
    assert qa["memory"]["activations"]["exact"] is False and qa["params"]["exact"] is True


# ---------------------------------------------------------------- headlines


def test_65b_qlora_fits_48gb_and_16bit_lora_does_not() -> None:
    q = cfg_for(
        "llama_65b", "quant.method=nf4", "quant.double_quant=true", "adapter.r=16", "adapter.targets=[all-linear]"
    )
    qlora = E.estimate(
        q, batch_size=1, seq_len=512, gradient_checkpointing=True, optim="paged_adamw_8bit", autocast=True
    )
    assert qlora["fits"]["48"] and E.fits(qlora, 48) and E.gpu_fraction(qlora, 48) < 1
    assert not qlora["fits"]["24"]
    lora = E.estimate(
        cfg_for("llama_65b", "quant.method=none", "adapter.r=16", "adapter.targets=[all-linear]"),
        batch_size=1,
        seq_len=512,
        gradient_checkpointing=True,
        optim="paged_adamw_8bit",
        autocast=True,
    )
    assert not lora["fits"]["48"] and not lora["fits"]["80"] and E.gpu_fraction(lora, 80) > 1
    assert lora["memory"]["weights"]["bytes"] > 120 * GB


@pytest.mark.parametrize("model", ["llama2_7b", "mistral_7b"])
def test_7b_qlora_batch4_seq2k_checkpointed_fits_24gb(model: str) -> None:
    cfg = cfg_for(model, "quant.method=nf4", "quant.double_quant=true", "adapter.r=16", "adapter.targets=[all-linear]")
    est = E.estimate(cfg, batch_size=4, seq_len=2048, gradient_checkpointing=True, autocast=True)
    assert est["fits"] == {"24": True, "48": True, "80": True}
    off = E.estimate(cfg, batch_size=4, seq_len=2048, gradient_checkpointing=False, autocast=True)
    assert not off["fits"]["24"]  # the same run without checkpointing does not


def test_8b_qlora_batch4_seq2k_checkpointed_misses_24gb_with_or_without_autocast() -> None:
    """Llama-3-8B QLoRA r=16 all-linear, 4 x 2048, checkpointed: the loss over the 128k vocab sets the peak, which
    autocast does not lower; it adds the fp32 lm_head's bf16 copy, so auto keeps it off."""
    cfg = cfg_for(
        "llama3_8b", "quant.method=nf4", "quant.double_quant=true", "adapter.r=16", "adapter.targets=[all-linear]"
    )
    kw = dict(batch_size=4, seq_len=2048, gradient_checkpointing=True)
    auto, off, on = E.estimate(cfg, **kw), E.estimate(cfg, **kw, autocast=False), E.estimate(cfg, **kw, autocast=True)
    assert auto["autocast"] is False and auto["memory"]["total"] == off["memory"]["total"]
    assert off["memory"]["total"]["bytes"] > 24 * GB and on["memory"]["total"]["bytes"] > 24 * GB
    assert not off["fits"]["24"] and not on["fits"]["24"] and on["fits"]["48"]
    lm_head = 128256 * 4096
    assert on["memory"]["peak_allocated"]["bytes"] - off["memory"]["peak_allocated"]["bytes"] == 2 * lm_head
    # Without checkpointing the blocks set the peak and autocast halves it: there auto takes bf16.
    plain = E.estimate(cfg, batch_size=4, seq_len=2048, gradient_checkpointing=False)
    assert plain["autocast"] is True
    assert plain["memory"]["activations"]["bytes"] < 0.6 * off["activations_by_checkpointing"]["off"]


# ---------------------------------------------------------------- mixed precision: one rule for trials and estimates


def test_auto_takes_bf16_for_qlora_on_a_bf16_device_and_not_on_cpu() -> None:
    cfg = cfg_for("llama2_7b", "quant.method=nf4", "adapter.targets=[all-linear]", "train.batch_size=4")
    cfg.data.max_length = 512
    assert E.trial_autocast(cfg, bf16_capable=True) is True
    assert E.trial_autocast(cfg, bf16_capable=False) is False
    assert E.estimate(cfg, bf16_capable=False)["autocast"] is False


def test_no_and_bf16_are_taken_as_given_and_bf16_without_a_bf16_device_is_one_line() -> None:
    cfg = cfg_for("tiny_llama", "quant.method=nf4", "train.mixed_precision=no")
    assert E.trial_autocast(cfg, bf16_capable=True) is False
    cfg.train.mixed_precision = "bf16"
    assert E.trial_autocast(cfg, bf16_capable=True) is True
    with pytest.raises(ConfigError) as e:
        E.trial_autocast(cfg, bf16_capable=False)
    assert str(e.value).startswith("train.mixed_precision='bf16' is not allowed: auto or no on this machine")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(not MEASURED.is_dir(), reason=f"no H100 measurements at {MEASURED} (../shared/gpu/measured)")
def test_auto_takes_bf16_on_exactly_the_measured_pairs_where_autocast_did_not_raise_the_peak() -> None:
    cal = _calibration()
    pairs: dict = {}
    for r in cal.rows(MEASURED):
        key = (r["model"], r["quant"], r["r"], r["batch"], r["seq"], r["grad_ckpt"], r["optim"])
        pairs.setdefault(key, {})[r["autocast_bf16"] == "True"] = r
    assert len(pairs) == 34
    wrong = []
    for key, pair in pairs.items():
        paid = int(pair[True]["peak_alloc_mb"]) <= int(pair[False]["peak_alloc_mb"])
        est = E.estimate(cal.row_config(pair[False]), int(key[3]), int(key[4]), key[5] == "True", key[6])
        if est["autocast"] != paid:
            wrong.append(key)
    assert not wrong, wrong


# ---------------------------------------------------------------- CLI and JSON


def test_json_schema(capsys) -> None:
    rc = E.cli(["model=tiny_llama", "data=tweets_sft", "estimate.batch_size=2", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for k, t in [
        ("model", str),
        ("variant", str),
        ("r", int),
        ("targets", list),
        ("target_modules", int),
        ("batch_size", int),
        ("seq_len", int),
        ("gradient_checkpointing", bool),
        ("optim", str),
        ("autocast", bool),
        ("mixed_precision", str),
        ("params", dict),
        ("memory", dict),
        ("fits", dict),
        ("activations_by_checkpointing", dict),
        ("quant", dict),
    ]:
        assert isinstance(out[k], t), k
    assert out["batch_size"] == 2
    assert set(out["params"]) == {"trainable", "total", "base", "trainable_pct", "exact"}
    assert set(out["memory"]) == {
        "weights",
        "adapter",
        "gradients",
        "optimizer",
        "activations",
        "workspace",
        "peak_allocated",
        "allocator_slack",
        "cuda_context",
        "total",
    }
    for part in out["memory"].values():
        assert set(part) == {"bytes", "gib", "exact", "note"} and isinstance(part["bytes"], int)
    assert set(out["fits"]) == {"24", "48", "80"}
    assert set(out["activations_by_checkpointing"]) == {"off", "on"}


def test_table_and_bad_input(capsys) -> None:
    assert (
        E.cli(
            [
                "model=tiny_llama",
                "data=tweets_sft",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "trainable params" in text and "fits: 24 GB" in text and "estimate" in text
    assert E.cli(["model=tiny_llama", "adapter.targets=[nope]"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lorasweep: error: adapter.targets='nope'") and "\n" not in err
    assert E.cli(["model=tiny_llama", "quant=nf9"]) == 2


def test_config_from_local_folder(tmp_path) -> None:
    spec = OmegaConf.to_container(cfg_for("tiny_llama").model.config)
    from transformers import AutoConfig

    AutoConfig.for_model(**spec).save_pretrained(tmp_path)
    cfg = cfg_for("tiny_llama", "model.source=pretrained", f"model.path={tmp_path}")
    cfg.model.config = None
    assert (
        E.estimate(cfg, batch_size=1, seq_len=8)["params"]["trainable"]
        == E.estimate(cfg_for("tiny_llama"), batch_size=1, seq_len=8)["params"]["trainable"]
    )
    cfg.model.path = str(tmp_path / "missing")
    with pytest.raises(ConfigError):
        E.estimate(cfg, batch_size=1, seq_len=8)


# ---------------------------------------------------------------- calibration on the H100 measurements


def _calibration():
    spec = importlib.util.spec_from_file_location("calibrate_estimate", REPO / "benchmarks" / "calibrate_estimate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not MEASURED.is_dir(), reason=f"no H100 measurements at {MEASURED} (../shared/gpu/measured)")
def test_calibration_within_15_percent_on_every_measured_row() -> None:
    cal = _calibration()
    rows = cal.rows(MEASURED)
    assert len(rows) == 68
    results = [cal.compare(r) for r in rows]
    misses = [
        (r["file"], r["model"], r["quant"], r["r"], r["batch"], r["seq"], r["grad_ckpt"], f"{r['error']:+.1%}")
        for r in results
        if abs(r["error"]) > cal.TOLERANCE
    ]
    assert not misses, misses
    assert all(int(r["trainable_params"]) == r["trainable_estimate"] for r in results)
    assert math.isclose(sum(abs(r["error"]) for r in results) / len(results), 0, abs_tol=0.05)
