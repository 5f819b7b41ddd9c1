"""Spectra of learned adapter updates: exactness of the QR path, rank measures, and each method's real ΔW."""

import copy
import csv
import json
import math

import numpy as np
import pytest
import torch
from peft import AdaLoraConfig, IA3Config, LoraConfig, VeraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from lorasweep import measure

TARGETS = ["q_proj", "v_proj", "down_proj", "up_proj"]


@pytest.mark.parametrize(
    "d,k,r",
    [(64, 48, 4), (384, 96, 8), (30, 200, 16), (12, 10, 16), (5, 40, 9), (40, 5, 9)],  # r > min(d,k) edges
)
def test_singular_values_match_full_svd(d: int, k: int, r: int) -> None:
    g = torch.Generator().manual_seed(d * k + r)
    b = torch.randn(d, r, generator=g, dtype=torch.float64)
    a = torch.randn(r, k, generator=g, dtype=torch.float64)
    sv = measure.singular_values(b, a, 0.37)
    full = torch.linalg.svdvals(0.37 * b @ a)
    assert sv.dtype == torch.float64
    assert sv.numel() == min(d, k, r)
    torch.testing.assert_close(sv, full[: sv.numel()], rtol=1e-5, atol=1e-10 * float(full[0]))
    assert torch.all(full[sv.numel() :] <= 1e-10 * full[0])  # nothing the QR path leaves out is nonzero


def test_singular_values_rank_deficient_and_float32() -> None:
    g = torch.Generator().manual_seed(0)
    u = torch.randn(50, 3, generator=g)
    b = torch.cat([u, u @ torch.randn(3, 5, generator=g)], dim=1)  # rank 3 with r = 8
    a = torch.randn(8, 70, generator=g)
    sv = measure.singular_values(b, a, 2.0)
    full = torch.linalg.svdvals(2.0 * b.double() @ a.double())
    torch.testing.assert_close(sv[:3], full[:3], rtol=1e-5, atol=0.0)
    assert torch.all(sv[3:] < 1e-5 * sv[0])
    assert measure.rank_stats(sv, r=8)["energy_rank99"] <= 3


def test_singular_values_formed_matrix_and_tuple() -> None:
    m = torch.randn(20, 30, dtype=torch.float64)
    torch.testing.assert_close(measure.singular_values(m), torch.linalg.svdvals(m))
    b, a = torch.randn(20, 4), torch.randn(4, 30)
    torch.testing.assert_close(  # the (B, A, s) tuple: the spectrum of s·B·A formed, which has rank 4
        measure.singular_values((b, a, 3.0)).double(), torch.linalg.svdvals(3.0 * b.double() @ a.double())[:4]
    )


def test_rank_stats_hand_checked() -> None:
    one = measure.rank_stats(torch.tensor([1.0, 0.0, 0.0]))
    assert (one["energy_rank90"], one["energy_rank95"], one["energy_rank99"]) == (1, 1, 1)
    assert one["effective_rank"] == pytest.approx(1.0)
    assert one["stable_rank"] == pytest.approx(1.0)
    assert one["r"] == 3 and one["sigma1"] == 1.0

    flat = measure.rank_stats(torch.full((6,), 2.5), r=8)
    assert flat["effective_rank"] == pytest.approx(6.0)
    assert flat["stable_rank"] == pytest.approx(6.0)
    # 6 equal values: k/6 of the energy after k, so 90 % needs 6 (5/6 < .9), as do 95 and 99
    assert (flat["energy_rank90"], flat["energy_rank95"], flat["energy_rank99"]) == (6, 6, 6)
    assert flat["r"] == 8

    # σ² = 81, 9, 1 of 91: 89.0 %, 98.9 %, 100 %  -> ranks 2, 2, 3; unsorted input is sorted
    s = measure.rank_stats(torch.tensor([1.0, 9.0, 3.0]))
    assert (s["energy_rank90"], s["energy_rank95"], s["energy_rank99"]) == (2, 2, 3)
    assert s["stable_rank"] == pytest.approx(91 / 81)
    p = torch.tensor([9.0, 3.0, 1.0]) / 13
    assert s["effective_rank"] == pytest.approx(math.exp(-float((p * p.log()).sum())))

    # exactly 90 % of the energy in the first value must count as reaching 90 %
    assert measure.rank_stats(torch.tensor([3.0, 1.0]))["energy_rank90"] == 1


def test_zero_update_has_zero_ranks() -> None:
    sv = measure.singular_values(torch.zeros(16, 4), torch.randn(4, 12), 1.0)
    stats = measure.rank_stats(sv, r=4)
    assert all(not math.isnan(float(v)) for v in stats.values())
    assert stats["energy_rank95"] == 0 and stats["effective_rank"] == 0.0 and stats["stable_rank"] == 0.0
    assert stats["r"] == 4 and stats["sigma1"] == 0.0
    assert measure.rank_stats(torch.tensor([]))["energy_rank90"] == 0


