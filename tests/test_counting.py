"""The benchmarks' counting pass (benchmarks/counting.py) counts what it says: a host sync, a cast, copies; and with it,
the trial's Trainer asks the host for no device value a bare training step does not."""

import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from counting import Copies, Count, summary  # noqa: E402

from tests.test_trial import TINY  # noqa: E402


def test_counting_pass_counts_an_item_sync_a_dtype_cast_and_a_blocking_copy_in_their_steps():
    x = torch.ones(4)
    count = Count()
    with count, Copies(count):
        count.mark("step1")
        y = (x * 2).sum()
        count.mark("step2")
        y.item()  # a device sync on a GPU
        x.to(torch.bfloat16)  # a cast
        x.to("cpu")  # names a device, blocking
        x.to("cpu", non_blocking=True)
        x.to(torch.float32)  # same dtype: no cast, no copy
    s = summary(count, first=0)["per_step"]
    assert s["step1"].get("syncs", 0) == 0 and s["step1"].get("casts", 0) == 0
    assert s["step2"]["syncs"] == 1 and s["step2"]["casts"] == 1
    assert s["step2"]["copies_blocking"] == 1 and s["step2"]["copies_non_blocking"] == 1
    assert list(count.where["sync:_local_scalar_dense"]) == [f"{__file__}:{y_item_line()}"]  # the culprit line


def test_an_optimizers_step_counter_is_a_host_scalar_not_a_device_sync():
    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([w], lr=0.1)
    w.sum().backward()
    count = Count()
    with count:
        count.mark("step1")
        opt.step()
    s = summary(count, first=0)["per_step"]["step1"]
    assert s.get("syncs", 0) == 0 and s["host_scalars"] >= 1


def test_a_training_step_of_the_trials_trainer_syncs_with_the_device_as_often_as_a_bare_step():
    """tiny_llama, 4 steps, none of them a logging step: each step through the trial's Trainer (forward, backward,
    clipping, AdamW, the Trainer's bookkeeping) has as many device syncs as the same model's bare step (the model's own
    mask checks). Issue 27: the Trainer's NaN/Inf filter of the loss added two a step."""
    from transformers import TrainerCallback

    from lorasweep import data, model, train
    from lorasweep.config import compose
    from lorasweep.trial import check

    cfg = compose([*TINY, "train.eval_every=100"])  # no eval inside the counted steps
    parts, labels, targets, _ = check(cfg)
    tuned, tok = model.load(cfg, targets, 4, labels)
    datasets = data.tokenize(cfg, parts, tok, labels)
    count = Count()

    class Marks(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            count.mark(f"step{state.global_step + 1}")

        def on_step_end(self, args, state, control, **kw):
            count.mark("between")  # logging and evaluation, when due, run here

    tr = train.trainer(cfg, tuned, tok, datasets, [], (Marks(),))
    with count:
        tr.train()
    shutil.rmtree(tr.args.output_dir)
    trial = [count.per[f"step{k}"].get("syncs", 0) for k in range(2, 5)]  # step 1 builds the optimizer state

    bare, opt = Count(), train.optimizer(tuned, cfg)
    batch = tr.data_collator([datasets["train"][i] for i in range(4)])
    with bare:
        bare.mark("step1")
        tuned(**batch).loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in tuned.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert bare.per["step1"]["syncs"] > 0  # the model's own, counted on both sides
    assert trial == [bare.per["step1"]["syncs"]] * 3


def y_item_line() -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, l in enumerate(lines, 1) if l.strip().startswith("y.item()"))
