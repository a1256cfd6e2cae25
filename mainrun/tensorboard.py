"""TensorBoard event files for a run: train/loss, val/loss, lr and tokens/s against the step.

`TensorBoardWriter(run_dir)` is a `RunObserver`: hand it to `train(..., observers=[...])`, close
it afterwards, and `tensorboard --logdir` the folder above `run_dir`, where every run (or trial)
has a folder of its own. The `tensorboard` package is optional (`pip install 'mainrun[tensorboard]'`).
"""
from __future__ import annotations

import time
from pathlib import Path

from .config import RunConfig
from .errors import MainrunError
from .train import RunObserver

INSTALL_HINT = "pip install 'mainrun[tensorboard]' (or: pip install tensorboard)"


class TensorBoardError(MainrunError):
    """TensorBoard logging cannot work here: the package is missing or the folder is not writable."""


def summary_writer_class():
    """torch's SummaryWriter, or TensorBoardError saying what to install. Checked before a run
    starts, so that a missing package costs seconds, not a finished run's curves."""
    try:
        import tensorboard  # noqa: F401 - torch.utils.tensorboard needs it, and says so less clearly
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise TensorBoardError(f"TensorBoard logging needs the tensorboard package, which is not installed "
                               f"({e}): {INSTALL_HINT}") from None
    return SummaryWriter


def new_run_dir(root: str | Path, prefix: str = "train") -> Path:
    """A fresh folder under `root` for one run, named by the time it started, and made: TensorBoard
    shows each folder as a run, and two runs written into one folder would draw as one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = Path(root) / f"{prefix}-{stamp}", 1
    try:
        while path.exists():
            n += 1
            path = Path(root) / f"{prefix}-{stamp}-{n}"
        path.mkdir(parents=True)
    except OSError as e:
        raise TensorBoardError(f"--tensorboard {root}: cannot make {path} ({e.strerror or e})") from None
    return path


class TensorBoardWriter(RunObserver):
    """Writes one run's curves into `run_dir` (created). The tags: train/loss (the mean over each
    read of the loss buffer), lr, tokens/s, val/loss; the step is the training step."""

    def __init__(self, run_dir: str | Path, cfg: RunConfig | None = None):
        writer_class = summary_writer_class()
        self.run_dir = Path(run_dir)
        self.writer = writer_class(log_dir=str(self.run_dir))
        if cfg is not None:                  # the config in TensorBoard's text tab, as mainrun-train reads it
            self.writer.add_text("config", "```\n" + cfg.to_yaml() + "```", global_step=0)

    def on_train(self, step: int, loss: float, lr: float, tokens_per_second: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("lr", lr, step)
        self.writer.add_scalar("tokens/s", tokens_per_second, step)

    def on_validation(self, index: int, step: int, loss: float) -> None:
        self.writer.add_scalar("val/loss", loss, step)

    def close(self) -> None:
        self.writer.close()