# ----------------------------------------------------------------------------------------------- on a model


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=1000,
        hidden_size=64,
        intermediate_size=172,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return LlamaForCausalLM(cfg).eval()


METHODS = {
    "lora": lambda: LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=TARGETS),
    "rslora": lambda: LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_rslora=True, target_modules=TARGETS),
    "dora": lambda: LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, use_dora=True, target_modules=TARGETS),
    "pissa": lambda: LoraConfig(r=4, lora_alpha=4, lora_dropout=0.0, init_lora_weights="pissa", target_modules=TARGETS),
    "vera": lambda: VeraConfig(r=8, vera_dropout=0.0, target_modules=TARGETS),
    "adalora": lambda: AdaLoraConfig(
        init_r=6, target_r=4, lora_alpha=8, lora_dropout=0.0, total_step=10, target_modules=TARGETS
    ),
}


def build(method: str) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    """(peft model with randomly perturbed trainable params, untouched pretrained copy, init snapshot), float64."""
    base = tiny_llama()
    pretrained = copy.deepcopy(base).double()
    model = get_peft_model(base, METHODS[method]()).double()  # PiSSA insists on initialising in float32
    snap = measure.snapshot_factors(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:  # zero-init factors (lora_B, λ_b, E) would hide a wrong formula
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype) * (p.abs().mean() + 0.1))
    return model.eval(), pretrained, snap


def formed(upd) -> torch.Tensor:
    if isinstance(upd, tuple):
        b, a, s = upd
        return s * b.double() @ a.double()
    return upd.double()


def adapted(model) -> list[tuple[str, torch.nn.Module]]:
    return [(measure._clean(n), m) for n, m in model.named_modules() if measure._has_adapter(m, "default")]


@pytest.fixture(scope="module", params=list(METHODS))
def method_model(request):
    return request.param, *build(request.param)


def test_update_is_the_layers_real_update(method_model) -> None:
    method, model, _, _ = method_model
    layers = adapted(model)
    assert len(layers) == 2 * len(TARGETS)
    for name, mod in layers:
        x = torch.randn(5, mod.get_base_layer().in_features, dtype=torch.float64)
        with torch.no_grad():
            want = mod(x) - mod.get_base_layer()(x)
        dw = formed(measure.update_factors(mod))
        assert dw.shape == mod.get_base_layer().weight.shape, name
        assert want.abs().max() > 1e-3, f"{method} {name}: perturbation left the update at zero"
        torch.testing.assert_close(x @ dw.T, want, rtol=1e-7, atol=1e-9, msg=f"{method} {name}")
        if isinstance(measure.update_factors(mod), tuple):  # the factored spectrum is the matrix's spectrum
            sv = measure.singular_values(measure.update_factors(mod))
            torch.testing.assert_close(sv, torch.linalg.svdvals(dw)[: sv.numel()], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("method", ["pissa", "dora"])
def test_update_against_pretrained_weight_with_snapshot(method: str) -> None:
    model, pretrained, snap = build(method)
    ref = dict(pretrained.named_modules())
    for name, mod in adapted(model):
        x = torch.randn(5, mod.get_base_layer().in_features, dtype=torch.float64)
        with torch.no_grad():
            want = mod(x) - ref[name](x)  # relative to W0, not to PiSSA's residual
        dw = formed(measure.update_factors(mod, init=snap[name]))
        # PiSSA formed its residual in float32, so W_res + s·B0·A0 recovers W0 only to float32 precision
        torch.testing.assert_close(
            x @ dw.T, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()), msg=f"{method} {name}"
        )
    if method == "pissa":  # without the snapshot the residual-relative update differs from the honest one
        name, mod = adapted(model)[0]
        assert not torch.allclose(
            formed(measure.update_factors(mod)), formed(measure.update_factors(mod, init=snap[name]))
        )


def test_update_of_lora_on_embedding() -> None:
    model = get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["embed_tokens"])).eval()
    torch.nn.init.normal_(model.base_model.model.model.embed_tokens.lora_embedding_B["default"])
    emb = model.base_model.model.model.embed_tokens
    ids = torch.tensor([[3, 17, 999]])
    with torch.no_grad():
        want = emb(ids) - emb.get_base_layer()(ids)
    dw = formed(measure.update_factors(emb))
    assert dw.shape == emb.get_base_layer().weight.shape
    torch.testing.assert_close(dw[ids[0]].float(), want[0], rtol=1e-5, atol=1e-6)
    assert [r["name"] for r in measure.spectra(model)] == ["model.embed_tokens"]


