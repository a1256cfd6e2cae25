"""python -m mainrun.bench on the CPU: its rows are real runs and real searches. Nothing here
asserts a time; the benchmark is for the GPU."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from helpers import SPACES, TINY, bench
from mainrun.bench import _preset_config
from mainrun.config import PRESETS, ConfigError


def test_ablation_rows_carry_timings_and_the_memory_estimate(tmp_path, titles_file):
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(TINY))
    rows, stdout = bench(tmp_path, "--dataset", str(titles_file), "--base", str(base), "--ablate", "mlp=swiglu")
    assert [r["run"] for r in rows] == ["base", "mlp=swiglu"]
    for r in rows:
        assert 0 < r["val_loss"] < 10 and r["steps"] == 7 * r["steps_per_epoch"]
        assert r["train_s"] > 0 and r["tokens_per_s"] > 0 and r["tflops"] > 0
        assert 0 < r["setup_s"] < r["train_s"] and r["loop_s"] == pytest.approx(r["train_s"] - r["setup_s"])
        assert r["est_mem_mb"] > 0 and r["gpu"] == "cpu"
        assert r["peak_mem_mb"] is None                   # measured on CUDA only
    assert rows[1]["params"] > rows[0]["params"]          # at this width swiglu rounds its branches up to 64
    assert "est MiB" in stdout and "loop s" in stdout and "mlp=swiglu" in stdout
    # the same runs two at a time, each in its own process: the same val losses
    parallel, _ = bench(tmp_path, "--dataset", str(titles_file), "--base", str(base), "--ablate", "mlp=swiglu",
                        "--parallel", "2")
    assert [r["run"] for r in parallel] == ["base", "mlp=swiglu"]
    assert [r["val_loss"] for r in parallel] == [r["val_loss"] for r in rows]
    assert [r["sharing_device_with"] for r in parallel] == [1, 1]


def test_a_run_that_fails_gets_an_error_row_and_the_others_still_run(tmp_path, titles_file):
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "rows.json"
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", "--dataset", str(titles_file), "--base", str(base),
                           "--ablate", "batch_size=4096", "--ablate", "mlp=relu2", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    rows = json.loads(out.read_text())
    assert [r["run"] for r in rows] == ["base", "batch_size=4096", "mlp=relu2"]
    assert rows[1]["error"].startswith("ScoringError: the training stream has")
    assert "error" not in rows[0] and "error" not in rows[2] and 0 < rows[2]["val_loss"] < 10
    assert "batch_size=4096" in proc.stdout and "failed: ScoringError" in proc.stdout


def test_search_mode_reports_throughput_per_worker_count(tmp_path, titles_file):
    rows, stdout = bench(tmp_path, "--dataset", str(titles_file), "--search", str(SPACES / "smoke.yaml"),
                         "--trials", "2", "--jobs", "1,2", "--pruner", "none")
    assert [r["jobs"] for r in rows] == [1, 2]
    for r in rows:
        assert r["exit_code"] == 0 and r["finished"] == 2 and r["pruned"] == 0 and r["failed"] == 0
        assert r["device_s"] > 0
        # no pruning: every finished trial is one full run
        assert abs(r["full_runs_per_hour"] - r["trials_per_hour"]) < 1e-6 * r["trials_per_hour"]
    assert "trials/h" in stdout and "full runs/h" in stdout


def test_a_runs_entry_is_a_preset_with_precision_eager_and_overrides():
    cfg = _preset_config("report-003:bf16:eager:compile=model", "titles.txt")
    assert (cfg.d_model, cfg.mlp, cfg.lr) == (PRESETS["report-003"]["d_model"], "swiglu", PRESETS["report-003"]["lr"])
    assert (cfg.precision, cfg.cuda_graph, cfg.compile, cfg.dataset) == ("bf16", False, "model", "titles.txt")
    plain = _preset_config("baseline", "titles.txt")
    assert (plain.precision, plain.cuda_graph, plain.compile) == ("auto", True, "auto")
    assert _preset_config("baseline:compile=regional", "t.txt").compile == "regional"   # precision may be left out


@pytest.mark.parametrize("spec, message", [
    ("nope:bf16", "unknown preset 'nope'"),
    ("baseline:bf16:compile=fast", "must be one of auto, none, regional, model"),
    ("baseline:bf17", "must be one of auto, bf16, fp32"),
    ("baseline:bf16:lr", "expects KEY=VALUE"),
])
def test_a_bad_runs_entry_is_refused_before_anything_runs(tmp_path, spec, message):
    with pytest.raises(ConfigError, match=message):
        _preset_config(spec, "titles.txt")
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", "--dataset", "missing.txt", "--runs", spec],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--search", "missing.yaml"], "missing.yaml: file not found"),
    (["--search", str(SPACES / "smoke.yaml"), "--jobs", "1,1"], "each worker count at least 1, and each once"),
    (["--search", str(SPACES / "smoke.yaml"), "--jobs", "0"], "each worker count at least 1"),
])
def test_a_bad_search_benchmark_is_refused_before_anything_runs(tmp_path, args, message):
    proc = subprocess.run([sys.executable, "-m", "mainrun.bench", "--dataset", "missing.txt", *args],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_checkpoint_costs_are_measured_per_save(tmp_path, titles_file):
    """--checkpoint: a save at every evaluation (but step 1's and the last), timed and sized, and what
    the default rule would save; the figures a GPU session fills into docs/performance.md."""
    from mainrun.checkpoint import CHECKPOINT_SHARE
    from mainrun.config import RunConfig
    from mainrun.train import eval_steps
    base = tmp_path / "tiny.yaml"
    base.write_text(yaml.safe_dump(TINY))
    rows, stdout = bench(tmp_path, "--dataset", str(titles_file), "--base", str(base), "--checkpoint")
    r = rows[0]
    cfg = RunConfig.from_dict(TINY)
    assert r["ckpt_saves"] == len(eval_steps(cfg, r["steps_per_epoch"])) - 2
    assert r["ckpt_save_s"] > 0 and r["ckpt_mb"] > 0 and r["ckpt_share_every_eval"] > 0
    assert 0 <= r["ckpt_default_saves"] <= r["ckpt_saves"]
    assert r["ckpt_default_interval_s"] == pytest.approx(r["ckpt_save_s"] / CHECKPOINT_SHARE)
    assert "s/save" in stdout and "% every eval" in stdout and "default saves" in stdout
