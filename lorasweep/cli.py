"""CLI: `lorasweep {trial,sweep,estimate,report}`, one argparse parser with a subcommand each. Bad input is one
line naming the field, the value and what is allowed, and exit code 2."""

import argparse
import os
import sys
from pathlib import Path

from lorasweep.errors import ConfigError

OVERRIDES = (
    "Hydra overrides, e.g. adapter.r=16 'adapter.targets=[q,v]' quant=nf4 (any config field; +key=value adds one)"
)


def _trial(args: argparse.Namespace) -> int:
    import gc

    from lorasweep.config import compose
    from lorasweep.trial import run_trial

    gc.freeze()  # as a warm worker does (lorasweep.worker.warm): the Trainer's gc.collect skips the imports' objects
    cfg = compose(args.overrides)

    def progress(metrics: dict[str, float], step: int) -> None:
        if any(k.startswith("eval_") for k in metrics) or step % 50 == 0:
            print(
                f"step {step:>5}  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "learning_rate"),
                flush=True,
            )

    summary = run_trial(cfg, listeners=(progress,))
    keys = [k for k in summary if k.startswith(("eval_", "test_"))] + [
        "trainable_params",
        "train_runtime_s",
        "samples_per_s",
        "peak_memory_mb",
        "effective_rank_mean",
    ]
    for k in keys:
        if k in summary:
            v = summary[k]
            print(f"{k:>24}: {v:.4f}" if isinstance(v, float) else f"{k:>24}: {v}")
    print(f"{'mlflow run':>24}: {summary['run_id']}")
    if summary.get("adapter_uri"):
        print(f"{'adapter':>24}: {summary['adapter_uri']}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from lorasweep.dryrun import dry_run
    from lorasweep.sweep import cli

    return dry_run(args.overrides) if args.dry_run else cli(args.overrides)


def _estimate(args: argparse.Namespace) -> int:
    from lorasweep.estimate import cli

    return cli(args.overrides + (["--json"] if args.json else []))


def _report(args: argparse.Namespace) -> int:
    if args.rejudge:
        from lorasweep.analysis import rejudge

        return rejudge.cli([Path(d) for d in args.rejudge])
    from lorasweep.analysis.report import cli

    return cli(args.args)


def _print_config(args: argparse.Namespace) -> int:
    """`--cfg job`, as in Hydra: the composed config, resolved, and nothing run."""
    from omegaconf import OmegaConf

    from lorasweep.config import compose

    print(OmegaConf.to_yaml(compose(args.overrides), resolve=True), end="")
    return 0


def _fields(args: argparse.Namespace) -> int:
    """Every config field with its allowed values, default and help: the schema's own words."""
    from lorasweep import schema

    print(schema.markdown() if args.markdown else schema.listing(), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="lorasweep", description="Hyperparameter sweeps and experiment tracking for LoRA and QLoRA fine-tuning."
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="{trial,sweep,estimate,report,fields}")

    def command(name: str, run, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(run=run)
        return p

    for name, run, help in (
        ("trial", _trial, "One PEFT fine-tune from the config, tracked in MLflow."),
        ("sweep", _sweep, "A search over the config: sweep=<name> picks sweeps/<name>.yaml."),
        ("estimate", _estimate, "Trainable parameters and GPU memory of one config."),
    ):
        p = command(name, run, help)
        p.add_argument("overrides", nargs="*", help=OVERRIDES)
        p.add_argument("--cfg", choices=["job"], help="print the composed config and exit, as Hydra's --cfg job")
        if name == "sweep":
            p.add_argument(
                "--dry-run",
                action="store_true",
                help="print the space, the trial budget, and each sampled config's estimate and GPU share; "
                "nothing trains, nothing is tracked",
            )
        if name == "estimate":
            p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = command(
        "report",
        _report,
        "Tables and figures of a tracked sweep: lorasweep report SWEEP [--out DIR] [--no-log]; "
        "lorasweep report --rejudge DIR... judges a saved compare report's verdicts again from its own tables.",
    )
    p.add_argument(
        "args",
        nargs=argparse.REMAINDER,
        help="a sweep name (its latest run), a sweep id or a parent run id",
    )
    p.add_argument(
        "--rejudge",
        nargs="+",
        metavar="DIR",
        help="saved compare reports (e.g. docs/results/*/ with arms.csv): their verdicts again under the current rule",
    )
    p = command("fields", _fields, "Every config field: its allowed values, default and help.")
    p.add_argument("--markdown", action="store_true", help="a Markdown table (the README's field reference)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)  # exits 2 with usage on a bad command
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _print_config(args) if getattr(args, "cfg", None) else args.run(args)
    except ConfigError as e:
        print(f"lorasweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
