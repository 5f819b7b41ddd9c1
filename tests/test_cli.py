"""The CLI as a user meets it: --help on every command, --cfg job, --dry-run; none of them trains or tracks."""

import pytest
import yaml

from lorasweep.cli import main
from tests.conftest import all_runs


@pytest.mark.parametrize("command", ["trial", "sweep", "estimate", "report"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and f"usage: lorasweep {command}" in capsys.readouterr().out


def test_no_command_is_usage_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2 and "usage: lorasweep" in capsys.readouterr().err


def test_cfg_job_prints_the_composed_config(store, capsys):
    assert main(["trial", "adapter.r=16", "model=tiny_llama", "--cfg", "job"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["adapter"]["r"] == 16 and cfg["model"]["name"] == "tiny_llama"
    assert all_runs(store) == []


def test_sweep_dry_run_lists_each_sampled_config_and_creates_nothing(store, tmp_path, capsys):
    assert main(["sweep", "sweep=smoke", "sweep.num_trials=4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("t00")]
    assert len(rows) == 4 and all("adapter.r=" in r and "est. peak" in r and "GPU share 0" in r for r in rows)
    assert "4 trials of eval_loss (min)" in out and "adapter.r: choice (2, 4, 8)" in out
    assert all_runs(store) == [] and not (tmp_path / "sweeps_out").exists()


def test_dry_run_of_a_whole_grid_and_of_a_comparison(store, tmp_path, capsys):
    """A grid previewed to its last point (Optuna's GridSampler then asks to stop), and a comparison's LR search."""
    grid = ["~sweep.space", "~sweep.sampler", "+sweep.sampler={name:grid,seed:0}", "sweep.num_trials=3"]
    assert (
        main(["sweep", "sweep=smoke", *grid, "+sweep.space={adapter:{r:{kind:grid,values:[2,4,8]}}}", "--dry-run"]) == 0
    )
    assert len([line for line in capsys.readouterr().out.splitlines() if line.startswith("t00")]) == 3
    # With a bound on the predicted trainable params, the preview marks the configs a sweep would skip.
    r = "+sweep.space={adapter:{r:{kind:grid,values:[2,64]}}}"
    assert (
        main(
            ["sweep", "sweep=smoke", *grid, r, "sweep.num_trials=2", "+sweep.max_cost={trainable_params:5000}"]
            + ["--dry-run"]
        )
        == 0
    )
    rows = sorted(line for line in capsys.readouterr().out.splitlines() if line.startswith("t00"))
    skipped = [line for line in rows if "SKIPPED, not trained: predicted trainable_params" in line]
    assert len(skipped) == 1 and "adapter.r=64" in skipped[0]
    arms = "+sweep.compare={arms:{adapter.variant:[lora,dora]},lr:{values:[1.0e-4,1.0e-3]},seeds:[0,1]}"
    assert main(["sweep", "sweep=smoke", "~sweep.space", "~sweep.sampler", "~sweep.num_trials", arms, "--dry-run"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("t00")]
    assert len(rows) == 4 and "compare: 2 arms, each 2 LR trials at seed 0, then seeds [1]" in out
    assert all_runs(store) == [] and not (tmp_path / "sweeps_out").exists()
