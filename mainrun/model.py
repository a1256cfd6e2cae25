"""The GPT model: Mainrun's baseline and the variants a search can switch on, in reading order.

Baseline: learned positional embedding, pre-LayerNorm blocks, causal self-attention,
GELU MLP (4x), dropout, tied output head, weights N(0, 0.02), biases zero.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from .config import RunConfig


class Dropout(nn.Module):
    """nn.Dropout(p), but torch.compile reads p at run time instead of baking it into the graph.
    A float p is a constant to dynamo, so each dropout value of a shape would compile anew (on an
    H100 a cold compile was ~15 s of a ~23 s trial, and a search samples dropout); as a tensor it is
    a graph input, and one compiled graph serves every rate. Eagerly it is nn.Dropout's own call
    with the float, so an uncompiled run draws the very masks it always did."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        # float64: exactly the float p; a plain attribute, not a buffer, so model.to("cuda")
        # leaves it on the CPU, where reading it never waits for the GPU (or breaks a graph capture)
        self.rate = torch.tensor(p, dtype=torch.float64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if torch.compiler.is_compiling():
            keep = torch.rand_like(x, dtype=torch.float32) >= self.rate
            return x * keep / (1.0 - self.rate)
        return F.dropout(x, self.p, training=True)


def make_dropout(p: float) -> nn.Module:
    """No module at all without dropout: a compiled graph then draws no random numbers."""
    return Dropout(p) if p > 0 else nn.Identity()


def make_norm(cfg: RunConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim)
    return nn.LayerNorm(dim, bias=cfg.bias)


class Rotary(nn.Module):
    """Rotary position embedding (RoPE) applied to queries and keys."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        angles = torch.outer(torch.arange(max_len).float(), inv_freq)      # (T, head_dim/2)
        self.register_buffer("cos", angles.cos()[None, None], persistent=False)
        self.register_buffer("sin", angles.sin()[None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:                    # x: (B, H, T, D)
        T = x.size(-2)
        x1, x2 = x[..., 0::2], x[..., 1::2]
        cos, sin = self.cos[..., :T, :].to(x.dtype), self.sin[..., :T, :].to(x.dtype)
        return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


@torch.compiler.disable
def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: Dropout) -> torch.Tensor:
    """Causal attention with dropout on its probabilities, left out of compiled graphs: SDPA takes
    dropout_p as a float only, which would make the rate a graph constant again (see Dropout).
    In a compiled block it runs between two graphs, as the same kernel a compiled SDPA calls."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=dropout.p)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.attn_drop = make_dropout(cfg.dropout)        # its rate, for attention_with_dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.resid_drop = make_dropout(cfg.dropout)
        self.rotary = Rotary(cfg.head_dim, max(cfg.block_size, cfg.eval_block_size)) if cfg.pos_emb == "rope" else None
        self.q_norm = nn.RMSNorm(cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = nn.RMSNorm(cfg.head_dim) if cfg.qk_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        if self.training and isinstance(self.attn_drop, Dropout):
            y = attention_with_dropout(q, k, v, self.attn_drop)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, C)
        return self.resid_drop(self.proj(y))


class MLP(nn.Module):
    """gelu: the baseline's Linear-GELU-Linear; relu2: squared ReLU; swiglu: SiLU-gated, with
    2/3 of the hidden width per branch so that its parameter count matches the others."""

    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.kind = cfg.mlp
        hidden = int(cfg.mlp_ratio * cfg.d_model)
        if self.kind == "swiglu":
            hidden = 64 * math.ceil(hidden * 2 / 3 / 64)
            self.gate = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.up = nn.Linear(cfg.d_model, hidden, bias=cfg.bias)
        self.down = nn.Linear(hidden, cfg.d_model, bias=cfg.bias)
        self.drop = make_dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            h = F.relu(self.up(x)).square()
        else:
            h = F.gelu(self.up(x))
        return self.drop(self.down(h))


class Block(nn.Module):
    def __init__(self, cfg: RunConfig):
        super().__init__()
        self.ln1 = make_norm(cfg, cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class TokenLoss(nn.Module):
    """Token cross-entropy in fp32 whatever the autocast dtype. A module of its own so that
    regional compilation can fuse the cast, the log-softmax over the vocabulary and the target
    gather (and their backward) instead of materialising fp32 copies of the logits."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), reduction=reduction)


class GPT(nn.Module):
    def __init__(self, cfg: RunConfig, vocab_size: int):
        super().__init__()
        self.block_size = cfg.block_size
        self.token_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.block_size, cfg.d_model)) if cfg.pos_emb == "learned" else None
        self.drop = make_dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layer)])
        self.ln_f = make_norm(cfg, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self.loss = TokenLoss()
        self._init_weights(cfg)
        if cfg.tie_embeddings:
            self.head.weight = self.token_emb.weight

    def _init_weights(self, cfg: RunConfig) -> None:
        """init: every Linear and Embedding weight N(0, 0.02), biases zero (the baseline); with
        kaiming the blocks' Linear weights are N(0, 2 / fan_in) instead (He; the embeddings and
        the head keep 0.02, which keeps the first loss near ln(vocab)). residual_init then redraws
        the blocks' output projections, in the same order as before it had a name, so that an
        old `scaled_residual_init: true` config gets the very same weights."""
        in_blocks = {id(m) for m in self.blocks.modules()}
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=_init_std(cfg, module, id(module) in in_blocks))
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            for proj in (block.attn.proj, block.mlp.down):
                if cfg.residual_init == "scaled":    # GPT-2: keep the residual stream's variance flat in depth
                    nn.init.normal_(proj.weight, mean=0.0, std=_init_std(cfg, proj, True) / math.sqrt(2 * cfg.n_layer))
                elif cfg.residual_init == "zero":    # every block starts as the identity (modded-nanogpt)
                    nn.init.zeros_(proj.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean") -> tuple[torch.Tensor, torch.Tensor | None]:
        T = idx.size(1)
        x = self.token_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb[:, :T, :]
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))
        if targets is None:
            return logits, None
        return logits, self.loss(logits, targets, reduction)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


def _init_std(cfg: RunConfig, module: nn.Module, in_block: bool) -> float:
    if cfg.init == "kaiming" and in_block and isinstance(module, nn.Linear):
        return math.sqrt(2.0 / module.in_features)     # torch's kaiming_normal_(nonlinearity="relu"), fan_in
    return 0.02
