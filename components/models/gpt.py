"""A GPT-style decoder in one file (after nanoGPT's ``model.py``); imports only torch.

Token + learned position embeddings, pre-norm blocks (LayerNorm → causal self-attention,
LayerNorm → MLP, residual around each), a final LayerNorm and an output head tied to the
token embedding. The MLP's activation is GELU (GPT-2, nanoGPT) or squared ReLU
(``activation: relu2``, from Primer, So et al. 2021), which learns faster in short CPU runs.
Attention uses ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where the
device has them) with one fused QKV projection.

Decoding can reuse keys and values through a :class:`KVCache`: the cache is filled by a
prefill pass over the prompt, then each step feeds one token. Because the position
embeddings are absolute, the cache only holds up to ``block_size`` positions; past that,
:meth:`GPT.generate` crops the context to the last ``block_size`` tokens and recomputes it
(exactly what an uncached decoder does), so cached and uncached decoding agree token for token.

Several sequences of different lengths decode together through :class:`GPTBatchDecoder`: their
cached keys and values are right-aligned in one cache, padded on the left, and the cache's
``pads`` give each row its own positions and mask its pad columns out of attention.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from components.models.config_checks import require_dropout, require_sizes

Sampler = Callable[[torch.Tensor], torch.Tensor]  # logits (B, V) -> next ids (B, 1)


def relu_squared(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x).square()


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"gelu": F.gelu, "relu2": relu_squared}


@dataclass
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm; False is a little better and faster
    activation: str = "gelu"  # the MLP's: "gelu" or "relu2" (squared ReLU)

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        require_sizes(self, ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"))
        require_dropout(self.dropout)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    def to_dict(self) -> dict:
        return asdict(self)


class KVCache:
    """Keys and values of every layer for the positions decoded so far.

    Buffers are allocated on the first write (so they take the dtype autocast produced) with
    room for ``max_len`` positions, and are written in place: no allocation per step.
    """

    def __init__(self, n_layer: int, max_len: int):
        self.n_layer = n_layer
        self.max_len = max_len
        self.length = 0  # positions already stored
        self.k: torch.Tensor | None = None  # (L, B, nh, max_len, hs)
        self.v: torch.Tensor | None = None
        # Left padding per row (rows of different lengths, right-aligned): None when there is none.
        self.pads: torch.Tensor | None = None  # (B,) unused columns at the start of each row
        self.min_pad = 0
        self._mask: tuple[tuple[int, int], torch.Tensor] | None = None

    def set_pads(self, pads: Sequence[int], device: torch.device) -> None:
        """Row b's first `pads[b]` columns are padding: masked out, and its positions start after them."""
        self.pads = torch.tensor(pads, dtype=torch.long, device=device) if any(pads) else None
        self.min_pad = min(pads) if pads else 0
        self._mask = None

    def key_mask(self, T: int) -> torch.Tensor:
        """(B, 1, T, length + T) bool: which keys each of the T new queries may attend to (pads set)."""
        past = self.length
        if self._mask is None or self._mask[0] != (past, T):
            cols = torch.arange(past + T, device=self.pads.device)
            mask = cols[None, :] >= self.pads[:, None]  # (B, S): not padding
            causal = torch.ones(T, past + T, dtype=torch.bool, device=self.pads.device).tril(diagonal=past)
            self._mask = ((past, T), mask[:, None, None, :] & causal)
        return self._mask[1]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, nh, T, hs) for `layer`; return all keys and values so far."""
        B, nh, T, hs = k.shape
        start, end = self.length, self.length + T
        if end > self.max_len:
            raise ValueError(f"KVCache overflow: {end} positions > max_len {self.max_len}")
        if self.k is None:
            shape = (self.n_layer, B, nh, self.max_len, hs)
            self.k = torch.empty(shape, dtype=k.dtype, device=k.device)
            self.v = torch.empty(shape, dtype=v.dtype, device=v.device)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]

    def advance(self, T: int) -> None:
        """Called once all layers have stored the new T positions."""
        self.length += T

    def reset(self) -> None:
        self.length = 0


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # fused q, k, v
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        B, T, C = x.size()
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)

        mask, is_causal = None, True
        if cache is not None:
            past = cache.length
            k, v = cache.update(layer, k, v)  # (B, nh, past + T, hs)
            if cache.pads is not None:
                mask, is_causal = cache.key_mask(T), False  # (B, 1, T, past + T)
            elif past > 0:
                is_causal = False
                if T > 1:  # query i sits at absolute position past + i and sees keys 0..past + i
                    mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.activation = ACTIVATIONS[config.activation]
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # scaled init of the residual projections (GPT-2)
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count; position embeddings excluded by default (token ones are tied to the head)."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) token ids → logits (B, T, V) and, with targets (B, T), the mean cross-entropy.

        With a cache, idx holds only the new tokens; their positions follow the cached ones.
        """
        B, T = idx.size()
        start = cache.length if cache is not None else 0
        pad = cache.min_pad if cache is not None else 0
        if start + T - pad > self.config.block_size:
            raise ValueError(
                f"sequence of {start + T - pad} tokens exceeds block_size {self.config.block_size}"
            )
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        if cache is not None and cache.pads is not None:
            pos = pos[None, :] - cache.pads[:, None]  # (B, T): each row counts from its first real column
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))  # (B, T, C)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.advance(T)
        x = self.transformer.ln_f(x)  # (B, T, C)
        logits = self.lm_head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer, self.config.block_size)

    def flops_per_token(self) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·H·Q·T."""
        cfg = self.config
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size

    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, sample: Sampler | None = None, use_cache: bool = True
    ) -> torch.Tensor:
        """Append `max_new_tokens` tokens to idx (B, T); `sample` maps logits (B, V) to ids (B, 1).

        The default sampler is greedy. Contexts longer than block_size are cropped to the last
        block_size tokens. Returns (B, T + max_new_tokens).
        """
        return torch.cat((idx, *self.stream(idx, max_new_tokens, sample, use_cache)), dim=1)

    def stream(
        self, idx: torch.Tensor, max_new_tokens: int, sample: Sampler | None = None, use_cache: bool = True
    ) -> Iterator[torch.Tensor]:
        """`generate`, one new token (B, 1) at a time as it is sampled: the caller may stop early."""
        sample = sample or _greedy
        block_size = self.config.block_size
        cache = self.new_cache() if use_cache else None
        idx_next = None
        for _ in range(max_new_tokens):
            if cache is not None and idx_next is not None and cache.length < block_size:
                logits, _ = self(idx_next, cache=cache)  # one new token, cached past
            else:
                # First step, no cache, or the window is full and slides: recompute the cropped context.
                context = idx[:, -block_size:]
                if cache is not None:
                    cache.reset()
                logits, _ = self(context, cache=cache)
            idx_next = sample(logits[:, -1, :].float())  # (B, 1)
            idx = torch.cat((idx, idx_next), dim=1)
            yield idx_next


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1, keepdim=True)


@dataclass(eq=False)
class GPTRow:
    """One sequence of a :class:`GPTBatchDecoder`."""

    ids: list[int]  # its tokens so far: the (cropped) prompt, then each token fed back
    cached: int  # positions whose keys and values are stored
    own: KVCache | None  # its prefill cache, until it moves into the batch's cache


class GPTBatchDecoder:
    """Decode steps for many sequences at once, each as :meth:`GPT.stream` decodes it alone.

    A prompt is prefilled alone (its own cache). A step feeds every row its last token: the
    rows whose cache has room share one left-padded cache (rebuilt, right-aligned, whenever the
    set of rows changes); a row whose window is full recomputes its last block_size tokens, as
    the unbatched loop does, together with the other such rows (all of the same length).
    """

    def __init__(self, model: GPT):
        self.model = model
        self.block_size = model.config.block_size
        self._members: list[GPTRow] = []  # the rows of `_cache`, in its batch order
        self._cache: KVCache | None = None

    def prefill(self, prompt_ids: list[int]) -> tuple[GPTRow, torch.Tensor]:
        ids = list(prompt_ids[-self.block_size :])
        cache = self.model.new_cache()
        device = self.model.lm_head.weight.device
        logits, _ = self.model(torch.tensor([ids], dtype=torch.long, device=device), cache=cache)
        return GPTRow(ids, cache.length, cache), logits[:, -1, :]  # (1, V)

    def step(self, rows: Sequence[GPTRow], last_ids: Sequence[int]) -> torch.Tensor:
        device = self.model.lm_head.weight.device
        for row, token in zip(rows, last_ids, strict=True):
            row.ids.append(token)
        cached = [i for i, row in enumerate(rows) if row.cached < self.block_size]
        full = [i for i, row in enumerate(rows) if row.cached >= self.block_size]
        parts: list[tuple[list[int], torch.Tensor]] = []
        if cached:
            members = [rows[i] for i in cached]
            if self._cache is None or list(map(id, members)) != list(map(id, self._members)):
                self._rebuild(members)
            idx = torch.tensor([[row.ids[-1]] for row in members], dtype=torch.long, device=device)  # (B, 1)
            logits, _ = self.model(idx, cache=self._cache)
            for row in members:
                row.cached += 1
            parts.append((cached, logits[:, -1, :]))
        if full:  # the window slides: recompute the last block_size tokens, as GPT.stream does
            context = torch.tensor(
                [rows[i].ids[-self.block_size :] for i in full], dtype=torch.long, device=device
            )
            logits, _ = self.model(context, cache=self.model.new_cache())
            for i in full:
                rows[i].cached, rows[i].own = self.block_size, None
            parts.append((full, logits[:, -1, :]))
        if len(parts) == 1:
            return parts[0][1]
        out = torch.empty((len(rows), parts[0][1].size(-1)), dtype=parts[0][1].dtype, device=device)
        for positions, logits in parts:
            out[positions] = logits
        return out  # (B, V)

    def _rebuild(self, members: list[GPTRow]) -> None:
        """One cache for `members`: each row's stored keys and values, right-aligned, zero pads."""
        where = {id(row): b for b, row in enumerate(self._members)}
        width = max(row.cached for row in members)
        template = (
            next(row.own for row in members if row.own is not None) if self._cache is None else self._cache
        )
        n_layer, _, n_head, max_len, head_size = template.k.shape
        cache = KVCache(n_layer, max_len)
        cache.k = template.k.new_zeros((n_layer, len(members), n_head, max_len, head_size))
        cache.v = template.v.new_zeros((n_layer, len(members), n_head, max_len, head_size))
        for b, row in enumerate(members):
            if row.own is not None:
                source, index, end = row.own, 0, row.cached
            else:
                source, index, end = self._cache, where[id(row)], self._cache.length
            cache.k[:, b, :, width - row.cached : width] = source.k[:, index, :, end - row.cached : end]
            cache.v[:, b, :, width - row.cached : width] = source.v[:, index, :, end - row.cached : end]
            row.own = None
        cache.length = width
        cache.set_pads([width - row.cached for row in members], cache.k.device)
        self._give_back(members)
        self._members, self._cache = members, cache

    def _give_back(self, members: list[GPTRow]) -> None:
        """Rows of the old cache that are not in `members` get their keys and values back in a
        cache of their own, so that a row that sits out a step can join again."""
        staying = {id(row) for row in members}
        old = self._cache
        for b, row in enumerate(self._members):
            if id(row) in staying or row.own is not None or row.cached >= self.block_size:
                continue
            own = KVCache(old.n_layer, old.max_len)
            own.k = old.k.new_zeros((old.n_layer, 1, *old.k.shape[2:]))
            own.v = old.v.new_zeros((old.n_layer, 1, *old.v.shape[2:]))
            own.k[:, 0, :, : row.cached] = old.k[:, b, :, old.length - row.cached : old.length]
            own.v[:, 0, :, : row.cached] = old.v[:, b, :, old.length - row.cached : old.length]
            own.length, row.own = row.cached, own
