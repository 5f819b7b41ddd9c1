"""Train: the transformers Trainer with a LoRA+ optimizer, eval metrics, and callbacks that report each step."""

import math
import tempfile
from typing import Callable

import numpy as np
import torch
from omegaconf import DictConfig
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

from lorasweep.tasks import TASKS, component
from lorasweep.variants import METHODS

OnMetrics = Callable[[dict[str, float], int], None]


def optimizer(model, cfg: DictConfig) -> torch.optim.Optimizer:
    """LoRA+ param groups from PEFT (B's LR = ratio × A's); ratio 1 is plain AdamW with the same groups. PEFT's
    grouping needs no adapter layer, so it also takes a model without one (full fine-tuning, where config.validate
    keeps the ratio at 1): every parameter then trains at train.lr."""
    from peft.optimizers import create_loraplus_optimizer

    name = cfg.train.optim
    if name == "adamw_torch":
        cls = torch.optim.AdamW
    else:
        import bitsandbytes as bnb

        cls = {
            "adamw_8bit": bnb.optim.AdamW8bit,
            "paged_adamw_8bit": bnb.optim.PagedAdamW8bit,
            "paged_adamw_32bit": bnb.optim.PagedAdamW32bit,
        }[name]
    return create_loraplus_optimizer(
        model,
        cls,
        lr=cfg.train.lr,
        loraplus_lr_ratio=float(cfg.adapter.loraplus_ratio),
        loraplus_weight_decay=cfg.train.weight_decay,  # PEFT sets each group's decay from this, not weight_decay
    )


def classification_metrics(pred) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score  # ~0.8 s to import; a causal-LM trial never needs it

    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    y, yhat = pred.label_ids, np.argmax(logits, axis=-1)
    return {"accuracy": float(accuracy_score(y, yhat)), "macro_f1": float(f1_score(y, yhat, average="macro"))}


class Report(TrainerCallback):
    """Hands train loss and eval metrics, named as lorasweep logs them, to each listener."""

    def __init__(self, listeners: list[OnMetrics], perplexity: bool):
        self.listeners, self.perplexity = listeners, perplexity

    def _emit(self, metrics: dict[str, float], step: int) -> None:
        if not metrics:
            return
        for fn in self.listeners:
            fn(metrics, step)

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            self._emit(
                {"train_loss": float(logs["loss"]), "learning_rate": float(logs.get("learning_rate", 0.0))},
                state.global_step,
            )

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        out = {k: float(v) for k, v in (metrics or {}).items() if k.startswith("eval_") and isinstance(v, (int, float))}
        if self.perplexity and "eval_loss" in out:
            out["eval_perplexity"] = math.exp(min(out["eval_loss"], 50.0))  # capped: exp overflows on a diverged run
            metrics["eval_perplexity"] = out["eval_perplexity"]
        timing = ("_runtime", "_samples_per_second", "_steps_per_second")
        self._emit({k: v for k, v in out.items() if not k.endswith(timing)}, state.global_step)


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA reallocates its rank budget after each optimizer step, while the gradients still exist."""

    def on_optimizer_step(self, args, state, control, model=None, **kw):
        model.base_model.update_and_allocate(state.global_step)


def total_steps(cfg: DictConfig, n_train: int) -> int:
    t = cfg.train
    if t.max_steps > 0:
        return int(t.max_steps)
    per_epoch = math.ceil(n_train / (t.batch_size * t.grad_accum))
    return max(1, math.ceil(per_epoch * t.epochs))


def trainer(
    cfg: DictConfig,
    model,
    tok,
    datasets: dict,
    listeners: list[OnMetrics],
    callbacks: tuple = (),
    targets: list[str] = (),
) -> Trainer:
    """The Trainer of a trial; `callbacks` run before the reporting one, so metrics they add are reported. `targets`
    are the resolved adapter targets (a method's TrainingArguments may name them)."""
    t, task, method = cfg.train, TASKS[cfg.model.task], METHODS[cfg.adapter.variant]
    eval_ds = datasets["eval"]
    if t.eval_samples:
        eval_ds = eval_ds.select(range(min(int(t.eval_samples), len(eval_ds))))
    own = method.training_args(cfg.adapter, list(targets)) if method.training_args else {}
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="lorasweep-trainer-"),
        max_steps=total_steps(cfg, len(datasets["train"])),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=task.eval_batch(t.batch_size),
        prediction_loss_only=task.compute_metrics is None,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=float(t.warmup_ratio),  # a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        train_sampling_strategy=t.sampling,  # group_by_length pads ~1.8x less on the tweets, but trained worse there
        eval_strategy="steps",
        eval_steps=t.eval_every,
        logging_steps=max(1, min(10, t.eval_every)),
        save_strategy="no",
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        remove_unused_columns=False,
        **own,
    )
    callbacks = [*callbacks, Report(listeners, perplexity=task.perplexity)] + [component(c)() for c in method.callbacks]
    tr = Trainer(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=eval_ds,
        data_collator=component(task.collator)(tok, **task.collator_kwargs),
        processing_class=tok,
        compute_metrics=component(task.compute_metrics) if task.compute_metrics else None,
        # A method that names its optimizer in TrainingArguments (GaLore) has the Trainer build it.
        optimizers=(None if "optim" in own else optimizer(model, cfg), None),
        callbacks=callbacks,
    )
    tr.remove_callback(PrinterCallback)  # progress goes through the listeners instead
    return tr
