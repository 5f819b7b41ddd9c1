"""CLI: `lorasweep trial|sweep|estimate [hydra overrides]` and `lorasweep report SWEEP`; bad input is one line, exit 2."""

import os
import sys

from lorasweep.errors import ConfigError

USAGE = "usage: lorasweep {trial,sweep,estimate} [hydra overrides ...] | lorasweep report SWEEP"


def _trial(argv: list[str]) -> int:
    from lorasweep.config import compose
    from lorasweep.trial import run_trial

    cfg = compose(argv)

    def progress(metrics: dict[str, float], step: int) -> None:
        if any(k.startswith("eval_") for k in metrics) or step % 50 == 0:
            print(f"step {step:>5}  " + "  ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k != "learning_rate"), flush=True)

    summary = run_trial(cfg, listeners=(progress,))
    keys = [k for k in summary if k.startswith(("eval_", "test_"))] + [
        "trainable_params", "train_runtime_s", "samples_per_s", "peak_memory_mb", "effective_rank_mean"]
    for k in keys:
        if k in summary:
            v = summary[k]
            print(f"{k:>24}: {v:.4f}" if isinstance(v, float) else f"{k:>24}: {v}")
    print(f"{'mlflow run':>24}: {summary['run_id']}")
    if summary.get("adapter_uri"):
        print(f"{'adapter':>24}: {summary['adapter_uri']}")
    return 0


def _sweep(argv: list[str]) -> int:
    from lorasweep.sweep import cli

    return cli(argv)


def _estimate(argv: list[str]) -> int:
    from lorasweep.estimate import cli

    return cli(argv)


def _report(argv: list[str]) -> int:
    from analysis.report import cli

    return cli(argv)


COMMANDS = {"trial": _trial, "sweep": _sweep, "estimate": _estimate, "report": _report}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(USAGE, file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return COMMANDS[argv[0]](argv[1:])
    except ConfigError as e:
        print(f"lorasweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
