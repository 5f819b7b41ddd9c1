"""The sweep folder's owner (lorasweep/sweepdir.py): new folders never collide, a ref finds a sweep by id or by name
(its latest), and a ref that finds none names the field and the sweeps there are."""

import os
import time

import pytest
from omegaconf import OmegaConf

from lorasweep import sweepdir
from lorasweep.errors import ConfigError


@pytest.fixture
def sweeps(tmp_path, monkeypatch):
    monkeypatch.setattr(sweepdir, "SWEEPS_DIR", tmp_path / "sweeps_out")
    return sweepdir.SWEEPS_DIR


def made(name: str, mtime: float) -> str:
    folder = sweepdir.new(name)
    folder.mkdir(parents=True)
    sweepdir.write_state(folder, {"sweep_id": folder.name})
    os.utime(folder / sweepdir.STATE, (mtime, mtime))
    return folder.name


def test_two_sweeps_of_one_name_in_one_second_get_two_folders(sweeps, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda fmt: "20260101-000000")  # both in the same second
    first, second = made("smoke", 1), made("smoke", 2)
    assert (first, second) == ("smoke-20260101-000000", "smoke-20260101-000000-2")
    assert sweepdir.existing() == sorted([first, second])


def test_a_ref_finds_a_sweep_by_id_or_its_latest_by_name_and_else_names_the_field(sweeps):
    old, new, other = made("smoke", time.time() - 60), made("smoke", time.time()), made("rank", time.time())
    assert sweepdir.find(old) == sweeps / old
    assert sweepdir.find("smoke") == sweeps / new
    assert sweepdir.sweep_dir(OmegaConf.create({"resume": True}), ["sweep=smoke"]) == (sweeps / new, True)
    with pytest.raises(ConfigError) as e:
        sweepdir.find("nope")
    assert e.value.field == "sweep.warm_start" and other in str(e.value)
    with pytest.raises(ConfigError) as e:
        sweepdir.sweep_dir(OmegaConf.create({"resume": "nope"}), ["sweep=smoke"])
    assert e.value.field == "resume"
