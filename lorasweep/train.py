"""Train: the transformers Trainer with a LoRA+ optimizer, eval metrics, and callbacks that report each step."""

import contextlib
import math
import tempfile
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from omegaconf import DictConfig
from torch.utils.data import SequentialSampler
from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_pt_utils import BatchRebalanceSampler

from lorasweep import data, estimate, evalrows
from lorasweep.config import bf16_capable
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


def classification_outputs(pred) -> dict[str, list]:
    """Per eval row: the predicted class, the label and the example's cross-entropy (the model's loss of that row)."""
    from scipy.special import logsumexp

    logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
    logits, y = np.asarray(logits, dtype=np.float64), np.asarray(pred.label_ids)
    losses = logsumexp(logits, axis=-1) - logits[np.arange(len(y)), y]
    return {"predictions": np.argmax(logits, axis=-1).tolist(), "labels": y.tolist(), "losses": losses.tolist()}


def step_cross_entropy(outputs, labels, num_items_in_batch=None) -> torch.Tensor:
    """A classifier's cross-entropy summed over a device batch's rows and divided by the optimizer step's row count
    (the Trainer counts it over the step's device batches), so each row weighs alike however the step's rows are
    cut (train.sampling=batch_rebalance cuts unequal batches). The model's own loss is a mean per device batch; the
    Trainer passes it the count, which it ignores, and then does not divide by grad_accum either."""
    logits = outputs["logits"]
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), labels.view(-1), reduction="sum")
    return loss / (labels.ne(-100).sum() if num_items_in_batch is None else num_items_in_batch)


def token_losses(logits, labels) -> torch.Tensor:
    """Per row of an eval batch: the sum of its token losses and its token count, with the model's own shift (the
    logit at t predicts the label at t+1). The Trainer keeps these (rows x 2) instead of the batch's logits."""
    logits = logits[0] if isinstance(logits, tuple) else logits
    target = labels[:, 1:]
    sums = [F.cross_entropy(row[:-1].float(), t, ignore_index=-100, reduction="sum") for row, t in zip(logits, target)]
    return torch.stack([torch.stack(sums), (target != -100).sum(-1).to(torch.float32)], dim=1)


def token_loss_outputs(pred) -> dict[str, list]:
    p = np.asarray(pred.predictions, dtype=np.float64)
    return {"losses": p[:, 0].tolist(), "tokens": p[:, 1].tolist()}


class EvalRows(TrainerCallback):
    """Each split's per-row outputs from its latest eval (lorasweep.evalrows), taken where the eval computes them
    (compute_metrics, the generation callback): no extra pass. The metrics of each eval are computed from them, so
    a logged metric and its bootstrap interval rest on the same rows; this replaces the Trainer's eval_loss, a mean
    of batch means, with Σ loss / Σ tokens over the rows."""

    def __init__(self, task: str):
        path = TASKS[task].eval_outputs
        self.outputs_of = component(path) if path else None
        self.pending: dict[str, list] = {}
        self.latest: dict[str, dict[str, list]] = {}  # split -> outputs, what the trial saves

    def compute_metrics(self, pred) -> dict[str, float]:
        self.pending = self.outputs_of(pred)
        return {}  # on_evaluate adds them, with the split's prefix

    def keep(self, split: str, outputs: dict[str, list]) -> None:
        self.latest.setdefault(split, {}).update(outputs)

    def on_evaluate(self, args, state, control, metrics=None, **kw):
        split = "test" if "test_loss" in metrics else "eval"
        metrics.update({f"{split}_{k}": v for k, v in evalrows.values(self.pending).items()})
        self.keep(split, self.pending)
        self.pending = {}


class Report(TrainerCallback):
    """Hands train loss and eval metrics, named as lorasweep logs them, to each listener."""

    def __init__(self, listeners: list[OnMetrics]):
        self.listeners = listeners

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
        timing = ("_runtime", "_samples_per_second", "_steps_per_second")
        self._emit({k: v for k, v in out.items() if not k.endswith(timing)}, state.global_step)


class AdaLoraBudget(TrainerCallback):
    """AdaLoRA reallocates its rank budget after each optimizer step, while the gradients still exist."""

    def on_optimizer_step(self, args, state, control, model=None, **kw):
        model.base_model.update_and_allocate(state.global_step)


