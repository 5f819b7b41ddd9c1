"""Target aliases resolve per architecture family; unknown names list the model's real Linear modules."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from lorasweep.errors import ConfigError
from lorasweep.targets import module_type, resolve_targets


@pytest.fixture(scope="module")
def llama():
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


@pytest.fixture(scope="module")
def bert():
    cfg = AutoConfig.for_model(
        "bert",
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_labels=3,
    )
    with torch.device("meta"):
        return AutoModelForSequenceClassification.from_config(cfg)


@pytest.mark.parametrize(
    "targets,suffixes",
    [
        (["q"], {"self_attn.q_proj"}),
        (["q", "v"], {"self_attn.q_proj", "self_attn.v_proj"}),
        (["attn"], {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}),
        (["mlp"], {"mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}),
        (["down_proj"], {"mlp.down_proj"}),  # a raw module name
    ],
)
def test_llama_aliases(llama, targets, suffixes):
    names = resolve_targets(llama, "llama", targets)
    assert {".".join(n.split(".")[-2:]) for n in names} == suffixes
    assert len(names) == 2 * len(suffixes)  # one per layer


@pytest.mark.parametrize(
    "alias,suffix",
    [
        ("q", "attention.self.query"),
        ("k", "attention.self.key"),
        ("v", "attention.self.value"),
        ("o", "attention.output.dense"),
        ("up", "intermediate.dense"),
        ("down", "layer.0.output.dense"),
    ],
)
def test_bert_aliases(bert, alias, suffix):
    names = resolve_targets(bert, "bert", [alias])
    assert len(names) == 2 and any(n.endswith(suffix) for n in names)
    # `down` must not pick up attention.output.dense, although both end in output.dense
    assert all(module_type(n, "bert") == alias for n in names)


def test_all_linear_excludes_task_heads(llama, bert):
    assert not any("lm_head" in n for n in resolve_targets(llama, "llama", ["all-linear"]))
    assert len(resolve_targets(llama, "llama", ["all-linear"])) == 14
    assert not any("classifier" in n for n in resolve_targets(bert, "bert", ["all-linear"]))


def test_unknown_target_lists_real_modules(bert):
    with pytest.raises(ConfigError) as e:
        resolve_targets(bert, "bert", ["q_proj"])
    msg = str(e.value)
    assert msg.startswith("adapter.targets='q_proj'") and "attention.self.query" in msg and "intermediate.dense" in msg
