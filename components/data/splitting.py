"""Deterministic train/val/test splits.

Classification: stratified by label with the dataset's seed, so each split keeps the
class balance and the same rows always land in the same split. Rows keep their source
order within a split (sorted by the original row index), so the written files do not
depend on the shuffle. Generation: the corpus is one text cut into contiguous blocks,
train first, as in nanoGPT's ``prepare.py``: a random row split would leak long
repeated passages and hide the distribution shift a language model must handle.

A streamed classification dataset is split from hashes instead (:func:`rank_within_labels`,
:func:`hash_split_codes`): per label, rows are ranked by a seeded mix of their text's
digest and the ranks cut at the fractions, which needs no texts in memory and gives the
same split whatever the row order.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from components.data.dataset import SPLITS
from components.data.rows import LABEL

# Held-out splits are carved in this order; train keeps what remains.
_CARVE_ORDER = ("test", "val")
CORPUS_SEPARATOR = "\n\n"


def split_classification(
    frame: pd.DataFrame, *, fractions: Mapping[str, float], seed: int
) -> dict[str, pd.DataFrame]:
    """Carve each held-out split in ``fractions`` (share of ``frame``'s rows); train gets the rest.

    ``fractions`` names only the splits to carve (``{"val": 0.1, "test": 0.1}``, or just
    ``{"val": 0.1}`` when the test split comes from a pinned file); a zero fraction gives an
    empty split. Fractions are shares of the whole frame, so the second carve is taken from
    the remainder at the correspondingly larger rate.
    """
    unknown = set(fractions) - set(_CARVE_ORDER)
    if unknown:
        raise ValueError(f"cannot carve splits {sorted(unknown)}: only {list(_CARVE_ORDER)} are held out")
    if sum(fractions.values()) >= 1:
        raise ValueError(f"held-out fractions {dict(fractions)} leave nothing for train")
    remaining, remaining_share = frame, 1.0
    splits: dict[str, pd.DataFrame] = {}
    for name in (n for n in _CARVE_ORDER if n in fractions):
        fraction = fractions[name]
        if fraction <= 0:
            splits[name] = frame.iloc[0:0]
            continue
        remaining, splits[name] = _stratified_holdout(
            remaining, fraction / remaining_share, seed=seed, split=name
        )
        remaining_share -= fraction
    splits["train"] = remaining
    return {name: splits[name].sort_index() for name in SPLITS if name in splits}


def _stratified_holdout(
    frame: pd.DataFrame, fraction: float, *, seed: int, split: str
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rest, held out) with ``fraction`` of the rows held out, stratified by label."""
    from sklearn.model_selection import train_test_split

    labels = frame[LABEL].tolist()
    try:
        kept, held = train_test_split(
            frame.index.to_numpy(), test_size=fraction, stratify=labels, random_state=seed
        )
    except ValueError as error:
        counts = dict(sorted(pd.Series(labels).value_counts().items()))
        raise ValueError(
            f"cannot make a stratified '{split}' split ({fraction:.3g} of {len(frame)} rows, "
            f"rows per label {counts}): {error}"
        ) from error
    return frame.loc[sorted(kept)], frame.loc[sorted(held)]


def rank_within_labels(keys: np.ndarray, label_ids: np.ndarray) -> np.ndarray:
    """Each row's rank (0 = smallest key) among the rows of its label."""
    order = np.lexsort((keys, label_ids))
    sorted_labels = label_ids[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[order] = np.arange(len(keys)) - starts
    return ranks


def split_keys(digests: np.ndarray, seed: int) -> np.ndarray:
    """A seeded bijective mix (splitmix64's finaliser) of each digest: the order the split cuts."""
    with np.errstate(over="ignore"):
        x = digests ^ np.uint64((seed * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def hash_split_codes(
    ranks: np.ndarray, label_ids: np.ndarray, per_label: np.ndarray, fractions: Mapping[str, float]
) -> np.ndarray:
    """Each row's split (index into SPLITS): per label, the lowest ranks go to test, the next to
    val (the in-memory carve order), each ``round(fraction * rows of the label)``; train keeps the rest."""
    codes = np.full(len(ranks), SPLITS.index("train"), dtype=np.int8)
    start = np.zeros(len(per_label), dtype=np.int64)
    for split in (n for n in _CARVE_ORDER if n in fractions):
        end = start + np.floor(per_label * fractions[split] + 0.5).astype(np.int64)
        codes[(ranks >= start[label_ids]) & (ranks < end[label_ids])] = SPLITS.index(split)
        start = end
    return codes


def largest_remainder(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` rows shared between labels in proportion to ``counts``."""
    exact = counts * total / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    for i in np.argsort(-(exact - quota), kind="stable")[: total - int(quota.sum())]:
        quota[i] += 1
    return quota


def join_corpus(texts: list[str]) -> str:
    """The rows of a generation corpus as one text, documents separated by a blank line."""
    return CORPUS_SEPARATOR.join(texts)


def split_corpus(text: str, *, val_fraction: float) -> dict[str, str]:
    """The first ``1 - val_fraction`` of the characters for train, the rest for val."""
    cut = int(len(text) * (1 - val_fraction))
    return {"train": text[:cut], "val": text[cut:]}
