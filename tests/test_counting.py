"""The benchmarks' counting pass (benchmarks/counting.py) counts what it says: a host sync, a cast, copies."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from counting import Copies, Count, summary  # noqa: E402


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


def y_item_line() -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, l in enumerate(lines, 1) if l.strip().startswith("y.item()"))
