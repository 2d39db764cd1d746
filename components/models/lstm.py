"""LSTM text classifier in one file; imports only torch.

The default is the design this project started from: a word embedding, two stacked LSTM
layers of 128 units, and a linear layer over the classes (softmax through the
cross-entropy loss). Options: a bidirectional LSTM and masked mean pooling.

Padding never leaks into a text's representation, without packed sequences (which are
several times slower on the CPU, forward and backward): the forward direction runs over the
right-padded batch, so its output at a text's last real token has seen no padding, and the
backward direction runs over each text reversed *within its length* (padding stays at the
end) and is flipped back. "last" pooling takes the forward state after the last real token
(and, when bidirectional, the backward state after reading back to the first token);
"mean" averages the outputs over the real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class LSTMConfig:
    vocab_size: int
    num_classes: int
    embed_dim: int = 128
    hidden_size: int = 128
    num_layers: int = 2
    bidirectional: bool = False
    dropout: float = 0.2  # on the embeddings, between LSTM layers and before the head
    pooling: str = "last"  # "last" (state after the last real token) or "mean" (masked mean)
    pad_id: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in ("last", "mean"):
            raise ValueError(f"pooling must be 'last' or 'mean', got {self.pooling!r}")


def reverse_within_length(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B, T) gather index that reverses the first lengths[b] positions of each row (its own inverse)."""
    positions = torch.arange(T, device=lengths.device).unsqueeze(0)  # (1, T)
    last = lengths.unsqueeze(1) - 1  # (B, 1)
    return torch.where(positions <= last, last - positions, positions)  # (B, T)


class LSTMClassifier(nn.Module):
    def __init__(self, config: LSTMConfig):
        super().__init__()
        self.config = config
        H = config.hidden_size
        directions = 2 if config.bidirectional else 1
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_id)
        sizes = [config.embed_dim] + [H * directions] * (config.num_layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(n, H, batch_first=True) for n in sizes)
        self.backward_layers = nn.ModuleList(
            nn.LSTM(n, H, batch_first=True) for n in (sizes if config.bidirectional else [])
        )
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(H * directions, config.num_classes)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token embedding table (what ``embedding_init`` overwrites)."""
        return self.embedding

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """ids (B, T) right-padded with pad_id, lengths (B,) real tokens per row -> logits (B, C)."""
        B, T = ids.shape
        H = self.config.hidden_size
        lengths = lengths.clamp(min=1, max=T)
        x = self.dropout(self.embedding(ids))  # (B, T, E)
        reverse = reverse_within_length(lengths, T) if self.config.bidirectional else None
        for i, forward_lstm in enumerate(self.forward_layers):
            out, _ = forward_lstm(x)  # (B, T, H)
            if reverse is not None:
                r = reverse.unsqueeze(-1)
                backward, _ = self.backward_layers[i](x.gather(1, r.expand(-1, -1, x.size(-1))))  # (B, T, H)
                out = torch.cat([out, backward.gather(1, r.expand(-1, -1, H))], dim=-1)  # (B, T, 2H)
            x = self.dropout(out) if i < len(self.forward_layers) - 1 else out
        if self.config.pooling == "last":
            rows = torch.arange(B, device=ids.device)
            pooled = x[rows, lengths - 1, :H]  # (B, H) forward state after the last real token
            if reverse is not None:
                pooled = torch.cat([pooled, x[:, 0, H:]], dim=-1)  # (B, 2H) + backward state at the first
        else:
            real = torch.arange(T, device=ids.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)
            mask = real.unsqueeze(-1)  # (B, T, 1)
            pooled = (x * mask).sum(dim=1) / lengths.unsqueeze(1).to(x.dtype)  # (B, D)
        return self.head(self.dropout(pooled))  # (B, C)

    def loss(self, ids: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(ids, lengths), targets)
