"""A counting pass: what a training loop asks of torch per step, counted at the dispatcher, so the same on any machine.

Counted per step (a step runs from one `mark()` to the next; what runs before the first is `setup`):
- ops: every aten op that reaches the dispatcher (forward, backward, optimizer, logging), a proxy for host time
  per step on a GPU, where each op is at least one kernel launch;
- casts: `_to_copy` or `copy_` whose dtype differs from its source's (autocast, PEFT's fp32 adapters on a bf16
  base, logging's float64);
- syncs: ops whose result the host must wait for on a GPU: `_local_scalar_dense` (`.item()`, `float(t)`,
  `bool(t)`, `if t:`), `nonzero`, `masked_select`, `unique`, `equal` and `repeat_interleave` (their output size
  depends on the data), and `_to_copy` to the CPU from another device;
- copies: `Tensor.to`/`.cuda` calls that name a device (seen at the torch-function level, so counted on a CPU
  too, where they are no-ops), split by `non_blocking`: a blocking host-to-device copy waits for the device;
- host_scalars: `_local_scalar_dense` reached through torch.optim (AdamW's per-parameter step counter, a CPU
  tensor on any device): host work, not a device wait;
- python_calls: Python function calls (sys.settrace's call events), the host work a dispatcher count misses;
- attention: the query shape of each fused attention op (SDPA's CPU, flash, efficient and cuDNN kernels): each new
  shape is a new plan (cuDNN) or autotune on a GPU.
Each sync and cast also records the first line outside torch that asked for it, so a count has a culprit.
"""

import os
import sys
from collections import Counter, defaultdict

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

SYNCS = {
    "_local_scalar_dense",
    "nonzero",
    "masked_select",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "equal",
    "repeat_interleave",
}
ATTENTION = {
    "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_flash_attention",
    "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_attention_math",
    "_scaled_dot_product_fused_attention_overrideable",
}
TORCH_DIR = os.path.dirname(torch.__file__)
HERE = os.path.abspath(__file__)
OPTIM = os.path.join(TORCH_DIR, "optim")


def culprit() -> tuple[str, bool]:
    """`path:line` of the innermost frame outside torch and this file (who asked for the op), and whether the
    call came through torch.optim (whose step counters are CPU tensors on any device)."""
    f, optim = sys._getframe(2), False
    while f is not None and (f.f_code.co_filename.startswith(TORCH_DIR) or f.f_code.co_filename == HERE):
        optim = optim or OPTIM in f.f_code.co_filename
        f = f.f_back
    if f is None:
        return "autograd engine (backward)", optim
    name = f.f_code.co_filename
    for root in ("site-packages/", "lorasweep/", "benchmarks/"):
        if root in name:
            name = name[name.index(root) + (len(root) if root == "site-packages/" else 0) :]
            break
    return f"{name}:{f.f_lineno}", optim


class Count(TorchDispatchMode):
    """Counts per step; `mark()` starts the next step. Use with `Copies` for device copies (see the module doc)."""

    def __init__(self):
        super().__init__()
        self.step = "setup"
        self.per: dict[str, Counter] = defaultdict(Counter)
        self.where: dict[str, Counter] = defaultdict(Counter)  # "sync:<op>" / "cast:<from>-><to>" -> {culprit: n}
        self.shapes: dict[str, Counter] = defaultdict(Counter)  # step kind -> {query shape: n}

    def mark(self, label: str) -> None:
        self.step = label

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        c = self.per[self.step]
        c["ops"] += 1
        src = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if name == "_to_copy" and src is not None:
            dtype, device = kwargs.get("dtype"), kwargs.get("device")
            if dtype is not None and dtype != src.dtype:
                self._note(c, f"cast:{_short(src.dtype)}->{_short(dtype)}", "casts")
            if device is not None and torch.device(device).type == "cpu" and src.device.type != "cpu":
                self._note(c, "sync:to_cpu", "syncs")
        elif name == "copy_" and src is not None and isinstance(args[1], torch.Tensor) and args[1].dtype != src.dtype:
            self._note(c, f"cast:{_short(args[1].dtype)}->{_short(src.dtype)}", "casts")
        elif name in SYNCS:
            self._note(c, f"sync:{name}", "syncs")
        elif name in ATTENTION:
            self.shapes[self.step.rstrip("0123456789")][tuple(args[0].shape)] += 1
        return out

    def _note(self, c: Counter, what: str, kind: str) -> None:
        where, optim = culprit()
        if kind == "syncs" and optim:  # AdamW's `step` is a CPU scalar unless capturable/fused: no device wait
            kind, what = "host_scalars", what.replace("sync:", "host_scalar:")
        c[kind] += 1
        self.where[what][where] += 1

    def __enter__(self):
        sys.settrace(self._call)  # Python calls per step (cProfile, when it runs, holds the profile hook)
        return super().__enter__()

    def __exit__(self, *exc):
        sys.settrace(None)
        return super().__exit__(*exc)

    def _call(self, frame, event, arg):
        self.per[self.step]["python_calls"] += 1  # settrace's global hook sees call events only


class Copies(TorchFunctionMode):
    """`Tensor.to`/`.cuda` calls that name a device, blocking or not, into the same per-step counters."""

    def __init__(self, count: Count):
        super().__init__()
        self.count = count

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cuda) and _names_device(func, args, kwargs):
            what = "copies_non_blocking" if kwargs.get("non_blocking") else "copies_blocking"
            self.count._note(self.count.per[self.count.step], f"copy:{what}", what)
        return func(*args, **kwargs)


def _names_device(func, args, kwargs) -> bool:
    if func is torch.Tensor.cuda or "device" in kwargs:
        return True
    return any(isinstance(a, (torch.device, str)) for a in args[1:])


def _short(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def summary(count: Count, first: int = 2) -> dict:
    """Medians over training steps after the first `first` (whose optimizer state is still being created), the
    setup and the rest, the culprits, and the distinct attention shapes per step kind."""
    import statistics

    steps = [k for k in count.per if k.startswith("step")]
    steady = steps[first:] or steps
    kinds = ("ops", "python_calls", "casts", "syncs", "host_scalars", "copies_blocking", "copies_non_blocking")
    return {
        "steps": len(steps),
        "per_step_median": {k: statistics.median(count.per[s][k] for s in steady) for k in kinds},
        "per_step_max": {k: max(count.per[s][k] for s in steady) for k in kinds},
        "per_step": {s: dict(count.per[s]) for s in steps},
        "other": {s: dict(c) for s, c in count.per.items() if not s.startswith("step")},
        "where": {w: dict(c.most_common()) for w, c in sorted(count.where.items())},
        "attention_shapes": {k: len(v) for k, v in count.shapes.items()},
        "attention_shape_list": {k: [list(s) for s in v] for k, v in count.shapes.items()},
    }
