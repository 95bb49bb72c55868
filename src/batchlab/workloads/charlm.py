"""A small character-level transformer on the text of CPython's `pydoc_data.topics`.

Next-character prediction over windows of CONTEXT characters. The model's top-level blocks live in
`model.blocks`, so activation checkpointing has something to wrap.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from batchlab.workload import Target, Workload

CONTEXT = 64
EVAL_WINDOWS = 128
# Printable ASCII and newline; anything else (575 of ~465k characters) maps to one "unknown" id.
VOCAB = "\n" + "".join(chr(c) for c in range(32, 127))
UNKNOWN = len(VOCAB)
VOCAB_SIZE = len(VOCAB) + 1


@lru_cache(maxsize=1)
def _windows() -> tuple[torch.Tensor, torch.Tensor]:
    from pydoc_data.topics import topics

    text = "".join(topics[key] for key in sorted(topics))
    lookup = {ch: i for i, ch in enumerate(VOCAB)}
    ids = torch.tensor([lookup.get(ch, UNKNOWN) for ch in text], dtype=torch.long)
    n = (len(ids) - 1) // CONTEXT
    x = ids[: n * CONTEXT].view(n, CONTEXT)  # (N, T)
    y = ids[1 : n * CONTEXT + 1].view(n, CONTEXT)  # (N, T), shifted by one character
    # The last EVAL_WINDOWS windows (a contiguous stretch of text) are held out.
    return x, y


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then an MLP, each with a residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape  # (B, T, C)
        q, k, v = self.qkv(self.norm1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        attn = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, C/H)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.norm2(x))


class CharTransformer(nn.Module):
    def __init__(self, width: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.token = nn.Embedding(VOCAB_SIZE, width)
        self.position = nn.Parameter(torch.zeros(CONTEXT, width))
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, VOCAB_SIZE)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.token(idx) + self.position[: idx.shape[1]]  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))  # (B, T, V)


def next_char_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {"accuracy": (logits.argmax(dim=-1) == targets).float().mean().item()}


def _adamw(params, lr: float) -> torch.optim.Optimizer:  # type: ignore[no-untyped-def]
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.01)


def workload() -> Workload:
    x, y = _windows()
    return Workload(
        name="charlm",
        description=f"2-block character transformer, context {CONTEXT}, on CPython's pydoc text",
        model=CharTransformer,
        train_data=TensorDataset(x[:-EVAL_WINDOWS], y[:-EVAL_WINDOWS]),
        eval_data=TensorDataset(x[-EVAL_WINDOWS:], y[-EVAL_WINDOWS:]),
        loss=next_char_loss,
        optimizer=_adamw,
        batch_size=32,
        lr=3e-3,
        target=Target(metric="eval_loss", value=1.9, mode="min"),
        metrics=accuracy,
    )
