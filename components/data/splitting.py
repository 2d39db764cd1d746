"""Deterministic train/val/test splits.

Classification: stratified by label with the dataset's seed, so each split keeps the
class balance and the same rows always land in the same split. Rows keep their source
order within a split (sorted by the original row index), so the written files do not
depend on the shuffle. Generation: the corpus is one text cut into contiguous blocks,
train first, as in nanoGPT's ``prepare.py``: a random row split would leak long
repeated passages and hide the distribution shift a language model must handle.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def join_corpus(texts: list[str]) -> str:
    """The rows of a generation corpus as one text, documents separated by a blank line."""
    return CORPUS_SEPARATOR.join(texts)


def split_corpus(text: str, *, val_fraction: float) -> dict[str, str]:
    """The first ``1 - val_fraction`` of the characters for train, the rest for val."""
    cut = int(len(text) * (1 - val_fraction))
    return {"train": text[:cut], "val": text[cut:]}
