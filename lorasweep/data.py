"""Data: read tables from package files, local files or the hub; check them; split them; tokenize them."""

import collections
import importlib.metadata
import json
from pathlib import Path

import pandas as pd
from datasets import Dataset
from omegaconf import DictConfig, OmegaConf

from lorasweep.errors import ConfigError
from lorasweep.tasks import TASKS, component


def _chatterbot(folder: Path, encoding: str) -> pd.DataFrame:
    """A folder of chatterbot-corpus YAML files: each pair of consecutive turns of a conversation is one
    prompt -> response row. The corpus lists many pairs more than once; each distinct pair is kept once."""
    import yaml

    rows = []
    for f in sorted(folder.glob("*.yml")):
        for turns in yaml.safe_load(f.read_text(encoding=encoding)).get("conversations", []):
            rows += [(str(a), str(b), f.stem) for a, b in zip(turns, turns[1:])]
    return pd.DataFrame(rows, columns=["prompt", "response", "category"]).drop_duplicates(["prompt", "response"])


READERS = {
    "csv": lambda p, enc: pd.read_csv(p, encoding=enc),
    "json": lambda p, enc: pd.read_json(p, encoding=enc),
    "jsonl": lambda p, enc: pd.read_json(p, lines=True, encoding=enc),
    "parquet": lambda p, enc: pd.read_parquet(p),
    "chatterbot": _chatterbot,
}
FOLDER_FORMATS = ("chatterbot",)  # formats whose path is a folder, not a file


def named(d: DictConfig) -> dict[str, str]:
    """The splits a data config names, {split: file or split name}. A one-file config names its train table only."""
    if d.source == "hub":
        return dict(d.splits or {"train": "train"})
    return dict(d.files or {"train": d.path})


def _field(d: DictConfig, split: str) -> str:
    """The config field that names a split, for error messages."""
    if d.source == "hub":
        return f"data.splits.{split}" if d.splits else "data.path"
    return f"data.files.{split}" if d.files else "data.path"


def tables(d: DictConfig) -> dict[str, pd.DataFrame]:
    """Each split the config names, as read."""
    if d.source == "hub":
        found = _hub(d)
        for split, name in named(d).items():
            if name not in found and not d.splits:
                raise ConfigError("data.splits", None, f"{{train: <one of {sorted(found)}>}}: no split named train")
            if name not in found:
                raise ConfigError(_field(d, split), name, f"a split of {d.path}: {sorted(found)}")
        return {split: found[name].to_pandas() for split, name in named(d).items()}
    if d.format not in READERS:
        raise ConfigError("data.format", d.format, f"one of {sorted(READERS)}")
    out = {}
    for split, where in named(d).items():
        path = file_path(d, where, _field(d, split))
        try:
            out[split] = READERS[d.format](path, d.encoding)
        except (ValueError, UnicodeError, LookupError) as e:  # malformed JSON, bad CSV, wrong encoding
            why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ConfigError(_field(d, split), where, f"a {d.format} file pandas can read ({why})") from None
    return out


def read_table(d: DictConfig) -> pd.DataFrame:
    """The train table: the one file of a one-file config, or the train split."""
    return tables(d)["train"]


def _hub(d: DictConfig):
    """All splits of a hub dataset (cached, when offline) or of a local folder: `save_to_disk`'s layout or one
    load_dataset reads (train.parquet, data/train-*.parquet, ...)."""
    import datasets
    from datasets import load_dataset, load_from_disk

    folder = Path(str(d.path)).expanduser()
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # bad input stays one line on stderr
    try:
        if (folder / "dataset_dict.json").is_file():
            return load_from_disk(str(folder))
        return load_dataset(str(folder) if folder.is_dir() else str(d.path))
    except (ConnectionError, FileNotFoundError, ValueError) as e:  # offline and not cached, unknown
        why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        raise ConfigError(
            "data.path", d.path, f"a dataset on the hub (cached, when offline) or in a local folder ({why})"
        ) from None
    finally:
        if bars:
            datasets.enable_progress_bars()


def file_path(d: DictConfig, where: str | None = None, field: str = "data.path") -> Path:
    """A table's file, for package and file sources: a package names "<distribution>:<file inside it>"."""
    where = str(d.path if where is None else where)
    if d.source == "package":
        dist, _, rel = where.partition(":")
        try:
            path = Path(importlib.metadata.distribution(dist).locate_file(rel))
        except importlib.metadata.PackageNotFoundError:
            raise ConfigError(field, where, "<installed distribution>:<file in it>") from None
    elif d.source == "file":
        path = Path(where).expanduser()
    else:
        raise ConfigError("data.source", d.source, "one of package, file, hub")
    if d.format in FOLDER_FORMATS:
        if not path.is_dir():
            raise ConfigError(field, where, f"an existing folder (data.format={d.format} reads a folder)")
    elif not path.is_file():
        raise ConfigError(field, where, "an existing file")
    return path


