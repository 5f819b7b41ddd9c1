"""GPU measurements of `lorasweep trial` (run on the accelerator machine; see benchmarks/gpu_run.sh).

    python benchmarks/bench_gpu.py materialize MODEL...          build the random-weight models (needs torch/omegaconf only)
    python benchmarks/bench_gpu.py trial NAME OUT.json OVERRIDES  one `lorasweep trial` (the CLI entry point, in this
                                                                 process), plus the padded batch shapes it trained on
    python benchmarks/bench_gpu.py bare NAME OUT.json OVERRIDES   the same config through a bare PEFT + torch loop
                                                                 (no Trainer, no MLflow): tokens/s and peak memory

Each measurement runs in a fresh process, so torch.cuda.max_memory_allocated() is that run's peak.
Environment: LORASWEEP_CACHE (where models are built), HF_HUB_OFFLINE=1, MLFLOW tracking to a tmp sqlite (override).
"""

import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
TOKENIZER = os.environ.get("BENCH_TOKENIZER", "/tmp/tok")  # the MiniLM tokenizer files, carried (no 88 MB package)


def materialize(names: list[str]) -> None:
    from omegaconf import OmegaConf

    from lorasweep import model

    for name in names:
        m = OmegaConf.load(REPO / "conf" / "model" / f"{name}.yaml")
        m.tokenizer = TOKENIZER
        t = time.perf_counter()
        path = model._materialize_config(m)
        print(f"materialized {name} -> {path} in {time.perf_counter() - t:.1f}s", flush=True)


def _gpu() -> dict:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda}


def trial(name: str, out: str, overrides: list[str]) -> None:
    """`lorasweep trial OVERRIDES` through lorasweep.cli.main; the summary and batch shapes are captured."""
    import torch
    from transformers import DataCollatorForSeq2Seq

    import lorasweep.trial
    from lorasweep import cli

    shapes: list[list[int]] = []
    collate = DataCollatorForSeq2Seq.__call__

    def recording(self, features, *a, **kw):
        batch = collate(self, features, *a, **kw)
        shapes.append(list(batch["input_ids"].shape))
        return batch

    DataCollatorForSeq2Seq.__call__ = recording
    captured: dict = {}
    run_trial = lorasweep.trial.run_trial

    def capture(*a, **kw):
        captured.update(run_trial(*a, **kw))
        return captured

    lorasweep.trial.run_trial = capture
    t = time.perf_counter()
    rc = cli.main(["trial", *overrides])
    wall = time.perf_counter() - t
    steps = int(captured.get("steps", 0))
    train_shapes = shapes[:steps]
    rec = {
        "name": name, "command": "lorasweep trial " + " ".join(overrides), "rc": rc, "wall_s": wall,
        "summary": {k: v for k, v in captured.items() if isinstance(v, (int, float, str)) or v is None},
        "train_batch_shapes_max_seq": max((s[1] for s in train_shapes), default=None),
        "train_batch_shapes_mean_seq": sum(s[1] for s in train_shapes) / max(1, len(train_shapes)),
        "all_batch_max_seq": max((s[1] for s in shapes), default=None),
        "cuda_max_allocated_mb_end": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        **_gpu(),
    }
    Path(out).write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: rec["summary"].get(k) for k in ("peak_memory_mb", "peak_reserved_mb", "tokens_per_s",
                                                         "train_runtime_s", "trainable_params", "train_loss_final")}))


def bare(name: str, out: str, overrides: list[str]) -> None:
    """The same model folder, data, tokenization, batch size and steps: a plain PEFT + torch loop."""
    import torch
    from peft import get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lorasweep import data, model
    from lorasweep.config import compose

    cfg = compose(overrides)
    t0 = time.perf_counter()
    parts = data.splits(cfg)
    path = model.folder(cfg.model)
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.sep_token
    train = data.tokenize(cfg, parts, tok, None)["train"]
    targets, _ = model.targets(cfg, None)
    qc = model.quant_config(cfg)
    net = AutoModelForCausalLM.from_pretrained(path, dtype=model.DTYPES[cfg.model.dtype], quantization_config=qc,
                                               device_map={"": 0})
    net.config.use_cache = False
    if qc is not None:
        net = prepare_model_for_kbit_training(net, use_gradient_checkpointing=False)
    steps, bs = int(cfg.train.max_steps), int(cfg.train.batch_size)
    net = get_peft_model(net, model.peft_config(cfg, targets, steps))
    params = [p for p in net.parameters() if p.requires_grad]
    if cfg.train.optim == "adamw_torch":
        opt = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    else:
        import bitsandbytes as bnb

        opt = {"paged_adamw_8bit": bnb.optim.PagedAdamW8bit, "adamw_8bit": bnb.optim.AdamW8bit}[cfg.train.optim](
            params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    g = torch.Generator().manual_seed(int(cfg.seed))
    order = torch.randperm(len(train), generator=g).tolist()
    ids, labels = train["input_ids"], train["labels"]
    net.train()
    times, tokens = [], []
    setup_s = time.perf_counter() - t0
    for step in range(steps):
        rows = [order[(step * bs + i) % len(order)] for i in range(bs)]
        n = max(len(ids[r]) for r in rows)
        x = torch.full((bs, n), tok.pad_token_id, dtype=torch.long)
        y = torch.full((bs, n), -100, dtype=torch.long)
        mask = torch.zeros((bs, n), dtype=torch.long)
        for j, r in enumerate(rows):
            k = len(ids[r])
            x[j, :k], y[j, :k], mask[j, :k] = torch.tensor(ids[r]), torch.tensor(labels[r]), 1
        torch.cuda.synchronize()
        t = time.perf_counter()
        loss = net(input_ids=x.cuda(non_blocking=True), attention_mask=mask.cuda(non_blocking=True),
                   labels=y.cuda(non_blocking=True)).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        tokens.append(int(mask.sum()))
    warm = min(5, steps // 3)
    rec = {
        "name": name, "overrides": overrides, "steps": steps, "setup_s": setup_s, "loop_s": sum(times),
        "tokens_per_s_all": sum(tokens) / sum(times),
        "tokens_per_s_steady": sum(tokens[warm:]) / sum(times[warm:]), "warmup_steps_excluded": warm,
        "step_s_median": sorted(times)[len(times) // 2], "final_loss": float(loss),
        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20,
        "peak_reserved_mb": torch.cuda.max_memory_reserved() / 2**20, **_gpu(),
    }
    Path(out).write_text(json.dumps(rec, indent=1))
    print(json.dumps({k: rec[k] for k in ("tokens_per_s_all", "tokens_per_s_steady", "peak_memory_mb", "loop_s")}))


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "materialize":
        materialize(sys.argv[2:])
    elif cmd == "trial":
        trial(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif cmd == "bare":
        bare(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(__doc__)
