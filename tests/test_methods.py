"""Methods added as one registry entry and a preset each: GaLore (full-parameter training, a rank-r projected
optimizer) and LoftQ (LoRA on a 4-bit base, initialised against its quantization error). Real trials on tiny_llama
and MiniLM, and the estimator's GaLore optimizer state against the real optimizer and a hand count."""

import importlib.util

import mlflow
import pytest
import torch

from lorasweep import data, model, train
from lorasweep import estimate as E
from lorasweep.config import compose
from lorasweep.errors import ConfigError
from lorasweep.trial import run_trial
from lorasweep.variants import METHODS
from tests.test_trial import TINY

needs_galore = pytest.mark.skipif(
    importlib.util.find_spec("galore_torch") is None, reason="adapter=galore needs pip install -e '.[galore]'"
)


def _galore_trainer(cfg):
    names, _ = model.targets(cfg, None)
    tuned, tok = model.load(cfg, names, int(cfg.train.max_steps), None)
    parts = data.splits(cfg)
    return train.trainer(cfg, tuned, tok, data.tokenize(cfg, parts, tok, None), [], (), names), tuned, names


def _state_bytes(opt) -> int:
    """What GaLoreAdamW holds: the moments, and for a projected weight its projection matrix."""
    total = 0
    for st in opt.state.values():
        tensors = [st["exp_avg"], st["exp_avg_sq"]] + ([st["projector"].ortho_matrix] if "projector" in st else [])
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total


@needs_galore
def test_galore_trains_every_weight_with_a_galore_optimizer_whose_target_state_has_rank_r(store):
    cfg = compose([*TINY, "adapter=galore", "adapter.r=4", "adapter.targets=[q,v]", "train.max_steps=3"])
    tr, tuned, names = _galore_trainer(cfg)
    before = {n: p.detach().clone() for n, p in tuned.named_parameters()}
    tr.train()
    opt = getattr(tr.optimizer, "optimizer", tr.optimizer)  # accelerate wraps the Trainer's optimizer
    from galore_torch import GaLoreAdamW

    assert type(opt) is GaLoreAdamW
    mods = dict(tuned.named_modules())
    projected = {id(mods[n].weight) for n in names}
    assert len(projected) == 4  # q and v in each of 2 layers
    for n, p in tuned.named_parameters():
        st = opt.state[p]
        if id(p) in projected:  # q: 64 x 64, v: 32 x 64; the moments are the projected gradient's, rank 4
            out, inp = p.shape
            assert st["projector"].rank == 4
            assert tuple(st["exp_avg"].shape) == ((out, 4) if out >= inp else (4, inp)), n
            assert tuple(st["projector"].ortho_matrix.shape) == ((4, inp) if out >= inp else (out, 4)), n
        else:
            assert st["exp_avg"].shape == p.shape, n
        assert not torch.equal(p.detach(), before[n]), n  # full-parameter: every weight trained
    # the estimator's optimizer state equals what the trained optimizer holds, counted from its tensors
    assert E.estimate(cfg)["memory"]["optimizer"]["bytes"] == _state_bytes(opt)


def test_galore_optimizer_state_on_llama2_7b_equals_a_hand_count():
    cfg = compose(["model=llama2_7b", "data=tweets_sft", "adapter=galore", "adapter.r=128", "adapter.targets=[q,v]"])
    est = E.estimate(cfg, batch_size=1, seq_len=8)
    width, layers, total = 4096, 32, 6_738_415_616  # Llama-2-7B: q and v are 4096 x 4096; its published size
    projected = 2 * layers * (2 * 128 * width + 128 * width)  # two rank-128 moments and a 128 x 4096 projection each
    full_moments = 2 * (total - 2 * layers * width * width)  # every other parameter: two full moments
    bytes_per = {"float32": 4, "bfloat16": 2, "float16": 2}[cfg.model.dtype]
    assert est["memory"]["optimizer"]["bytes"] == bytes_per * (projected + full_moments)
    assert est["params"]["trainable"] == total  # full-parameter training
    adamw = E.estimate(compose(["model=llama2_7b", "data=tweets_sft", "adapter=full"]), batch_size=1, seq_len=8)
    assert est["memory"]["optimizer"]["bytes"] < adamw["memory"]["optimizer"]["bytes"]