def sources(d: DictConfig) -> dict[str, str | None]:
    """Where each named split comes from, for tracking: its file, or None for a hub dataset (MLflow records it)."""
    return {s: None if d.source == "hub" else str(file_path(d, w, _field(d, s))) for s, w in named(d).items()}


def columns(cfg: DictConfig) -> list[str]:
    d = cfg.data
    return [d[role] for role in TASKS[cfg.model.task].roles]


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
    return json.dumps(
        [OmegaConf.to_container(p, resolve=True) if isinstance(p, DictConfig) else p for p in parts],
        sort_keys=True,
        default=str,
    )


def splits(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    """Check the columns, then a fixed seeded split: test first, then eval, then train.

    A split the config names (data.files, data.splits) is used whole, as read. Those it does not name are carved
    out of the shuffled train table, test and eval first: that keeps them fixed when train_size or
    max_train_samples change.
    """
    return _cached(_key("splits", cfg.data, cfg.model.task, _stamp(cfg.data)), lambda: _splits(cfg))


def _stamp(d: DictConfig) -> list | None:
    """A user's file can change between two trials of one process: its size and mtime join the cache keys."""
    if d.source != "file":
        return None
    paths = [Path(str(w)).expanduser() for w in named(d).values()]
    return [[p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None for p in paths]


def _splits(cfg: DictConfig) -> dict[str, pd.DataFrame]:
    d = cfg.data
    given = tables(d)
    for role, col in zip(TASKS[cfg.model.task].roles, columns(cfg)):
        if col is None or col not in given["train"].columns:
            raise ConfigError(f"data.{role}", col, f"a column of {named(d)['train']}: {list(given['train'].columns)}")
        for split, table in given.items():
            if col not in table.columns:  # a split file without a column the train file has
                raise ConfigError(
                    _field(d, split),
                    named(d)[split],
                    f"a table with the {role} {col!r} that the train split has (its columns: {list(table.columns)})",
                )
            given[split] = table[table[col].notna() & (table[col].astype(str).str.strip() != "")]
            if given[split].empty:
                raise ConfigError(f"data.{role}", col, f"a column with non-empty values in the {split} split")
    table = given["train"].sample(frac=1.0, random_state=int(d.split_seed)).reset_index(drop=True)
    out, start = {}, 0
    for name in ("test", "eval", "train"):
        if name in given and name != "train":
            out[name] = given[name].reset_index(drop=True)  # an official split: every row, in its order
            continue
        size, field = d[f"{name}_size"], f"data.{name}_size"
        count = len(table) - start if size is None else round(size * len(table)) if isinstance(size, float) else size
        if count < 1:
            raise ConfigError(field, size, f"a size giving at least 1 row ({len(table) - start} rows remain for it)")
        if start + count > len(table):
            instead = "null takes the rest" if name == "train" else "0.1 takes a tenth"
            raise ConfigError(
                field,
                size,
                f"at most {len(table) - start} rows remain for it ({len(table)} usable rows); {field}={instead}",
            )
        out[name] = table.iloc[start : start + count]
        start += count
    if d.max_train_samples:
        out["train"] = out["train"].iloc[: int(d.max_train_samples)]
    if TASKS[cfg.model.task].labels and out["train"][d.label_column].nunique() < 2:
        raise ConfigError("data.label_column", d.label_column, "a column with at least 2 classes in the train split")
    return out


def label_name(value) -> str:
    """A label as text: 1, 1.0 (a numeric column with a gap reads as float) and "1" are the same label."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def labels(cfg: DictConfig, parts: dict[str, pd.DataFrame]) -> list[str] | None:
    """The label set of the train split, numbers in numeric order."""
    if not TASKS[cfg.model.task].labels:
        return None
    names = {label_name(v) for v in parts["train"][cfg.data.label_column]}

    def order(name: str):
        try:
            return (0, float(name), name)
        except ValueError:
            return (1, 0.0, name)

    return sorted(names, key=order)


def sft_text(d: DictConfig, tok, prompt, response) -> tuple[str, str]:
    """One SFT row as (prompt text, answer text); the answer ends with what marks its end (EOS, end of turn)."""
    user = d.prompt_template.format(prompt)
    if not d.chat_template:
        return user, " " + str(response) + (tok.eos_token or tok.sep_token or "")
    if not tok.chat_template:
        raise ConfigError("data.chat_template", True, f"false: the tokenizer {tok.name_or_path} has no chat template")
    turns = [{"role": "user", "content": user}]
    head = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template([*turns, {"role": "assistant", "content": str(response)}], tokenize=False)
    return head, full[len(head) :] if full.startswith(head) else str(response) + (tok.eos_token or "")


def prompt_ids(d: DictConfig, tok, text: str, room: int) -> list[int]:
    """A prompt's tokens, cut from the left to `room` tokens: the end of a prompt, next to its answer, matters most.
    A chat template writes its own special tokens."""
    room = max(room, tok.num_special_tokens_to_add() + 1)
    side, tok.truncation_side = tok.truncation_side, "left"  # an attribute: the call's keyword is not honoured
    try:
        return tok(text, add_special_tokens=not d.chat_template, truncation=True, max_length=room)["input_ids"]
    finally:
        tok.truncation_side = side


def tokenize(cfg: DictConfig, parts: dict[str, pd.DataFrame], tok, label_names: list[str] | None) -> dict[str, Dataset]:
    return _tokenized(cfg, parts, tok, label_names)[0]


def notes(cfg: DictConfig, parts: dict[str, pd.DataFrame], tok, label_names: list[str] | None) -> dict[str, int]:
    """What tokenizing cost, per split: rows whose label train never saw (classification; left out of the metrics)
    and rows whose response did not fit whole in max_length even with the prompt cut (SFT)."""
    return _tokenized(cfg, parts, tok, label_names)[1]


def _tokenized(cfg, parts, tok, label_names):
    key = _key(
        "tokenized", cfg.data, cfg.model.task, _stamp(cfg.data), tok.name_or_path, label_names, cfg.train.eval_samples
    )
    return _cached(key, lambda: _tokenize(cfg, parts, tok, label_names))


def _tokenize(
    cfg: DictConfig, parts: dict[str, pd.DataFrame], tok, label_names: list[str] | None
) -> tuple[dict[str, Dataset], dict[str, int]]:
    out, counts = {}, {}
    for name, df in parts.items():
        rows, lost = encoded(cfg, tok, df, label_names)
        if name != "train":
            rows = by_length(rows, cfg.train.eval_samples if name == "eval" else None)
        out[name] = Dataset.from_dict(rows)
        counts[f"{TASKS[cfg.model.task].dropped}_{name}"] = int(lost)
    return out, counts


def encoded(cfg: DictConfig, tok, df: pd.DataFrame, label_names: list[str] | None) -> tuple[dict[str, list], int]:
    """One split's rows, tokenized by the task's encoder, in the table's order, and the count the encoder lost."""
    rows, lost = component(TASKS[cfg.model.task].encode)(cfg.data, tok, df, label_names)
    # Rows with nothing to score are left out: a label train never saw (counted), an SFT row with no response
    # token left (max_length too small for any).
    keep = [max(lab) >= 0 if isinstance(lab, list) else lab >= 0 for lab in rows["labels"]]
    return {k: [v for v, ok in zip(col, keep) if ok] for k, col in rows.items()}, lost


def by_length(rows: dict[str, list], first: int | None = None) -> dict[str, list]:
    """An eval or test split as every trial evaluates it: its first `first` rows (all when None; train.eval_samples
    caps the eval split), longest first, ties in their order. Batches of rows of like length pad far less
    (docs/performance.md), and one fixed order keeps the per-row outputs of any two trials row for row
    (lorasweep.evalrows). Longest first: a batch too big for the device fails at the first one."""
    n = len(rows["input_ids"]) if first is None else min(int(first), len(rows["input_ids"]))
    order = sorted(range(n), key=lambda i: -len(rows["input_ids"][i]))  # sorted() is stable
    return {k: [col[i] for i in order] for k, col in rows.items()}


def eval_shapes(rows: Dataset, collate, batch: int) -> list[tuple[int, int]]:
    """The (rows, padded length) of each batch an eval pass over `rows` feeds the model, in order: batches of
    `batch` rows through the trial's collator."""
    return [
        tuple(collate([rows[j] for j in range(i, min(i + batch, len(rows)))])["input_ids"].shape)
        for i in range(0, len(rows), batch)
    ]


# data.pad_to_multiple_of and data.eval_lengths where they say auto, on a GPU. Each new padded length is a new
# attention and GEMM plan there; on a CPU no plan is kept and padding is only cost (docs/performance.md has both).
GPU_PADDING = {"pad_to_multiple_of": 16, "eval_lengths": 2}


def padding(d: DictConfig, key: str) -> int | None:
    """data.pad_to_multiple_of or data.eval_lengths as this machine applies it: auto is GPU_PADDING's on a CUDA GPU,
    null (each batch to its longest row, each eval batch to its own length) on a CPU."""
    if d[key] != "auto":
        return d[key]
    import torch

    return GPU_PADDING[key] if torch.cuda.is_available() else None


def collator(d: DictConfig, task: str, tok):
    """The task's collator (the registry names it), padding each batch to a multiple of data.pad_to_multiple_of
    tokens: a new padded length is a new attention and GEMM plan on a GPU (docs/performance.md)."""
    t = TASKS[task]
    return component(t.collator)(tok, **t.collator_kwargs, pad_to_multiple_of=padding(d, "pad_to_multiple_of"))


def eval_collator(d: DictConfig, task: str, tok, rows: Dataset, batch: int):
    """The collator for one eval pass over `rows` in their order (longest first, data.by_length): each batch is
    padded to one of at most data.eval_lengths lengths, chosen by `fewest_padded` for these rows. A batch longer
    than all of them (rows not measured here) pads as the train collator does."""
    plain, most = collator(d, task, tok), padding(d, "eval_lengths")
    if most is None or len(rows) == 0:
        return plain
    t, ids = TASKS[task], rows["input_ids"]
    longest = [max(len(x) for x in ids[i : i + batch]) for i in range(0, len(ids), batch)]
    sizes = [len(ids[i : i + batch]) for i in range(0, len(ids), batch)]
    m = padding(d, "pad_to_multiple_of") or 1
    lengths = fewest_padded([-(-n // m) * m for n in longest], sizes, int(most))
    # The registry's collator itself, padding to a fixed length: labels and padding side as it pads them.
    fixed = {
        n: component(t.collator)(tok, **{**t.collator_kwargs, "padding": "max_length", "max_length": n})
        for n in lengths
    }

    def collate(features: list[dict]):
        n = max(len(f["input_ids"]) for f in features)
        fits = [length for length in lengths if length >= n]
        return fixed[min(fits)](features) if fits else plain(features)

    return collate


def fewest_padded(longest: list[int], sizes: list[int], k: int) -> list[int]:
    """At most k lengths for batches taken in order whose longest rows (already bucketed) are `longest`, with
    `sizes` rows: each batch pads to the smallest chosen length that holds it, and the choice pads the fewest
    tokens in all. For rows longest first this is a split of the batches into k runs, each padded to its first
    batch's length: a small dynamic programme over the split points (no library splits a sequence so)."""
    distinct = sorted(set(longest))
    if len(distinct) <= k:
        return distinct
    # best[j]: the fewest tokens for every batch no longer than distinct[j], distinct[j] chosen, with the lengths
    # allowed so far; each round allows one more.
    rows_upto = [sum(s for n, s in zip(longest, sizes) if n <= length) for length in distinct]
    best = [(rows_upto[j] * distinct[j], [distinct[j]]) for j in range(len(distinct))]
    for _ in range(1, k):
        best = [
            min(
                [best[j]]
                + [
                    (best[i][0] + (rows_upto[j] - rows_upto[i]) * distinct[j], [*best[i][1], distinct[j]])
                    for i in range(j)
                ],
                key=lambda b: b[0],
            )
            for j in range(len(distinct))
        ]
    return best[-1][1]  # the longest batch must fit


def encode_classes(d: DictConfig, tok, df: pd.DataFrame, label_names: list[str]) -> tuple[dict, int]:
    """Classification rows: the text's tokens and the label's index (-1 for a label train never saw, counted)."""
    index = {l: i for i, l in enumerate(label_names)}
    enc = tok(df[d.text_column].astype(str).tolist(), truncation=True, max_length=d.max_length)
    enc["labels"] = [index.get(label_name(l), -1) for l in df[d.label_column]]
    return dict(enc), sum(l < 0 for l in enc["labels"])


def encode_sft(d: DictConfig, tok, df: pd.DataFrame, label_names: None = None) -> tuple[dict, int]:
    """SFT rows: the prompt is context only; the loss sees the response tokens. A long prompt is cut from the left
    so that the response fits; only a response longer than max_length itself is cut (from the right, counted)."""
    rows, cut = {"input_ids": [], "attention_mask": [], "labels": []}, 0
    for p, r in zip(df[d.prompt_column], df[d.response_column]):
        head, answer = sft_text(d, tok, p, r)
        answer = tok(answer, add_special_tokens=False)["input_ids"]
        prompt = prompt_ids(d, tok, head, d.max_length - len(answer))
        ids = (prompt + answer)[: d.max_length]
        cut += len(prompt) + len(answer) > d.max_length
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * len(ids))
        rows["labels"].append(([-100] * len(prompt) + answer)[: d.max_length])
    return rows, cut


WHY = {
    "unseen_label_rows": "rows with a label unseen in train, left out of the metrics",
    "response_cut_rows": "rows whose response was cut to fit data.max_length",
}


def warning_lines(counts: dict[str, int]) -> list[str]:
    """One console line per kind of row lost in tokenizing, with its count per split."""
    lines = []
    for kind, why in WHY.items():
        per = [f"{v} {k.rsplit('_', 1)[1]}" for k, v in counts.items() if k.startswith(kind) and v]
        if per:
            lines.append(f"lorasweep: warning: {why}: {', '.join(per)} (metrics {kind}_<split>)")
    return lines
