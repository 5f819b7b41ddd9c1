"""One side of a fair trial-vs-bare measurement, in a process of its own (the drivers start one per side and run).

    python benchmarks/fair.py trial|bare OUT.json [--count] [--threads N] -- OVERRIDES...

Both sides train on the identical prebuilt batches: the train rows in one seeded order, collated ahead of the timed
region by the project's own collator (lorasweep.data.collator, so data.pad_to_multiple_of applies), the same
padded lengths in the same order (each side writes a fingerprint of them). Both evaluate the same eval rows once,
at the last step, and the test rows once after training. Both use the project's optimizer (LoRA+ groups from
PEFT) and the same scheduler, gradient clipping, dropout and LoRA init.

- trial: `lorasweep.trial.run_trial`, the whole trial path, in an MLflow store and experiment made before the clock
  starts (as a sweep's driver makes them; store_s says what that took); `lorasweep.train.trainer` is wrapped only
  to hand the Trainer the prebuilt batches through its own accelerate-prepared DataLoader (pinned as the Trainer
  pins) and to add a clock callback.
- bare: the same model folder loaded with transformers, PEFT's get_peft_model, a plain torch loop.

--count runs a counting pass (benchmarks/counting.py) around train() and cProfile's call counts; timings from such
a run are not comparable and are not reported.
"""

import argparse
import contextlib
import cProfile
import hashlib
import json
import math
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from counting import Copies, Count, summary  # noqa: E402

from lorasweep import data  # noqa: E402
from lorasweep.config import compose  # noqa: E402
from lorasweep.tasks import TASKS  # noqa: E402

WARM = 2  # steps left out of per-step figures: the optimizer state and first kernels are made there


def prebuilt(cfg, tok, datasets) -> dict[str, list[dict]]:
    """Train batches (seeded order, steps x batch rows) collated by the project's collator, eval batches (the split
    as the trial holds it: train.eval_samples rows, longest first) and test batches, each collated by the collator
    the trial fits to that split (data.eval_collator), as plain dicts of tensors."""
    bs, steps = int(cfg.train.batch_size), int(cfg.train.max_steps)
    train = datasets["train"]
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(int(cfg.seed))).tolist()
    rows = [order[i % len(order)] for i in range(steps * bs)]
    ebs = TASKS[cfg.model.task].eval_batch(bs)

    def chunks(ds, idx, size, collate):
        return [dict(collate([ds[r] for r in idx[i : i + size]])) for i in range(0, len(idx), size)]

    def passes(ds):
        return chunks(ds, list(range(len(ds))), ebs, data.eval_collator(cfg.data, cfg.model.task, tok, ds, ebs))

    return {
        "train": chunks(train, rows, bs, data.collator(cfg.data, cfg.model.task, tok)),
        "eval": passes(datasets["eval"]),
        "test": passes(datasets["test"]),
    }


def fingerprint(batches: list[dict]) -> str:
    h = hashlib.sha256()
    for b in batches:
        for k in sorted(b):
            h.update(k.encode() + str(tuple(b[k].shape)).encode() + b[k].numpy().tobytes())
    return h.hexdigest()[:16]


