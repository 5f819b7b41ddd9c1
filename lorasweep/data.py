"""Data: read a table from a package file, a local file or the hub; check it; split it; tokenize it."""

import collections
import importlib.metadata
import json
from pathlib import Path

import pandas as pd
from datasets import Dataset
from omegaconf import DictConfig, OmegaConf

from lorasweep.errors import ConfigError

READERS = {
    "csv": lambda p, enc: pd.read_csv(p, encoding=enc),
    "json": lambda p, enc: pd.read_json(p, encoding=enc),
    "jsonl": lambda p, enc: pd.read_json(p, lines=True, encoding=enc),
    "parquet": lambda p, enc: pd.read_parquet(p),
}


def read_table(d: DictConfig) -> pd.DataFrame:
    if d.source == "hub":  # a hub id, or a local dataset folder: load_dataset resolves both
        from datasets import load_dataset

        try:
            return load_dataset(str(d.path), split="train").to_pandas()
        except (ConnectionError, FileNotFoundError, ValueError) as e:  # offline and not cached, unknown, no train split
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise ConfigError("data.path", d.path, f"a dataset with a train split, on the hub (cached, when offline) "
                                                   f"or in a local folder ({why})") from None
    if d.format not in READERS:
        raise ConfigError("data.format", d.format, f"one of {sorted(READERS)}")
    path = file_path(d)
    return READERS[d.format](path, d.encoding)


def file_path(d: DictConfig) -> Path:
    """The table's file, for package and file sources: a package names "<distribution>:<file inside it>"."""
    if d.source == "package":
        dist, _, rel = str(d.path).partition(":")
        try:
            path = Path(importlib.metadata.distribution(dist).locate_file(rel))
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError("data.path", d.path, "<installed distribution>:<file in it>") from None
    elif d.source == "file":
        path = Path(str(d.path)).expanduser()
    else:
        raise ConfigError("data.source", d.source, "one of package, file, hub")
    if not path.is_file():
        raise ConfigError("data.path", d.path, "an existing file")
    return path


def columns(cfg: DictConfig) -> list[str]:
    d = cfg.data
    return [d.text_column, d.label_column] if cfg.model.task == "seq_cls" else [d.prompt_column, d.response_column]


# Warm workers: the splits and their tokenized form, kept per process for the next trial with the same data config
# (and tokenizer). A few entries: a sweep rarely searches over data.
_CACHE: "collections.OrderedDict[str, object]" = collections.OrderedDict()


def _cached(key: str, make):
    if key not in _CACHE:
        _CACHE[key] = make()
        while len(_CACHE) > 4:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _key(*parts) -> str:
    return json.dumps([OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts],
                      sort_keys=True, default=str)


def splits(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """Check the columns, then a fixed seeded split: test first, then eval, then train.

    Carving test and eval first keeps them fixed when train_size or max_train_samples change.
    """
    return _cached(_key("splits", cfg.data, cfg.model.task, _stamp(cfg.data)), lambda: _splits(cfg))


def _stamp(d: DictConfig) -> list | None:
    """A user's file can change between two trials of one process: its size and mtime join the cache keys."""
    path = Path(str(d.path)).expanduser()
    if d.source != "file" or not path.is_file():
        return None
    return [path.stat().st_size, path.stat().st_mtime_ns]


def _splits(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    d = cfg.data
    table = read_table(d)
    for role, col in zip(("text_column", "label_column") if cfg.model.task == "seq_cls" else ("prompt_column", "response_column"), columns(cfg)):
        if col is None or col not in table.columns:
            raise ConfigError(f"data.{role}", col, f"a column of {d.path}: {list(table.columns)}")
        table = table[table[col].notna() & (table[col].astype(str).str.strip() != "")]
        if table.empty:
            raise ConfigError(f"data.{role}", col, "a column with non-empty values")
    table = table.sample(frac=1.0, random_state=int(d.split_seed)).reset_index(drop=True)
    sizes = {"test": d.test_size, "eval": d.eval_size, "train": d.train_size}
    out, start = {}, 0
    for name, size in sizes.items():
        if size is None or int(size) < 1:
            raise ConfigError(f"data.{name}_size", size, "an integer >= 1 (an empty split cannot train or measure)")
        if start + int(size) > len(table):
            raise ConfigError(f"data.{name}_size", size, f"at most {len(table) - start} rows remain for it ({len(table)} usable rows)")
        out[name] = table.iloc[start:start + int(size)]
        start += int(size)
    if d.max_train_samples:
        out["train"] = out["train"].iloc[: int(d.max_train_samples)]
    if cfg.model.task == "seq_cls" and out["train"][d.label_column].nunique() < 2:
        raise ConfigError("data.label_column", d.label_column, "a column with at least 2 classes in the train split")
    return out


def labels(cfg: DictConfig, parts: dict[str, pd.DataFrame]) -> list[str] | None:
    if cfg.model.task != "seq_cls":
        return None
    return sorted(map(str, parts["train"][cfg.data.label_column].unique()))


def tokenize(cfg: DictConfig, parts: dict[str, pd.DataFrame], tok, label_names: list[str] | None) -> dict[str, Dataset]:
    key = _key("tokenized", cfg.data, cfg.model.task, _stamp(cfg.data), tok.name_or_path, label_names)
    return _cached(key, lambda: _tokenize(cfg, parts, tok, label_names))


def _tokenize(cfg: DictConfig, parts: dict[str, pd.DataFrame], tok, label_names: list[str] | None) -> dict[str, Dataset]:
    d = cfg.data
    if cfg.model.task == "seq_cls":
        index = {l: i for i, l in enumerate(label_names)}

        def encode(df: pd.DataFrame) -> dict:
            enc = tok(df[d.text_column].astype(str).tolist(), truncation=True, max_length=d.max_length)
            # Labels unseen in train cannot be predicted; they count as errors rather than crash.
            enc["labels"] = [index.get(str(l), -1) for l in df[d.label_column]]
            return dict(enc)
    else:
        eos = tok.eos_token or tok.sep_token or ""

        def encode(df: pd.DataFrame) -> dict:
            # SFT: the prompt is context only; the loss sees the response tokens.
            rows = {"input_ids": [], "attention_mask": [], "labels": []}
            for p, r in zip(df[d.prompt_column], df[d.response_column]):
                prompt = tok(d.prompt_template.format(p), add_special_tokens=True)["input_ids"]
                answer = tok(" " + str(r) + eos, add_special_tokens=False)["input_ids"]
                ids = (prompt + answer)[: d.max_length]
                lab = ([-100] * len(prompt) + answer)[: d.max_length]
                rows["input_ids"].append(ids)
                rows["attention_mask"].append([1] * len(ids))
                rows["labels"].append(lab)
            return rows

    out = {name: Dataset.from_dict(encode(df)) for name, df in parts.items()}
    if cfg.model.task == "seq_cls":  # drop rows whose label is unseen in train
        out = {n: ds.filter(lambda r: r["labels"] >= 0) for n, ds in out.items()}
    return out
