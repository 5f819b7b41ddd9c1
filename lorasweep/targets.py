"""Target-module aliases (q, k, v, o, gate, up, down, attn, mlp, all-linear) resolved per architecture family,
and the `spectrum:<k>%` rule (the k % of each module type with the highest SNR of its base weights)."""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

from lorasweep.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a model is: config validation needs only the rules
    import torch.nn as nn

# Each family maps an alias to a pattern matched against the end of a module's full name.
FAMILIES: dict[str, dict[str, str]] = {
    "llama": {  # Llama, Qwen2, Mistral, Gemma share these names
        "q": r"q_proj",
        "k": r"k_proj",
        "v": r"v_proj",
        "o": r"o_proj",
        "gate": r"gate_proj",
        "up": r"up_proj",
        "down": r"down_proj",
    },
    "bert": {  # BERT, RoBERTa, MiniLM
        "q": r"attention\.self\.query",
        "k": r"attention\.self\.key",
        "v": r"attention\.self\.value",
        "o": r"attention\.output\.dense",
        "up": r"intermediate\.dense",
        "down": r"(?<!attention\.)output\.dense",
    },
}
MODEL_TYPES = {
    "llama": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "mistral": "llama",
    "mixtral": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "gemma3": "llama",
    "gemma3_text": "llama",
    "phi3": "llama",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilroberta": "bert",
    "electra": "bert",
}
GROUPS = {"attn": ["q", "k", "v", "o"], "mlp": ["gate", "up", "down"]}
ALIASES = ["q", "k", "v", "o", "gate", "up", "down", "attn", "mlp", "all-linear", "spectrum:<k>%"]
SPECTRUM = re.compile(r"spectrum:(\d+(?:\.\d+)?)%?")
HEADS = {"classifier", "score", "lm_head", "qa_outputs"}  # task heads are never adapted


def family(model_type: str) -> str | None:
    return MODEL_TYPES.get(model_type)


def linear_names(model: nn.Module) -> list[str]:
    """Full names of the Linear layers an adapter may target (task heads excluded)."""
    import torch.nn as nn

    return [
        name for name, mod in model.named_modules() if isinstance(mod, nn.Linear) and not (set(name.split(".")) & HEADS)
    ]


def short_name(name: str) -> str:
    """`model.layers.3.self_attn.q_proj` -> `self_attn.q_proj`: the name with its layer prefix cut."""
    parts = name.split(".")
    idx = [i for i, p in enumerate(parts) if p.isdigit()]
    return ".".join(parts[idx[-1] + 1 :]) if idx else name


def module_type(name: str, fam: str | None) -> str:
    """The alias a module answers to (q, v, down, ...), else its short name."""
    for alias, pat in FAMILIES.get(fam or "", {}).items():
        if re.search(rf"(^|\.){pat}$", name):
            return alias
    return short_name(name)


def feedforward(names: list[str], fam: str | None) -> list[str]:
    """The MLP modules (gate, up, down) among `names`: those (IA)³ scales at their input rather than their output."""
    return [n for n in names if module_type(n, fam) in GROUPS["mlp"]]


def spectrum_percent(target: str) -> float | None:
    """k of a `spectrum:<k>%` rule, None for any other target; a malformed rule is a ConfigError."""
    if not str(target).startswith("spectrum"):
        return None
    hit = SPECTRUM.fullmatch(str(target))
    k = float(hit.group(1)) if hit else -1.0
    if not 0 < k <= 100:
        raise ConfigError("adapter.targets", target, "spectrum:<k>% with 0 < k <= 100, e.g. spectrum:25%")
    return k


def spectrum_pick(snr: dict[str, float], fam: str | None, k: float) -> list[str]:
    """Per module type, the ceil(k % of its layers) modules with the highest SNR (ties: by name)."""
    by_type: dict[str, list[str]] = {}
    for name in snr:
        by_type.setdefault(module_type(name, fam), []).append(name)
    picked = []
    for names in by_type.values():
        ranked = sorted(names, key=lambda n: (-snr[n], n))
        picked += ranked[: math.ceil(k / 100 * len(ranked) - 1e-9)]  # rounding must not add a layer at k·n exact
    return sorted(picked)


def resolve_targets(
    model: nn.Module, model_type: str, targets: list[str], snr: dict[str, float] | None = None
) -> list[str]:
    """Expand aliases and raw names into the sorted full names of the Linear modules to adapt.

    `snr` (module name -> SNR of its base weight, from lorasweep.spectrum) is needed by spectrum rules only.
    """
    fam = family(model_type)
    names = linear_names(model)
    chosen: set[str] = set()
    for t in targets:
        k = spectrum_percent(t)
        if k is not None:
            if snr is None:
                raise ConfigError(
                    "adapter.targets",
                    t,
                    "aliases or module names here: a spectrum rule needs the base weights, which only a trial loads",
                )
            # the family's module types (q…down) when known: a one-of-a-kind layer such as BERT's pooler
            # would otherwise always win its own type
            pool = [n for n in names if module_type(n, fam) in FAMILIES.get(fam or "", {})] or names
            hits = spectrum_pick({n: snr[n] for n in pool}, fam, k)
        elif t == "all-linear":
            hits = names
        elif t in GROUPS or t in FAMILIES.get(fam or "", {}):
            want = set(GROUPS.get(t, [t]))
            hits = [n for n in names if module_type(n, fam) in want]
        else:  # a raw module name, matched as PEFT does: whole name or dotted suffix
            hits = [n for n in names if n == t or n.endswith("." + t)]
        if not hits:
            real = sorted({short_name(n) for n in names})
            allowed = f"aliases {ALIASES} (family {fam or 'unknown'}) or one of this model's Linear modules {real}"
            raise ConfigError("adapter.targets", t, allowed)
        chosen.update(hits)
    return sorted(chosen)