class Clock:
    """Wall times of phase marks, forwarded to a counting pass when one runs. On a GPU, synchronised at the first
    timed step's start and the last step's end only, so the steady window holds the device's work."""

    def __init__(self, count: Count | None, steps: int):
        self.count, self.steps, self.t = count, steps, {}
        self.cuda = torch.cuda.is_available()

    def mark(self, label: str, phase: bool = True) -> None:
        if self.cuda and label in (f"step{WARM + 1}", f"end{self.steps}"):
            torch.cuda.synchronize()
        self.t[label] = time.perf_counter()
        if phase and self.count is not None:
            self.count.mark(label)

    def figures(self, tokens: list[int]) -> dict:
        t, n = self.t, self.steps
        steps = [t[f"step{k + 1}"] - t[f"step{k}"] for k in range(1, n)] + [t[f"end{n}"] - t[f"step{n}"]]
        steady = steps[WARM:]
        window = t[f"end{n}"] - t[f"step{WARM + 1}"]
        return {
            "setup_s": t["step1"] - t["train"],
            "teardown_s": t["return"] - t[f"end{n}"] - (t.get("eval_done", 0.0) - t.get("eval", 0.0)),
            "eval_s": t.get("eval_done", 0.0) - t.get("eval", 0.0),
            "train_call_s": t["return"] - t["train"],
            "step_s": steps,
            "step_median_s": sorted(steady)[len(steady) // 2],
            "step_mean_s": sum(steady) / len(steady),
            "tokens_per_s_steady": sum(tokens[WARM:]) / window,
            "tokens_per_s_train_call": sum(tokens) / (t["return"] - t["train"]),
        }


@contextlib.contextmanager
def counted(count: Count | None, prof: cProfile.Profile | None):
    if count is None:
        yield
        return
    prof.enable()
    try:
        with count, Copies(count):
            yield
    finally:
        prof.disable()


def profile_rows(prof: cProfile.Profile, steps: int) -> dict:
    """Python functions called during train() at least once per step: calls and cumulative seconds (the drivers
    diff the two sides: what the trial calls and a bare loop does not)."""
    st = pstats.Stats(prof)
    rows = {}
    for (file, line, fn), (cc, nc, tt, ct, _) in st.stats.items():
        if nc >= steps or ct > 0.05:
            rows[f"{file.split('site-packages/')[-1].split('/wt-speed/')[-1]}:{line}({fn})"] = [nc, round(ct, 4)]
    return rows


def trial_side(ov: list[str], count: Count | None) -> dict:
    import gc

    import mlflow

    import lorasweep.train
    from lorasweep import tracking
    from lorasweep.trial import run_trial

    gc.freeze()  # as `lorasweep trial` and the warm workers do after their imports
    cfg = compose(ov)
    steps = int(cfg.train.max_steps)
    clock, rec = Clock(count, steps), {}
    prof = cProfile.Profile() if count is not None else None
    make = lorasweep.train.trainer

    def trainer(cfg_, model_, tok, datasets, *a, **kw):
        from torch.utils.data import DataLoader
        from transformers import TrainerCallback

        tr = make(cfg_, model_, tok, datasets, *a, **kw)
        rec["trainer_dir"] = tr.args.output_dir
        b = prebuilt(cfg_, tok, datasets)
        rec["fingerprint"] = fingerprint(b["train"])
        rec["tokens"] = [int(x["attention_mask"].sum()) for x in b["train"]]
        rec["padded_lengths"] = [int(x["input_ids"].shape[1]) for x in b["train"]]
        tr.get_train_dataloader = lambda: tr.accelerator.prepare(
            DataLoader(b["train"], batch_size=1, collate_fn=_first, pin_memory=tr.args.dataloader_pin_memory)
        )

        class Marks(TrainerCallback):
            def on_step_begin(self, args, state, control, **k):
                clock.mark(f"step{state.global_step + 1}")

            def on_step_end(self, args, state, control, **k):
                clock.mark(f"end{state.global_step}", phase=False)

            def on_epoch_end(self, args, state, control, **k):
                clock.mark("teardown")

        tr.add_callback(Marks())
        evaluate, train = tr.evaluate, tr.train

        def marked_evaluate(*a, **k):
            if "eval" in clock.t:  # the test eval, after train()
                return evaluate(*a, **k)
            back = count.step if count is not None else None
            clock.mark("eval")
            out = evaluate(*a, **k)
            clock.mark("eval_done", phase=False)
            if count is not None:
                count.mark(back)  # the rest of the last step (its logging) is still that step's
            return out

        def marked_train(*a, **k):
            clock.mark("train")
            with counted(count, prof):
                out = train(*a, **k)
            clock.mark("return", phase=False)
            return out

        tr.evaluate, tr.train = marked_evaluate, marked_train
        return tr

    lorasweep.train.trainer = trainer
    # The store and experiment exist before the clock starts, as they do for every trial of a sweep (its driver
    # makes them) and for every trial after a store's first: making an sqlite store runs its migrations once.
    t0 = time.perf_counter()
    mlflow.set_tracking_uri(tracking.tracking_uri(cfg))
    tracking.experiment(cfg)
    rec["store_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    s = run_trial(cfg)
    rec["wall_s"] = time.perf_counter() - t0
    left = rec["trainer_dir"]
    rec["trainer_dir_left_after_trial"] = os.path.isdir(left)
    if os.path.isdir(left) and not os.listdir(left):  # reported, then removed, so repetitions do not pile up
        os.rmdir(left)
    rec["train_loss"] = float(s["train_loss_final"])
    rec["eval_loss"] = float(s.get("eval_loss", float("nan")))
    return _finish(rec, clock, count, prof, steps)


def bare_side(ov: list[str], count: Count | None) -> dict:
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, get_scheduler

    from lorasweep import base, estimate, model, train
    from lorasweep.config import bf16_capable

    cfg = compose(ov)  # the trial side composes before its clock too
    t0 = time.perf_counter()
    steps, dev = int(cfg.train.max_steps), torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = estimate.trial_autocast(cfg, bf16_capable())  # the trial's Trainer autocasts where this says so

    def amp():
        return torch.autocast("cuda", torch.bfloat16) if bf16 else contextlib.nullcontext()

    clock, rec = Clock(count, steps), {}
    prof = cProfile.Profile() if count is not None else None
    parts = data.splits(cfg)
    path = base.folder(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    datasets = data.tokenize(cfg, parts, tok, None)
    targets, _ = model.targets(cfg, None)
    qc = model.quant_config(cfg)
    placed = {"device_map": {"": 0}} if qc is not None and dev.type == "cuda" else {}
    net = AutoModelForCausalLM.from_pretrained(
        path, dtype=base.DTYPES[cfg.model.dtype], quantization_config=qc, **placed
    )
    if qc is not None:
        if dev.type == "cpu":
            model.keep_4bit_training_layout(net)
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
    torch.manual_seed(cfg.seed)  # the adapter's init, as lorasweep.model.load seeds it
    net = get_peft_model(net, model.peft_config(cfg, targets, steps))
    net = net if qc is not None else net.to(dev)  # a quantized model is placed at load
    opt = train.optimizer(net, cfg)  # PEFT's LoRA+ groups, the same call the trial makes
    warmup = math.ceil(steps * float(cfg.train.warmup_ratio))
    sched = get_scheduler(cfg.train.lr_scheduler, opt, num_warmup_steps=warmup, num_training_steps=steps)
    b = prebuilt(cfg, tok, datasets)
    if dev.type == "cuda":
        b = {k: [{n: t.pin_memory() for n, t in x.items()} for x in v] for k, v in b.items()}
    rec["fingerprint"] = fingerprint(b["train"])
    rec["autocast"] = bf16
    rec["tokens"] = [int(x["attention_mask"].sum()) for x in b["train"]]
    rec["padded_lengths"] = [int(x["input_ids"].shape[1]) for x in b["train"]]
    params = [p for p in net.parameters() if p.requires_grad]

    def on(x: dict) -> dict:
        return {k: v.to(dev, non_blocking=True) for k, v in x.items()}

    def evaluate(batches: list[dict]) -> float:
        net.eval()
        with torch.no_grad(), amp():
            total = sum(net(**on(x)).loss for x in batches)
        net.train()
        return float(total / len(batches))

    clock.mark("train")
    with counted(count, prof):
        net.train()
        loss_sum = torch.zeros((), device=dev)
        for step, x in enumerate(b["train"], start=1):
            clock.mark(f"step{step}")
            with amp():
                loss = net(**on(x)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)  # the Trainer's max_grad_norm default
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += loss.detach()
            clock.mark(f"end{step}", phase=False)
        clock.mark("teardown")
        clock.mark("eval")
        rec["eval_loss"] = evaluate(b["eval"])
        clock.mark("eval_done", phase=False)
    clock.mark("return", phase=False)
    rec["train_loss"] = float(loss_sum) / steps
    evaluate(b["test"])
    with tempfile.TemporaryDirectory() as tmp:
        net.save_pretrained(tmp, safe_serialization=True)
    rec["wall_s"] = time.perf_counter() - t0
    return _finish(rec, clock, count, prof, steps)


def _first(items):
    return items[0]


def _finish(rec: dict, clock: Clock, count: Count | None, prof, steps: int) -> dict:
    rec.update(clock.figures(rec["tokens"]))
    if count is not None:
        rec["count"] = summary(count, WARM)
        rec["profile"] = profile_rows(prof, steps)
    if torch.cuda.is_available():
        rec["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
        rec["gpu"] = torch.cuda.get_device_name(0)
    rec["torch"] = torch.__version__
    rec["threads"] = torch.get_num_threads()
    return rec


def launch(
    side: str, out: Path, overrides: list[str], count: bool = False, threads: int | None = None, timeout=None
) -> dict:
    """Run one side in a fresh process; its record."""
    import subprocess

    cmd = [sys.executable, __file__, side, str(out), *(["--count"] if count else [])]
    cmd += [*(["--threads", str(threads)] if threads else []), "--", *overrides]
    quiet = subprocess.DEVNULL if not os.environ.get("BENCH_VERBOSE") else None
    subprocess.run(cmd, check=True, stdout=quiet, timeout=timeout)
    return json.loads(out.read_text())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("side", choices=["trial", "bare"])
    ap.add_argument("out")
    ap.add_argument("--count", action="store_true")
    ap.add_argument("--threads", type=int)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a = ap.parse_args(argv[:cut])
    a.overrides = argv[cut + 1 :]
    if a.threads:
        torch.set_num_threads(a.threads)
    store = tempfile.mkdtemp(prefix="lorasweep-fair-")
    os.chdir(store)  # MLflow's default artifact root (./mlruns) lands in the tmp folder
    ov = [*a.overrides, f"tracking.uri=sqlite:///{store}/mlflow.db", "tracking.experiment=fair"]
    count = Count() if a.count else None
    rec = (trial_side if a.side == "trial" else bare_side)(ov, count)
    rec.update(side=a.side, overrides=a.overrides, counted=a.count)
    Path(a.out).write_text(json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
