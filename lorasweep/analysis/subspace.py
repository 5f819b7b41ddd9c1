"""Subspace similarity of two adapters (Hu et al. 2021 §7.2, Eq. 4), from the A matrices that trials saved.

φ(A₁, A₂, i, j) = ‖U₁ᵢᵀ U₂ⱼ‖²_F / min(i, j), where U is the matrix of right-singular vectors of A (r × k),
ordered by singular value, and Uᵢ its first i columns. φ = 1 when one top subspace contains the other, 0 when
they are orthogonal.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import torch

from lorasweep.targets import FAMILIES, module_type

ADAPTER_FILE = "adapter_model.safetensors"


def right_singular(a: torch.Tensor) -> torch.Tensor:
    """Right-singular vectors of A (r × k) as orthonormal rows, by descending singular value (float64)."""
    return torch.linalg.svd(a.detach().double(), full_matrices=False).Vh


def phi_grid(a1: torch.Tensor, a2: torch.Tensor) -> np.ndarray:
    """φ(A₁, A₂, i, j) for every i ≤ r₁, j ≤ r₂ as an (r₁ × r₂) array (row i-1, column j-1).

    ‖U₁ᵢᵀU₂ⱼ‖²_F sums the squared overlaps of the first i and first j vectors: a 2-D cumulative sum of the
    squared entries of V₁V₂ᵀ gives all of them at once.
    """
    v1, v2 = right_singular(a1), right_singular(a2)
    sq = (v1 @ v2.T).square().numpy()
    energy = sq.cumsum(0).cumsum(1)
    i = np.arange(1, sq.shape[0] + 1)[:, None]
    j = np.arange(1, sq.shape[1] + 1)[None, :]
    return energy / np.minimum(i, j)


def phi(a1: torch.Tensor, a2: torch.Tensor, i: int, j: int) -> float:
    """φ at one (i, j), straight from Eq. 4."""
    u1 = right_singular(a1)[:i].T
    u2 = right_singular(a2)[:j].T
    return float(torch.linalg.matrix_norm(u1.T @ u2, ord="fro") ** 2 / min(i, j))


def load_lora_a(run_id: str, uri: str, dst: Path) -> dict[str, torch.Tensor]:
    """The lora_A weight of every adapted module of a trial, by module name, read from its logged adapter
    (safetensors, which is what PEFT's loader reads it with; importing PEFT would import bitsandbytes, which a report
    does not need). Raises FileNotFoundError when the trial saved no adapter."""
    from safetensors.torch import load_file

    try:
        path = Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="adapter", dst_path=str(dst / run_id), tracking_uri=uri
            )
        )
    except (mlflow.exceptions.MlflowException, OSError) as e:
        raise FileNotFoundError(f"run {run_id} has no adapter artifact: {e}") from None
    if not (path / ADAPTER_FILE).exists():
        raise FileNotFoundError(f"run {run_id} has no adapter/{ADAPTER_FILE}")
    weights = load_file(str(path / ADAPTER_FILE), device="cpu")
    return {module_name(k): v for k, v in weights.items() if k.endswith("lora_A.weight")}


def module_name(key: str) -> str:
    """`base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight` -> `bert.encoder...query`."""
    return (
        key.removeprefix("base_model.model.").removesuffix(".weight").removesuffix(".lora_A").removesuffix(".default")
    )


def layer_of(name: str) -> int:
    """The last integer in a module's dotted name (its block index), -1 if none."""
    nums = [int(p) for p in name.split(".") if p.isdigit()]
    return nums[-1] if nums else -1


def type_of(name: str) -> str:
    """The alias (q, k, v, o, up, down, ...) under whichever architecture family knows the name."""
    for fam, aliases in FAMILIES.items():
        t = module_type(name, fam)
        if t in aliases:
            return t
    return module_type(name, None)


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[dict]:
    """φ grids for the modules two adapters share: rows of module, layer, module_type, k, phi (r_a × r_b)."""
    rows = []
    for name in sorted(set(a) & set(b), key=lambda n: (layer_of(n), n)):
        grid = phi_grid(a[name], b[name])
        rows.append(
            {
                "module": name,
                "layer": layer_of(name),
                "module_type": type_of(name),
                "k": int(a[name].shape[1]),
                "phi": grid,
            }
        )
    return rows
