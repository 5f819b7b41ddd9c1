"""Generation metrics for SFT: greedy answers to the first prompts of a split, scored against their references
(exact match, ROUGE-L, BLEU, chrF) at each eval and on test at the end, through a Trainer callback."""

import time
from typing import Callable

import pandas as pd
import torch
from omegaconf import DictConfig
from transformers import GenerationConfig, TrainerCallback

from lorasweep import evalrows
from lorasweep.data import prompt_ids, sft_text
from lorasweep.tasks import GENERATED

TABLE_ROWS = 16  # prompt / reference / generation rows logged per eval: enough to read, small in the UI


def references(d: DictConfig, df: pd.DataFrame, n: int) -> tuple[list[str], list[list[str]]]:
    """The first n prompts of a split and their references: with group_references, every response the split has
    for that prompt."""
    if d.group_references:
        groups = df.groupby(df[d.prompt_column].astype(str), sort=False)[d.response_column].agg(list).iloc[:n]
        return list(groups.index), [[str(r).strip() for r in refs] for refs in groups]
    rows = df.iloc[:n]
    return [str(p) for p in rows[d.prompt_column]], [[str(r).strip()] for r in rows[d.response_column]]


def scores(generations: list[str], refs: list[list[str]]) -> dict[str, float]:
    """Exact match (after collapsing whitespace; any reference) and ROUGE-L F1 (best reference) in [0, 1], averaged
    over prompts; corpus BLEU and chrF in [0, 100] from sacreBLEU, with a variable number of references. Each is
    defined once, in lorasweep.stats."""
    return evalrows.values({"generations": generations, "references": refs}, GENERATED)


def stop_ids(d: DictConfig, tok) -> list[int]:
    """Token ids that end an answer: EOS and the first token of what follows a response in training."""
    mark = "\x00"
    _, answer = sft_text(d, tok, "", mark)
    end = tok(answer.split(mark, 1)[1], add_special_tokens=False)["input_ids"][:1]
    return sorted({*end, *([tok.eos_token_id] if tok.eos_token_id is not None else [])})


@torch.no_grad()
def generate(model, tok, prompts: list[list[int]], stops: list[int], max_new_tokens: int, batch: int = 32) -> list[str]:
    """Greedy answers, in batches of similar length, left-padded by hand (the collator's tokenizer keeps its side)."""
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tok.pad_token_id
    )
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    for start in range(0, len(order), batch):
        rows = [prompts[i] for i in order[start : start + batch]]
        width = max(map(len, rows))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        new = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)[:, width:].tolist()
        for i, tokens in zip(order[start : start + batch], new):
            end = next((j for j, t in enumerate(tokens) if t in stops), len(tokens))
            out[i] = tok.decode(tokens[:end], skip_special_tokens=True).strip()
    model.train(was_training)
    return out


class GenerateEval(TrainerCallback):
    """After each eval (and the test eval at the end): greedy answers to the first train.generate_samples prompts,
    scored into the metrics (eval_bleu, ...) before the reporting callback hands them on; the answers and their
    references go to `keep` (the trial's per-row eval outputs), a table of the first ones to `on_table`."""

    def __init__(
        self, d: DictConfig, t: DictConfig, tok, parts: dict[str, pd.DataFrame], on_table: Callable, keep: Callable
    ):
        self.tok, self.max_new_tokens, self.on_table, self.keep = tok, int(t.max_new_tokens), on_table, keep
        self.stops = stop_ids(d, tok)
        self.sets = {}
        for split in ("eval", "test"):
            texts, refs = references(d, parts[split], int(t.generate_samples))
            ids = [prompt_ids(d, tok, sft_text(d, tok, p, "")[0], int(d.max_length)) for p in texts]
            self.sets[split] = (texts, ids, refs)

    def on_evaluate(self, args, state, control, model=None, metrics=None, **kw):
        split = "test" if "test_loss" in metrics else "eval"
        texts, ids, refs = self.sets[split]
        start = time.perf_counter()
        answers = generate(model, self.tok, ids, self.stops, self.max_new_tokens)
        metrics.update({f"{split}_{k}": v for k, v in scores(answers, refs).items()})
        self.keep(split, {"generations": answers, "references": refs})
        metrics[f"{split}_generate_runtime"] = time.perf_counter() - start
        rows = list(zip(texts, refs, answers))[:TABLE_ROWS]
        self.on_table(
            {
                "step": [state.global_step] * len(rows),
                "split": [split] * len(rows),
                "prompt": [p for p, _, _ in rows],
                "reference": [" | ".join(r) for _, r, _ in rows],
                "generation": [a for _, _, a in rows],
            }
        )
