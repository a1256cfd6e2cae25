"""The memory estimate: above the measured peak but not far, and moved by what costs memory."""
from __future__ import annotations

import pytest
import torch

from mainrun.config import RunConfig
from mainrun.memory import CUDA_OVERHEAD_BYTES, estimate_memory_bytes, model_shape
from mainrun.model import GPT
from mainrun.optim import make_optimizer
from mainrun.train import TrainStep

MEM_BASE = {"mainrun_rules": False, "d_model": 128, "n_head": 4, "n_layer": 2, "batch_size": 16, "block_size": 64,
            "eval_batch_size": 16, "eval_block_size": 64}


def measured_peak_bytes(cfg: RunConfig, vocab: int, precision: str) -> int:
    """The peak memory of two real training steps on the CPU, tracked tensor by tensor."""
    from torch.distributed._tools.mem_tracker import MemTracker
    model = GPT(cfg, vocab)
    opt = make_optimizer(cfg, model, torch.device("cpu"))
    tracker = MemTracker()
    tracker.track_external(model, *getattr(opt, "optimizers", [opt]))
    x = torch.randint(0, vocab, (cfg.batch_size, cfg.block_size))
    with tracker:
        step = TrainStep(model, opt, cfg, torch.device("cpu"), precision)
        for update in range(2):                        # the second update also holds the optimizer state
            for micro in range(cfg.grad_accum_steps):
                if update or micro:
                    tracker.reset_mod_stats()          # MemTracker follows one call of the model at a time
                step(x, x, update=micro == cfg.grad_accum_steps - 1)
    return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]


@pytest.mark.parametrize("changes, vocab, precision", [
    ({}, 2000, "fp32"),
    ({"n_layer": 6}, 2000, "bf16"),
    ({"mlp": "swiglu", "pos_emb": "rope", "qk_norm": True, "dropout": 0.0}, 8000, "bf16"),
    ({"mlp": "relu2", "optimizer": "sgd", "momentum": 0.9}, 8000, "fp32"),
    ({"optimizer": "muon", "n_layer": 4}, 2000, "bf16"),
    ({"n_layer": 12}, 2000, "bf16"),                   # deep: the per-layer term dominates
    ({"grad_accum_steps": 3}, 2000, "fp32"),           # a group of micro-batches: one micro-batch's memory
])
def test_the_memory_estimate_is_above_the_measured_peak_but_not_far(changes, vocab, precision):
    cfg = RunConfig.from_dict({**MEM_BASE, "optimizer": "adamw", "vocab_size": vocab, **changes})
    estimate = estimate_memory_bytes(cfg.replace(precision=precision), vocab, torch.device("cpu"))
    peak = measured_peak_bytes(cfg, vocab, precision)
    assert peak <= estimate <= 1.8 * peak


def test_the_memory_estimate_grows_with_what_costs_memory():
    cfg = RunConfig.from_dict({**MEM_BASE, "optimizer": "adamw"})

    def estimate(device="cpu", precision="fp32", **changes):
        return estimate_memory_bytes(cfg.replace(precision=precision, **changes), 2000, torch.device(device))

    base = estimate()
    for changes in ({"batch_size": 32}, {"block_size": 128}, {"n_layer": 4}, {"d_model": 256}, {"mlp_ratio": 8.0}):
        assert estimate(**changes) > base, changes
    assert estimate(precision="bf16") < base
    assert estimate(optimizer="sgd") < base
    # accumulation keeps one micro-batch in flight; init, schedule and seed cost nothing
    for changes in ({"grad_accum_steps": 8}, {"init": "kaiming", "residual_init": "zero"},
                    {"schedule": "constant"}, {"train_seed": 3}):
        assert estimate(**changes) == base, changes
    # the context on a GPU only; attention dropout is fused into the kernel there
    no_dropout = estimate(dropout=0.0)
    assert estimate("cuda", dropout=0.0) == no_dropout + CUDA_OVERHEAD_BYTES
    assert estimate("cuda") - estimate("cuda", dropout=0.0) < base - no_dropout
    # the cached meta-device build counts what a real build has
    for changes in ({}, {"mlp": "swiglu"}, {"tie_embeddings": False, "bias": False}, {"qk_norm": True, "dropout": 0.3},
                    {"pos_emb": "rope", "norm": "rmsnorm", "optimizer": "sgd"}, {"n_layer": 5, "mlp": "relu2"}):
        c = cfg.replace(**changes)
        model = GPT(c, 2000)
        assert model_shape(c, 2000) == (model.num_params(), model.blocks[0].mlp.up.out_features)