def test_spectra_aggregate_and_files(method_model, tmp_path) -> None:
    method, model, _, _ = method_model
    rows = measure.spectra(model, "llama")
    assert [r["name"] for r in rows] == [n for n, _ in adapted(model)]
    assert {r["module_type"] for r in rows} == {"q", "v", "down", "up"}
    for row in rows:
        assert row["d"] * row["k"] > 0 and row["sigma1"] > 0
        assert 1 <= row["energy_rank90"] <= row["energy_rank95"] <= row["energy_rank99"] <= len(row["sv"])
        assert row["sv"][0] == pytest.approx(1.0) and all(0 <= v <= 1 + 1e-12 for v in row["sv"])
        if method != "dora":
            assert len(row["sv"]) <= row["r"]
    assert measure.spectra(model) == rows  # family from model.config

    agg = measure.aggregate(rows)
    expected = {
        f"{m}_mean" for m in ("effective_rank", "energy_rank90", "energy_rank95", "energy_rank99", "stable_rank")
    }
    for t in ("q", "v", "down", "up"):
        expected |= {f"effective_rank_{t}_mean", f"energy_rank95_{t}_mean"}
    assert set(agg) == expected
    assert all(math.isfinite(v) for v in agg.values())
    layers = dict(adapted(model))

    def effective_rank(name: str) -> float:
        """Roy & Vetterli's exp(entropy of σ/Σσ), from numpy's SVD of the update the layer applies: its output on
        the identity less its base layer's, so neither the module's factors nor its SVD are used."""
        mod = layers[name]
        eye = torch.eye(mod.get_base_layer().in_features, dtype=torch.float64)
        with torch.no_grad():
            dw = (mod(eye) - mod.get_base_layer()(eye)).numpy()
        sv = np.linalg.svd(dw, compute_uv=False)
        p = sv[sv > 0] / sv.sum()
        return float(np.exp(-(p * np.log(p)).sum()))

    q = [effective_rank(r["name"]) for r in rows if r["module_type"] == "q"]
    assert agg["effective_rank_q_mean"] == pytest.approx(sum(q) / len(q), rel=1e-6)

    paths = measure.write_spectra(rows, tmp_path / "out")
    assert {p.name for p in paths} == {"spectra.csv", "spectra.json", "spectra.png"}
    with (tmp_path / "out" / "spectra.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(rows) and "sv" not in table[0]
    assert float(table[0]["effective_rank"]) == pytest.approx(rows[0]["effective_rank"])
    assert json.loads((tmp_path / "out" / "spectra.json").read_text())[0]["sv"] == rows[0]["sv"]
    assert (tmp_path / "out" / "spectra.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_spectra_of_fresh_lora_is_zero_and_aggregate_empty() -> None:
    model = get_peft_model(tiny_llama(), METHODS["lora"]())
    rows = measure.spectra(model, "llama")
    assert rows and all(r["energy_rank95"] == 0 and r["effective_rank"] == 0.0 for r in rows)
    assert measure.aggregate([]) == {}


def test_spectra_of_full_fine_tuning_are_those_of_w_minus_w0() -> None:
    model = tiny_llama()
    names = [n for n, _ in model.named_modules() if n.endswith(("q_proj", "down_proj"))]
    init = measure.snapshot(model, names)
    assert set(init) == set(names) and all(w.device.type == "cpu" for w in init.values())
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():  # a dense update of every weight, as full fine-tuning makes
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    rows = measure.spectra(model, "llama", init=init)
    assert [r["name"] for r in rows] == names and {r["module_type"] for r in rows} == {"q", "down"}
    mods = dict(model.named_modules())
    for row in rows:
        dw = mods[row["name"]].weight.double() - init[row["name"]].double()
        sv = torch.linalg.svdvals(dw)
        assert sv[0] > 0 and row["sigma1"] == pytest.approx(float(sv[0]), rel=1e-12)
        assert row["r"] == len(row["sv"]) == min(dw.shape)
        assert row["energy_rank95"] > 16  # far above any LoRA rank here: the update is not low-rank


def test_ia3_has_no_spectrum_and_says_why() -> None:
    model = get_peft_model(tiny_llama(), IA3Config(target_modules=TARGETS, feedforward_modules=["down_proj"]))
    init = measure.snapshot(model, TARGETS)
    assert init == {}  # a PEFT model: LoRA factors only, and IA3 has none
    with pytest.warns(UserWarning, match="IA3"):
        assert measure.spectra(model, "llama", init=init) == []
    tags = measure.spectra_tags(model)
    assert list(tags) == ["spectra"] and tags["spectra"].startswith("not measured: IA3") and "\n" not in tags["spectra"]
    assert measure.spectra_tags(get_peft_model(tiny_llama(), METHODS["lora"]())) == {}


def test_peak_memory() -> None:
    measure.reset_peak_memory()
    mem = measure.peak_memory_mb()
    assert mem["peak_memory_mb"] > 10  # torch alone keeps far more than 10 MiB resident
    if not torch.cuda.is_available():
        assert set(mem) == {"peak_memory_mb"}