@needs_galore
@pytest.mark.slow
def test_galore_trial_runs_end_to_end_and_logs_its_settings(store):
    summary = run_trial(compose([*TINY, "adapter=galore", "adapter.r=4", "adapter.galore_update_gap=2"]))
    run = mlflow.MlflowClient(store).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and summary["steps"] == 4 and summary["eval_perplexity"] > 1
    assert run.data.params["adapter.galore_update_gap"] == "2" and run.data.params["adapter.variant"] == "galore"
    assert summary["trainable_pct"] == 100  # every weight trains


def test_galore_fields_are_checked_by_their_entry():
    fields = METHODS["galore"].fields
    for name, bad in (("galore_update_gap", 0), ("galore_update_gap", 2.5), ("galore_scale", 0)):
        with pytest.raises(ConfigError) as err:
            fields[name][1].metadata["check"](f"adapter.{name}", bad)
        assert str(err.value).startswith(f"adapter.{name}={bad!r} is not allowed")
    preset = compose(["adapter=galore"]).adapter
    assert {name: preset[name] for name in fields} == {name: fl[1].default for name, fl in fields.items()}


# ------------------------------------------------------------------------------------------------------ LoftQ


def _errors(cfg, labels):
    """Per 4-bit target: ||W - W_q||, ||W - (W_q + scaling·B·A)|| (Frobenius) and min(m, n); W read by transformers
    itself."""
    import bitsandbytes as bnb
    from peft.tuners.lora.bnb import Linear4bit

    names, _ = model.targets(cfg, len(labels) if labels else None)
    tuned, _ = model.load(cfg, names, 4, labels)
    kw = dict(num_labels=len(labels)) if labels else {}
    floats = model.AUTO[cfg.model.task].from_pretrained(model.folder(cfg.model), dtype=torch.float32, **kw)
    w0 = dict(floats.named_parameters())
    out = {}
    for path, m in tuned.named_modules():
        if isinstance(m, Linear4bit):
            w = w0[path.removeprefix("base_model.model.") + ".weight"].detach()
            q = bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
            ba = m.scaling["default"] * (m.lora_B["default"].weight @ m.lora_A["default"].weight).detach()
            out[path] = (float((w - q).norm()), float((w - q - ba).norm()), min(w.shape))
    return out


@pytest.mark.parametrize("name", ["tiny_llama", "minilm"])
def test_loftq_init_brings_every_4bit_target_closer_to_its_float_weight(name):
    data_name = "tweets" if name == "minilm" else "tweets_sft"
    base = [f"model={name}", f"data={data_name}", "quant=nf4", "adapter.r=8", "adapter.targets=[q,v]"]
    cfg = compose([*base, "adapter=loftq"])
    labels = data.labels(cfg, data.splits(cfg))
    loftq = _errors(cfg, labels)
    assert len(loftq) == 4 if name == "tiny_llama" else 12  # q and v in each of 2 (6) layers
    for path, (quantized, corrected, small) in loftq.items():
        # the best rank-r fit of the error E keeps at least r/min(m, n) of its energy: ||E - E_r||² <= (1 - r/k)||E||²
        assert corrected**2 <= (1 - 8 / small) * quantized**2 * (1 + 1e-4), path
    lora = _errors(compose([*base, "adapter=lora"]), labels)  # the control: plain LoRA starts at B = 0
    assert all(c == pytest.approx(q) for q, c, _ in lora.values())


@pytest.mark.slow
def test_loftq_trial_on_nf4_runs_end_to_end(store):
    summary = run_trial(compose([*TINY, "quant=nf4", "adapter=loftq", "adapter.r=4"]))
    run = mlflow.MlflowClient(store).get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and summary["steps"] == 4 and summary["eval_perplexity"] > 1
    assert run.data.params["adapter.variant"] == "loftq" and run.data.params["quant.method"] == "nf4"