class CountedTrainer(Trainer):
    """The Trainer, counting the model's parameters for its FLOP figure once per trial (transformers recounts them,
    a walk of every module, each step, and the count cannot change while the trial trains), with no garbage
    collection at train() start while there is nothing to free, and evaluating each split in its own order with its
    own few padded lengths."""

    _flop_params: int | None = None
    eval_collate = None  # rows -> the collator of one eval pass over them (data.eval_collator); set by trainer()

    def floating_point_ops(self, inputs: dict) -> int:
        name = getattr(self.model, "main_input_name", "input_ids")
        if name not in inputs:
            return 0
        if self._flop_params is None:  # transformers' own count for one token (6 x 1 x the parameters)
            self._flop_params = super().floating_point_ops({name: torch.ones(1)}) // 6
        return 6 * inputs[name].numel() * self._flop_params

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        acc, reset = self.accelerator, self.accelerator.free_memory

        def free_memory(*objects):
            """train() starts by resetting the accelerator: a full gc.collect() (~0.17 s on tiny_llama, 4 % of a
            30-step trial) and, on a GPU, empty_cache(), so the first steps allocate again. A trial's accelerator
            is new; while it holds nothing, there is nothing to free."""
            held = (acc._models, acc._optimizers, acc._schedulers, acc._dataloaders, objects)
            if any(held) or getattr(acc, "deepspeed_engine_wrapped", None) is not None:
                return reset(*objects)
            acc.step = 0
            return []

        acc.free_memory = free_memory

    def get_eval_dataloader(self, eval_dataset=None):
        with self._padded_for(self.eval_dataset if eval_dataset is None else eval_dataset):
            return super().get_eval_dataloader(eval_dataset)

    def get_test_dataloader(self, test_dataset):
        with self._padded_for(test_dataset):
            return super().get_test_dataloader(test_dataset)

    @contextlib.contextmanager
    def _padded_for(self, rows):
        """While a loader over `rows` is made, the collator fitted to them: each eval or test split pads to its own
        few lengths (data.eval_lengths). The Trainer hands one data_collator to every loader it makes."""
        if self.eval_collate is None or not isinstance(rows, Dataset):
            yield
            return
        fitted = self.__dict__.setdefault("_eval_collators", {})
        if id(rows) not in fitted:
            fitted[id(rows)] = (rows, self.eval_collate(rows))  # the rows are kept so that their id stays theirs
        train_collate, self.data_collator = self.data_collator, fitted[id(rows)][1]
        try:
            yield
        finally:
            self.data_collator = train_collate

    def _get_train_sampler(self, train_dataset=None):
        """transformers makes its BatchRebalanceSampler with that class's own seed (42) whatever the trial's, so
        every seed would see one order; it takes the trial's data seed here, as the random sampler does."""
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, BatchRebalanceSampler):
            sampler.seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return sampler

    def _get_eval_sampler(self, eval_dataset):
        """Eval rows in the split's order (data.by_length): with train.sampling=group_by_length transformers would
        shuffle them by the trial's seed, and trials with other seeds could not be compared row by row."""
        if eval_dataset is None or self.args.world_size > 1:
            return super()._get_eval_sampler(eval_dataset)
        return SequentialSampler(eval_dataset)


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
    rows: EvalRows | None = None,
) -> CountedTrainer:
    """The Trainer of a trial; `callbacks` run before the reporting one, so metrics they add are reported. `targets`
    are the resolved adapter targets (a method's TrainingArguments may name them). `rows` keeps the per-row eval
    outputs (a new one when not given)."""
    t, task, method = cfg.train, TASKS[cfg.model.task], METHODS[cfg.adapter.variant]
    own = method.training_args(cfg.adapter, list(targets)) if method.training_args else {}
    args = TrainingArguments(
        output_dir=tempfile.mkdtemp(prefix="lorasweep-trainer-"),
        max_steps=total_steps(cfg, len(datasets["train"])),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=task.eval_batch(t.batch_size),
        prediction_loss_only=task.eval_outputs is None,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=float(t.warmup_ratio),  # a float < 1 is a ratio of the total steps
        weight_decay=t.weight_decay,
        # group_by_length pads ~1.8x less on the tweets, but trained worse there; batch_rebalance keeps each step's rows
        train_sampling_strategy=t.sampling,
        eval_strategy="steps",
        eval_steps=t.eval_every,
        logging_steps=max(1, min(10, t.eval_every)),
        # The filter reads isnan/isinf of each step's loss on the host: two device syncs a step. Unfiltered, a diverged
        # loss shows as nan in the logged mean (and in eval) instead of being replaced by the previous mean.
        logging_nan_inf_filter=False,
        save_strategy="no",
        report_to="none",
        seed=t.seed,
        data_seed=t.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        bf16=estimate.trial_autocast(cfg, bf16_capable()),  # train.mixed_precision; the estimate applies the same rule
        remove_unused_columns=False,
        # On a GPU, batches come from pinned memory; copying them to the device need not block the host, as a bare
        # loop's .to(device, non_blocking=True) does not. (A CPU has nothing to copy, and transformers warns.)
        accelerator_config={"non_blocking": torch.cuda.is_available()},
        **own,
    )
    rows = rows or EvalRows(cfg.model.task)
    callbacks = [*callbacks, rows, Report(listeners)] + [component(c)() for c in method.callbacks]
    tr = CountedTrainer(
        model=model,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["eval"],  # capped to train.eval_samples and sorted by length (data.by_length)
        data_collator=data.collator(cfg.data, cfg.model.task, tok),
        processing_class=tok,
        compute_metrics=rows.compute_metrics if task.eval_outputs else None,
        preprocess_logits_for_metrics=component(task.preprocess_logits) if task.preprocess_logits else None,
        compute_loss_func=component(task.loss) if task.loss else None,
        # A method that names its optimizer in TrainingArguments (GaLore) has the Trainer build it.
        optimizers=(None if "optim" in own else optimizer(model, cfg), None),
        callbacks=callbacks,
    )
    tr.eval_collate = lambda rows: data.eval_collator(cfg.data, cfg.model.task, tok, rows, args.eval_batch_size)
    tr.remove_callback(PrinterCallback)  # progress goes through the listeners instead
    return tr
