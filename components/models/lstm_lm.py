"""An LSTM language model: embedding → stacked LSTM → (projection) → output head; imports only torch.

With ``tie_weights`` the output head shares the embedding matrix; when the LSTM is wider
than the embedding a linear projection maps its output down to ``n_embd`` first. During
generation the recurrent state is carried from step to step, so each new token costs one
LSTM step whatever the length of the text so far. :class:`LSTMBatchDecoder` steps many
sequences at once: their states are stacked on the batch axis.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.models.config_checks import require_dropout, require_sizes

Sampler = Callable[[torch.Tensor], torch.Tensor]  # logits (B, V) -> next ids (B, 1)
State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (n_layer, B, hidden_size)


@dataclass
class LSTMLMConfig:
    vocab_size: int = 65
    block_size: int = 64  # training window (and the prompt crop); generation itself has no limit
    n_embd: int = 128
    hidden_size: int = 256
    n_layer: int = 2
    dropout: float = 0.0
    tie_weights: bool = True

    def __post_init__(self) -> None:
        require_sizes(self, ("vocab_size", "block_size", "n_embd", "hidden_size", "n_layer"))
        require_dropout(self.dropout)

    def to_dict(self) -> dict:
        return asdict(self)


class LSTMLanguageModel(nn.Module):
    def __init__(self, config: LSTMLMConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.lstm = nn.LSTM(
            config.n_embd,
            config.hidden_size,
            num_layers=config.n_layer,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
            batch_first=True,
        )
        head_in = config.hidden_size
        self.proj: nn.Module = nn.Identity()
        if config.tie_weights and config.hidden_size != config.n_embd:
            self.proj = nn.Linear(config.hidden_size, config.n_embd)
            head_in = config.n_embd
        self.lm_head = nn.Linear(head_in, config.vocab_size, bias=True)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight
        nn.init.normal_(self.wte.weight, mean=0.0, std=0.02 if config.tie_weights else 1.0)
        nn.init.zeros_(self.lm_head.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def step(self, idx: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """idx (B, T) → logits (B, T, V) and the state after the last token."""
        x = self.drop(self.wte(idx))  # (B, T, E)
        out, state = self.lstm(x, state)  # (B, T, H)
        logits = self.lm_head(self.proj(self.drop(out)))  # (B, T, V)
        return logits, state

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) from a zero state → logits (B, T, V) and, with targets (B, T), the mean loss."""
        logits, _ = self.step(idx)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, sample: Sampler | None = None, use_cache: bool = True
    ) -> torch.Tensor:
        """Append `max_new_tokens` tokens to idx (B, T); `sample` maps logits (B, V) to ids (B, 1).

        The prompt is cropped to the last block_size tokens; then the state is carried (with
        ``use_cache=False`` the whole cropped text is re-run each step, for testing). Returns
        (B, T + max_new_tokens).
        """
        return torch.cat((idx, *self.stream(idx, max_new_tokens, sample, use_cache)), dim=1)

    def stream(
        self, idx: torch.Tensor, max_new_tokens: int, sample: Sampler | None = None, use_cache: bool = True
    ) -> Iterator[torch.Tensor]:
        """`generate`, one new token (B, 1) at a time as it is sampled: the caller may stop early."""
        sample = sample or _greedy
        block_size = self.config.block_size
        start = max(0, idx.size(1) - block_size)  # first position the model reads
        logits, state = self.step(idx[:, start:])
        for i in range(max_new_tokens):
            idx_next = sample(logits[:, -1, :].float())  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next
            if i == max_new_tokens - 1:
                break
            if use_cache:
                logits, state = self.step(idx_next, state)
            else:
                logits, _ = self.step(idx[:, start:])


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1, keepdim=True)


@dataclass(eq=False)
class LSTMRow:
    """One sequence of an :class:`LSTMBatchDecoder`: its prefill state until it joins the batch."""

    own: State | None


class LSTMBatchDecoder:
    """Decode steps for many sequences at once, each as :meth:`LSTMLanguageModel.stream` decodes
    it alone: a prompt runs alone from a zero state, then the rows' states are stacked on the
    batch axis (restacked whenever the set of rows changes) and step together."""

    def __init__(self, model: LSTMLanguageModel):
        self.model = model
        self._members: list[LSTMRow] = []  # the rows of `_state`, in its batch order
        self._state: State | None = None

    def prefill(self, prompt_ids: list[int]) -> tuple[LSTMRow, torch.Tensor]:
        device = self.model.wte.weight.device
        idx = torch.tensor([prompt_ids[-self.model.config.block_size :]], dtype=torch.long, device=device)
        logits, state = self.model.step(idx)
        return LSTMRow(state), logits[:, -1, :]  # (1, V)

    def step(self, rows: Sequence[LSTMRow], last_ids: Sequence[int]) -> torch.Tensor:
        if self._state is None or list(map(id, rows)) != list(map(id, self._members)):
            self._restack(list(rows))
        idx = torch.tensor(
            [[token] for token in last_ids], dtype=torch.long, device=self.model.wte.weight.device
        )
        logits, self._state = self.model.step(idx, self._state)  # (B, 1, V)
        return logits[:, -1, :]

    def _restack(self, rows: list[LSTMRow]) -> None:
        where = {id(row): b for b, row in enumerate(self._members)}
        hs, cs = [], []
        for row in rows:
            h, c = (
                row.own
                if row.own is not None
                else (s[:, where[id(row)] : where[id(row)] + 1] for s in self._state)
            )
            hs.append(h)
            cs.append(c)
            row.own = None
        staying = {id(row) for row in rows}
        for row in self._members:  # a row that sits out a step keeps its state, to join again
            if id(row) not in staying:
                row.own = tuple(s[:, where[id(row)] : where[id(row)] + 1].clone() for s in self._state)
        self._members = rows
        self._state = (torch.cat(hs, dim=1), torch.cat(cs, dim=1))  # (n_layer, B, H) each
