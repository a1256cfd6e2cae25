"""The optimizers a run config names, built for the fast path: fused kernels, the learning rate
in a device tensor (a captured step reads the current value; setting it never syncs), weight
decay where the config says. The schedule that sets the lr each step is train.lr_factor."""
from __future__ import annotations

import torch

from .config import RunConfig
from .model import GPT


def make_optimizer(cfg: RunConfig, model: GPT, device: torch.device,
                   capturable: bool = False) -> "torch.optim.Optimizer | Optimizers":
    """Fused kernels: one launch for the whole update. The learning rate lives in a device
    tensor, so a captured step reads the current value and setting it never syncs.
    muon: torch's Muon on the blocks' weight matrices with its AdamW-matching lr scale, so
    that one lr and weight decay serve both halves; AdamW on everything else."""
    groups = param_groups(cfg, model)
    lr = torch.tensor(cfg.lr, device=device)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, fused=True)
    if cfg.optimizer == "adamw":
        return _adamw(cfg, groups, lr, capturable)
    hidden = {id(m.weight) for m in model.blocks.modules() if isinstance(m, torch.nn.Linear)}
    matrices = [p for g in groups for p in g["params"] if id(p) in hidden]
    rest = [{**g, "params": [p for p in g["params"] if id(p) not in hidden]} for g in groups]
    # Muon reads its lr as a Python number (a tensor lr would sync every step)
    muon = torch.optim.Muon(matrices, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.muon_momentum,
                            adjust_lr_fn="match_rms_adamw")
    return Optimizers(muon, _adamw(cfg, [g for g in rest if g["params"]], lr, capturable))


def _adamw(cfg: RunConfig, groups: list[dict], lr: torch.Tensor, capturable: bool) -> torch.optim.AdamW:
    return torch.optim.AdamW(groups, lr=lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=True, capturable=capturable)


class Optimizers:
    """Several optimizers over disjoint parameters, stepped as one."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.optimizers for g in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)


def param_groups(cfg: RunConfig, model: torch.nn.Module) -> list[dict]:
    """One group (the baseline decays everything), or with decay_all false: weight decay on
    the matrices of Linear layers only, none on norms, biases and embeddings."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.decay_all:
        return [{"params": params}]
    # the matrices of Linear layers, less the embedding (a tied head shares it)
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)} - {id(model.token_emb.weight)}
    decay = [p for p in params if id(p) in decayed]
    rest = [p for p in params if id(p) not in decayed]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr
