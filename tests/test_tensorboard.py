"""TensorBoard event files of a real tiny run, read back with TensorBoard's own reader; and
mainrun-train --tensorboard, with and without the package (and its robustness-run note)."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml

from helpers import TINY
from mainrun.cli import train_main
from mainrun.config import RunConfig
from mainrun.data import prepare_data
from mainrun.train import train

TAGS = {"train/loss", "val/loss", "lr", "tokens/s"}


def read_scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def as_float32(curve):
    """What TensorBoard keeps of a curve: the values in float32."""
    return [(step, float(np.float32(value))) for step, value in curve]


def test_a_run_writes_its_curves_and_tensorboard_reads_them_back(tiny_config, tmp_path):
    from mainrun.tensorboard import TensorBoardWriter
    cfg = tiny_config.replace(epochs=1, schedule="warmup_cosine", warmup_steps=5)
    data = prepare_data(cfg, log=lambda _m: None)
    writer = TensorBoardWriter(tmp_path / "tb" / "run", cfg)
    try:
        result = train(cfg, data, device="cpu", progress=False, echo=None, observers=[writer])
    finally:
        writer.close()
    scalars = read_scalars(tmp_path / "tb" / "run")
    assert set(scalars) == TAGS
    assert scalars["val/loss"] == as_float32(result.curve)
    assert scalars["train/loss"] == as_float32(result.train_curve)
    assert scalars["lr"] == as_float32(result.lr_curve)
    assert [s for s, _ in scalars["tokens/s"]] == [s for s, _ in result.train_curve]
    assert all(v > 0 for _, v in scalars["tokens/s"])
    assert scalars["lr"][0][1] < scalars["lr"][1][1]          # the warmup is visible


def write_config(tmp_path, titles_file, **changes):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({**TINY, "dataset": str(titles_file), "epochs": 1, **changes}))
    return path


def test_mainrun_train_tensorboard_writes_one_run_folder_per_run(tmp_path, titles_file, capsys):
    config = write_config(tmp_path, titles_file)
    argv = ["--config", str(config), "--device", "cpu", "--no-progress", "--log", str(tmp_path / "run.jsonl"),
            "--tensorboard", str(tmp_path / "tb")]
    assert train_main(argv) == 0
    assert train_main(argv + ["--set", "train_seed=5"]) == 0
    out = capsys.readouterr().out
    runs = sorted(p for p in (tmp_path / "tb").iterdir())
    assert len(runs) == 2                                      # a second run does not draw into the first
    assert out.count("tensorboard: ") == 2 and f"tensorboard --logdir {tmp_path / 'tb'}" in out
    # the robustness run says what it is, in one line
    assert out.count("a robustness run") == 1 and "train_seed 5 is not seed 1337" in out
    events = [json.loads(line) for line in (tmp_path / "run.jsonl").read_text().splitlines()]
    val = [(e["step"], e["loss"]) for e in events if e["event"] == "validation_step"]
    second = read_scalars(runs[1])
    assert set(second) == TAGS
    assert second["val/loss"] == as_float32(val)              # the log is the second run's
    assert read_scalars(runs[0])["val/loss"] != second["val/loss"]


def test_mainrun_train_tensorboard_without_the_package_exits_2_before_any_work(tmp_path, titles_file,
                                                                                 monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)     # what `import tensorboard` meets when it is absent
    config = write_config(tmp_path, titles_file)
    cache = tmp_path / "cache"
    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(config), "--device", "cpu", "--no-progress", "--log", str(tmp_path / "run.jsonl"),
                    "--cache-dir", str(cache), "--tensorboard", str(tmp_path / "tb")])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: TensorBoard logging needs the tensorboard package") and "pip install" in err
    assert not (tmp_path / "run.jsonl").exists() and not (tmp_path / "tb").exists() and not cache.exists()


def test_a_tensorboard_folder_that_cannot_be_made_exits_2(tmp_path, titles_file, capsys):
    (tmp_path / "taken").write_text("a file, not a folder")
    with pytest.raises(SystemExit) as info:
        train_main(["--config", str(write_config(tmp_path, titles_file)), "--device", "cpu", "--no-progress",
                    "--log", str(tmp_path / "run.jsonl"), "--tensorboard", str(tmp_path / "taken")])
    assert info.value.code == 2
    assert f"--tensorboard {tmp_path / 'taken'}: cannot make" in capsys.readouterr().err
    assert not (tmp_path / "run.jsonl").exists()


def test_the_config_goes_with_the_events(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mainrun.tensorboard import TensorBoardWriter
    cfg = RunConfig.from_dict({**TINY, "grad_accum_steps": 2})
    TensorBoardWriter(tmp_path / "run", cfg).close()
    events = EventAccumulator(str(tmp_path / "run"))
    events.Reload()
    [text] = events.Tensors("config/text_summary")
    assert "grad_accum_steps: 2" in text.tensor_proto.string_val[0].decode()
