"""Transformer encoder text classifier in one file; imports only torch.

Token + learned position embeddings, pre-norm blocks (LayerNorm -> bidirectional
self-attention, LayerNorm -> MLP, a residual around each) with ``F.scaled_dot_product_attention``
and a key-padding mask, a final LayerNorm, masked mean pooling over the real tokens and a
linear head over the classes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.models.config_checks import require_dropout


@dataclass
class TransformerConfig:
    vocab_size: int
    num_classes: int
    max_length: int = 256  # positions the model knows; longer inputs must be truncated
    dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 4
    dropout: float = 0.1
    # Dropout on the attention weights (None: `dropout`). On a 2-core CPU it was half of every
    # training step (batch 32 x 256 tokens: 571-673 ms with 0.3, 295-317 ms with 0).
    attention_dropout: float | None = None
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        require_dropout(self.dropout)
        if self.attention_dropout is not None:
            require_dropout(self.attention_dropout)


class SelfAttention(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.dim, 3 * config.dim)
        self.proj = nn.Linear(config.dim, config.dim)
        attention_dropout = config.attention_dropout
        self.dropout = config.dropout if attention_dropout is None else attention_dropout
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, D), attn_mask (B, 1, 1, T) True where a key is a real token."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q, k, v = (
            t.view(B, T, self.num_heads, D // self.num_heads).transpose(1, 2) for t in (q, k, v)
        )  # (B, h, T, d)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, T, d)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, D)))  # heads side by side: (B, T, D)


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.dim, config.mlp_ratio * config.dim)
        self.proj = nn.Linear(config.mlp_ratio * config.dim, config.dim)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))  # (B, T, D)


class Block(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.dim)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class TransformerClassifier(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.dim, padding_idx=config.pad_id)
        self.pos_emb = nn.Embedding(config.max_length, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        self.ln_f = nn.LayerNorm(config.dim)
        self.head = nn.Linear(config.dim, config.num_classes)
        self.apply(self._init_weights)
        for name, p in self.named_parameters():  # scaled init of the residual projections (GPT-2)
            if name.endswith("proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.num_layers))
        with torch.no_grad():
            self.tok_emb.weight[config.pad_id].zero_()

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token embedding table (what ``embedding_init`` overwrites)."""
        return self.tok_emb

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) padded with pad_id, lengths (B,) real tokens per row -> logits (B, C)."""
        B, T = ids.shape
        if T > self.config.max_length:
            raise ValueError(f"sequence length {T} exceeds max_length {self.config.max_length}")
        lengths = lengths.clamp(min=1, max=T)  # an empty text attends to its first (pad) position
        positions = torch.arange(T, device=ids.device)
        mask = positions.unsqueeze(0) < lengths.unsqueeze(1)  # (B, T) True on real tokens
        x = self.drop(self.tok_emb(ids) + self.pos_emb(positions))  # (B, T, D)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, T): every query may see the real keys
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.ln_f(x)  # (B, T, D)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1)  # (B, D) mean over real tokens
        return self.head(pooled)  # (B, C)

    def loss(self, ids: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(ids, lengths), targets)
