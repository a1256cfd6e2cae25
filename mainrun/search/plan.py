"""mainrun-search --dry-run: what the search would sample and how big its models get, from the
space file alone. Nothing is created, no data is read and nothing is trained."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from ..config import RunConfig
from ..formats import GIB, byte_size, param_count, param_value
from ..space import load_space
from .console import Echo, say

if TYPE_CHECKING:
    from .run import SearchOptions

# The fields that decide a model's size and memory: what --dry-run names for the largest corner.
MEMORY_FIELDS = ("d_model", "n_layer", "n_head", "mlp", "mlp_ratio", "vocab_size", "block_size", "batch_size",
                 "optimizer", "pos_emb", "qk_norm", "tie_embeddings", "precision")


def plan_search(opts: SearchOptions, echo: Echo = say) -> int:
    """Print the plan: the policy, the fixed fields, each param's range, and the model size and
    peak memory (by estimate) of each enqueued config and of the largest corner of the space."""
    import torch

    from ..memory import estimate_memory_bytes, model_shape
    from .objective import memory_budget

    space = load_space(opts.space, opts.sampler, opts.pruner)
    base = opts.base_config(space)
    on_gpu = opts.uses_gpu() or not space.cpu_ok          # a GPU space is sized for the GPU it will run on
    device = torch.device("cuda" if on_gpu else "cpu")

    def need(cfg: RunConfig) -> int:
        return estimate_memory_bytes(cfg, cfg.vocab_size, device)

    def size(cfg: RunConfig) -> str:
        n_params, _ = model_shape(cfg, cfg.vocab_size)
        return f"{param_count(n_params):>8} params  ~{byte_size(need(cfg))}"

    def policy(spec: dict[str, Any]) -> str:
        options = {k: v for k, v in spec.items() if k != "name"}
        return spec["name"] + (f" {options}" if options else "")

    echo(f"dry run of {opts.space}: study '{opts.study or Path(opts.space).stem}', {opts.trials} trials "
         f"(nothing is created, read or trained)")
    echo(f"sampler {policy(space.sampler)}; pruner {policy(space.pruner)}")
    if space.fixed:
        echo("fixed: " + ", ".join(f"{k}={param_value(v, 3)}" for k, v in space.fixed.items()))
    echo(f"params ({len(space.params)}):")
    width = max(14, *(len(p.name) + 2 for p in space.params))
    for p in space.params:
        echo(f"  {p.name:<{width}}{p.describe()}")
    where = "a GPU, bf16 autocast" if on_gpu else "the CPU, fp32"
    echo(f"model sizes and peak memory by estimate (on {where}; vocab {base.vocab_size} as configured):")
    for label, params in space.enqueue:
        echo(f"  {'enqueued ' + label:<28}{size(space.suggest(optuna.trial.FixedTrial(params), base))}")
    corners = [space.to_config(values, base) for values in space.corners(base)]
    needs = [need(c) for c in corners]
    largest = corners[needs.index(max(needs))]
    shape = " ".join(f"{k}={param_value(getattr(largest, k), 3)}" for k in MEMORY_FIELDS
                     if getattr(largest, k) != getattr(base, k))
    echo(f"  {'largest of ' + str(len(corners)) + ' corners':<28}{size(largest)}  {shape}")
    if opts.memory_budget_gib:
        over = sum(n > opts.memory_budget_gib * GIB for n in needs)
        echo(f"--memory-budget {opts.memory_budget_gib:g} GiB: {over} of the {len(corners)} corners would be refused")
    if device.type == "cuda" and not torch.cuda.is_available():
        echo("default budget: a GPU's memory divided by the workers sharing it (no GPU here to size it)")
    else:
        budget = memory_budget(device, None, opts.jobs_per_gpu if opts.gpus else opts.jobs)
        if budget is not None:
            over = sum(n > budget[0] for n in needs)
            echo(f"default budget ({budget[1]}): {over} of the {len(corners)} corners would be refused")
    return 0
