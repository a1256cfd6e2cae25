"""A training run's peak device memory, estimated from its config before anything is allocated:
what a search refuses a trial by, and what --dry-run sizes a space's corners with."""
from __future__ import annotations

import functools

import torch

from .config import RunConfig
from .formats import GIB
from .model import GPT
from .train import resolve_precision

CUDA_OVERHEAD_BYTES = GIB      # CUDA context, cuBLAS workspaces and allocator slack, per process


def estimate_memory_bytes(cfg: RunConfig, vocab_size: int, device: torch.device) -> int:
    """The peak device memory of a training run, from its config alone, before anything is
    allocated: weights, grads and optimizer state; what autograd saves per token and layer;
    the logits and their fp32 loss; the scoring window's own pool. Deliberately on the high
    side: it is used to refuse a trial that cannot fit, and `python -m mainrun.bench` prints
    it beside the measured peak. Everything per token is per micro-batch (batch_size): gradient
    accumulation keeps one micro-batch's activations at a time and adds no memory of its own."""
    n_params, hidden = model_shape(cfg, vocab_size)
    bf16 = resolve_precision(cfg, device) == "bf16"
    act = 2 if bf16 else 4                             # bytes per activation element
    state = {"adamw": 8, "muon": 8, "sgd": 4 if cfg.momentum > 0 else 0}[cfg.optimizer]
    per_param = 4 + 4 + state + (2 if bf16 else 0)     # weight, grad, state, saved bf16 cast
    d = cfg.d_model
    mlp_saved = (6 if cfg.mlp == "swiglu" else 3) * hidden
    attn_saved = (6 + (2 if cfg.pos_emb == "rope" else 0)) * d
    # Under bf16 autocast two things keep fp32 copies (measured on an H100 against
    # max_memory_allocated): QK-norm's RMSNorm, whose fp32 weight sends bf16 q and k to the
    # unfused path, and relu2's square(), which autocast runs in fp32.
    qk_norm = (16 if bf16 else 8) * d if cfg.qk_norm else 0
    relu2_copy = 4 * hidden if bf16 and cfg.mlp == "relu2" else 0
    # per token and layer (bytes): the fp32 residual stream at both norms, the block's
    # intermediates, the dropout masks
    per_token_layer = (8 * d + act * (attn_saved + mlp_saved) + qk_norm + relu2_copy
                       + (2 * d if cfg.dropout > 0 else 0))
    train_tokens = cfg.batch_size * cfg.block_size
    logits = train_tokens * vocab_size * (2 * act + 8)   # logits and their grad, fp32 copy and log-softmax
    scoring = cfg.eval_batch_size * cfg.eval_block_size * vocab_size * (act + 8)
    overhead = CUDA_OVERHEAD_BYTES if device.type == "cuda" else 0
    # Attention dropout: CUDA's fused kernels apply it inside the kernel; elsewhere SDPA's math
    # path keeps the (B, heads, T, T) probabilities, their dropout mask and the dropped copy.
    attn_probs = (cfg.batch_size * cfg.n_head * cfg.block_size ** 2 * (2 * act + 1 + 4)
                  if cfg.dropout > 0 and device.type != "cuda" else 0)
    return (n_params * per_param + cfg.n_layer * (train_tokens * per_token_layer + attn_probs)
            + logits + scoring + overhead)


# Fields that cannot change a model's parameter shapes: configs differing only in these (and in
# depth) share one meta-device build in model_shape (a search's dry run sizes thousands of corners).
NOT_SHAPE = ("dataset", "num_titles", "val_frac", "seed", "train_seed", "dropout", "init", "residual_init",
             "grad_accum_steps", "epochs", "optimizer", "lr", "weight_decay", "decay_all", "momentum", "nesterov",
             "muon_momentum", "beta1", "beta2", "eps", "schedule", "warmup_steps", "min_lr_frac", "decay_frac",
             "grad_clip", "precision", "cuda_graph", "compile", "evals_per_epoch", "mainrun_rules")


def model_shape(cfg: RunConfig, vocab_size: int) -> tuple[int, int]:
    """(parameter count, MLP hidden width) of the model `cfg` builds, from a one-block build on
    the meta device: shapes only, nothing is allocated. The blocks are identical, so the count
    is linear in depth (a meta build costs ~50 ms, mostly weight init, and a dry run sizes
    hundreds of shapes)."""
    shape = tuple((k, v) for k, v in cfg.to_dict().items() if k not in NOT_SHAPE and k != "n_layer")
    outside, per_block, hidden = _one_block_shape(vocab_size, shape)
    return outside + cfg.n_layer * per_block, hidden


@functools.lru_cache(maxsize=1024)
def _one_block_shape(vocab_size: int, shape: tuple) -> tuple[int, int, int]:
    """(params outside the blocks, params per block, MLP hidden width)."""
    with torch.device("meta"):
        model = GPT(RunConfig.from_dict({**dict(shape), "n_layer": 1, "mainrun_rules": False}), vocab_size)
    per_block = sum(p.numel() for p in model.blocks[0].parameters())
    return model.num_params() - per_block, per_block, model.blocks[0].mlp.up.out_features
