"""Trial: one PEFT fine-tune (or full fine-tune) from a config, top to bottom — validate, load, train, measure,
track."""

import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from lorasweep import after, data, estimate, evalrows, generate, measure, model, tracking, train
from lorasweep.config import validate
from lorasweep.targets import family
from lorasweep.tasks import TASKS
from lorasweep.train import OnMetrics


def check(cfg: DictConfig) -> tuple[dict, list | None, list[str], str]:
    """The fields, the data (columns, sizes against the table) and the target modules: raises the first ConfigError.
    Returns the splits, the labels, the resolved targets and the model type."""
    validate(cfg)
    parts = data.splits(cfg)
    labels = data.labels(cfg, parts)
    targets, model_type = model.targets(cfg, len(labels) if labels else None)
    return parts, labels, targets, model_type


def run_trial(cfg: DictConfig, listeners: tuple[OnMetrics, ...] = (), run_id: str | None = None) -> dict[str, object]:
    """Run one trial; returns its final metrics, run id and adapter location. Bad input raises ConfigError
    before any MLflow run exists. A sweep passes the run_id of the child run its driver created."""
    # 1. Everything that can be wrong with the input, before a model loads or a run starts.
    parts, labels, targets, model_type = check(cfg)

    with (
        tracking.run(cfg, run_id=run_id, tags={"device": tracking.device()}) as active,
        tempfile.TemporaryDirectory(prefix="lorasweep-trial-") as tmp,
    ):
        out = Path(tmp)
        mlflow.log_params(tracking.flatten(cfg))
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
        mlflow.log_artifact(str(out / "config.yaml"))
        tracking.log_splits(cfg, parts)
        mlflow.log_dict({"adapter.targets": list(cfg.adapter.targets), "resolved": targets}, "targets.json")

        # 2. Model and data.
        measure.reset_peak_memory()
        steps = train.total_steps(cfg, len(parts["train"]))
        tuned, tok = model.load(cfg, targets, steps, labels)  # the PEFT model, or for full the base model itself
        # What spectra measure training against: PiSSA starts from B0·A0 ≠ 0, full from the targets' weights W0.
        init = measure.snapshot(tuned, targets) if cfg.tracking.spectra else {}
        before = after.forgetting_before(cfg, tuned, tok)  # the base's general-text perplexity (cached)
        datasets = data.tokenize(cfg, parts, tok, labels)
        lost = data.notes(cfg, parts, tok, labels)  # unseen labels, cut responses: said once, logged per split
        mlflow.log_metrics(lost)
        for line in data.warning_lines(lost):
            print(line, file=sys.stderr, flush=True)
        sizes = {**model.sizes(tuned, targets), **estimate.vram_mb(cfg)}
        mlflow.log_metrics(sizes)

        # 3. Train, reporting each log and eval step to MLflow and to any listener (a sweep's scheduler).
        latest: dict[str, float] = {}
        # Written by MLflow's logging thread, not the training one (a write to the store takes ~17 ms here, more
        # through a sweep's log server); waited on below, and ending the run drains what a failure leaves queued.
        writes: list = []

        def log(metrics: dict[str, float], step: int) -> None:
            writes.append(mlflow.log_metrics(metrics, step=step, synchronous=False))
            latest.update(metrics)

        kept = train.EvalRows(cfg.model.task)  # each split's per-row outputs of its latest eval
        scored = (
            [generate.GenerateEval(cfg.data, cfg.train, tok, parts, tracking.log_generations, kept.keep)]
            if cfg.train.generate_eval
            else []
        )
        trainer = train.trainer(cfg, tuned, tok, datasets, [log, *listeners], scored, targets, kept)
        mlflow.set_tags(  # what train.mixed_precision and the data's padding chose where they say auto
            {
                "mixed_precision": "bf16" if trainer.args.bf16 else "no",
                **{k: str(data.padding(cfg.data, k)) for k in data.GPU_PADDING},
            }
        )
        start = time.perf_counter()
        result = trainer.train()
        runtime = time.perf_counter() - start
        evaluated = [h["step"] for h in trainer.state.log_history if "eval_loss" in h]
        if evaluated[-1:] != [trainer.state.global_step]:  # transformers 5 evaluates at the last step itself
            trainer.evaluate()  # the last step always has an eval, so the final eval metric is the trial's result
        final = {k: v for k, v in latest.items() if k.startswith("eval_")}
        test = trainer.evaluate(datasets["test"], metric_key_prefix="test")
        test = {k: float(v) for k, v in test.items() if k in TASKS[cfg.model.task].test_metrics}
        # How far to trust them: a 95 % interval over the eval rows of each metric; the rows themselves, for a paired
        # comparison with another trial on the same rows (lorasweep.analysis.summary.eval_words).
        mlflow.log_dict(kept.latest, evalrows.FILE)
        ci = evalrows.intervals(kept.latest, [*final, *test])
        n_tokens = sum(len(ids) for ids in datasets["train"]["input_ids"]) / max(1, len(datasets["train"]))
        samples = trainer.state.global_step * cfg.train.batch_size * cfg.train.grad_accum
        summary = {
            **final,
            **test,
            **ci,
            "train_loss_final": float(result.training_loss),
            "train_runtime_s": runtime,
            "samples_per_s": samples / runtime,
            "tokens_per_s": samples * n_tokens / runtime,
            **measure.peak_memory_mb(),
            **sizes,
        }

        # 4. What the adapter learned: the spectrum of each module's update (IA3 has none: a tag says why).
        if cfg.tracking.spectra:
            rows = measure.spectra(tuned, family(model_type), init=init)
            summary.update(measure.aggregate(rows))
            for f in measure.write_spectra(rows, out) if rows else []:
                mlflow.log_artifact(str(f), artifact_path="spectra")
            mlflow.set_tags(measure.spectra_tags(tuned))

        # 5. What it is worth afterwards: size and rank for serving, merging it into the base, forgetting. Full
        # fine-tuning saves the whole model: its size is the honest cost.
        tuned.save_pretrained(out / "adapter", safe_serialization=True)
        summary.update(after.serving(cfg, tuned, out / "adapter"))
        merged, why_not = after.merge_check(cfg, tuned, trainer.get_eval_dataloader(), out / "adapter")
        summary.update(merged)
        mlflow.set_tags(why_not)
        summary.update(after.forgetting(cfg, tuned, tok, before))
        for w in writes:
            w.wait()  # every step's metrics are in the store, or the trial fails saying which write failed
        mlflow.log_metrics({k: v for k, v in summary.items() if k not in latest})  # the evals logged theirs
        if cfg.tracking.save_adapter:
            mlflow.log_artifacts(str(out / "adapter"), artifact_path="adapter")
        summary["run_id"] = active.info.run_id
        summary["adapter_uri"] = f"{active.info.artifact_uri}/adapter" if cfg.tracking.save_adapter else None
        summary["steps"] = trainer.state.global_step
    shutil.rmtree(trainer.args.output_dir, ignore_errors=True)  # the Trainer's scratch folder: nothing is kept there
    model.release(cfg, tuned, tok, labels)  # a warm worker's next trial may reuse the base model
    return summary
