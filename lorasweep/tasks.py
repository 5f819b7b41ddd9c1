"""The task registry: what a trial does differently for a classifier and for a causal LM, in one entry per task.

Every module reads the entry of `cfg.model.task` (model, data, train, estimate, after, trial) instead of spelling a
task name. No torch here: the sweep driver reads the metric names. Code-valued parts (collator, encode, metrics)
are dotted paths, loaded where a trial runs (`component`), as torchtune's `_component_`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Scores of greedy generations against the references (lorasweep/generate.py owns the scoring).
GENERATED = ("exact_match", "rougeL", "bleu", "chrf")


@dataclass(frozen=True)
class Task:
    help: str
    roles: tuple[str, str]  # the data fields naming the input column and the target column
    auto_model: str  # the transformers Auto class that loads the model with its head
    peft_task_type: str  # the peft.TaskType member
    eval_metrics: tuple[str, ...]  # what every eval reports (train.generate_eval adds the generation scores)
    test_metrics: tuple[str, ...]  # what the test split reports at the end
    default_metric: tuple[str, str]  # (metric, mode) a study of this task ranks by, unless told
    labels: bool  # a label set read from the train split, a new classification head
    perplexity: bool  # eval_perplexity from eval_loss; general-text forgetting can be measured
    generation: bool  # answers can be generated (train.generate_eval)
    unquantized_heads: tuple[str, ...]  # task heads bitsandbytes must leave in full precision
    logit_copies: int  # estimator: bytes per vocab entry per token at the loss peak (0: no vocab-wide logits)
    eval_batch: Callable[[int], int]  # the eval batch size from train.batch_size
    encode: str  # dotted path of `f(data_cfg, tok, df, label_names) -> (rows, lost)`
    dropped: str  # the metric prefix counting the rows `encode` loses (lorasweep.data.WHY)
    collator: str  # dotted path of the data collator class, called with (tok, **collator_kwargs)
    collator_kwargs: dict[str, Any] = field(default_factory=dict)
    # dotted path of `f(EvalPrediction) -> per-row outputs` (lorasweep.evalrows), the eval's metrics are computed
    # from; None keeps only the Trainer's loss
    eval_outputs: str | None = None
    preprocess_logits: str | None = None  # dotted path of the Trainer's preprocess_logits_for_metrics, per eval batch
    # dotted path of the Trainer's compute_loss_func, where the model's own loss is a mean per device batch: then
    # gradient accumulation would weigh rows by their batch's size (None: the model divides by the step's count)
    loss: str | None = None


TASKS: dict[str, Task] = {
    "seq_cls": Task(
        help="sequence classification: text in, one label out (a new head on the base)",
        roles=("text_column", "label_column"),
        auto_model="AutoModelForSequenceClassification",
        peft_task_type="SEQ_CLS",
        eval_metrics=("eval_loss", "eval_accuracy", "eval_macro_f1"),
        test_metrics=("test_loss", "test_accuracy", "test_macro_f1"),
        default_metric=("eval_macro_f1", "max"),
        labels=True,
        perplexity=False,
        generation=False,
        unquantized_heads=("classifier", "pooler", "score"),
        logit_copies=0,
        eval_batch=lambda b: max(b, 64),  # a classifier's logits are tiny: evaluate in bigger batches
        encode="lorasweep.data.encode_classes",
        dropped="unseen_label_rows",
        collator="transformers.DataCollatorWithPadding",
        eval_outputs="lorasweep.train.classification_outputs",
        loss="lorasweep.train.step_cross_entropy",
    ),
    "causal_lm": Task(
        help="supervised fine-tuning of a causal LM: prompt in, response out, the loss on the response only",
        roles=("prompt_column", "response_column"),
        auto_model="AutoModelForCausalLM",
        peft_task_type="CAUSAL_LM",
        eval_metrics=("eval_loss", "eval_perplexity", *(f"eval_{n}" for n in GENERATED)),
        test_metrics=("test_loss", *(f"test_{n}" for n in GENERATED)),
        default_metric=("eval_loss", "min"),
        labels=False,
        perplexity=True,
        generation=True,
        unquantized_heads=(),
        # fp32 log-softmax out, its grad, the logits grad
        logit_copies=12,
        # eval logits are batch x length x vocab (64 x 128 x 262k fp32 = 8.6 GB for Gemma 3): the training batch
        eval_batch=lambda b: b,
        encode="lorasweep.data.encode_sft",
        dropped="response_cut_rows",
        collator="transformers.DataCollatorForSeq2Seq",
        collator_kwargs={"padding": True, "label_pad_token_id": -100},
        eval_outputs="lorasweep.train.token_loss_outputs",
        preprocess_logits="lorasweep.train.token_losses",  # per-row loss sums, not the eval set's logits
    ),
}


DEFAULT = "causal_lm"  # model.task of a preset that names none: most presets are causal LMs


def component(path: str):
    """The object a dotted path names (`package.module.name`), imported on first use."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)
