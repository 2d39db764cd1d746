"""Word vectors learnt from the training split alone: an SVD of its positive PMI co-occurrence matrix.

A classifier trained on 1,487 articles sees most words a handful of times, too few for a randomly
initialised embedding to learn what they mean. Words used in the same contexts ("striker",
"midfielder") get similar rows of the PPMI matrix, and its truncated SVD compresses those rows into
dense vectors, so the network starts from embeddings where such words are already neighbours. No
outside data or download is involved: the vectors come from the same training texts as the
vocabulary (Levy, Goldberg and Dagan, 2015, "Improving distributional similarity with lessons
learned from word embeddings", for the PPMI + SVD recipe and the 0.75 context smoothing).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp
from sklearn.utils.extmath import randomized_svd

# Context counts are raised to this power before normalising: rare context words otherwise get
# inflated PMI values (the smoothing word2vec's negative sampling uses too).
CONTEXT_SMOOTHING = 0.75


def cooccurrence(token_ids: Iterable[Sequence[int]], vocab_size: int, window: int) -> sp.csr_matrix:
    """Symmetric counts of token pairs at most `window` positions apart, (vocab_size, vocab_size)."""
    rows, cols = [], []
    for ids in token_ids:
        ids = np.asarray(ids, dtype=np.int64)
        for distance in range(1, window + 1):
            if len(ids) > distance:
                rows.append(ids[:-distance])
                cols.append(ids[distance:])
    if not rows:
        return sp.csr_matrix((vocab_size, vocab_size))
    r, c = np.concatenate(rows), np.concatenate(cols)
    counts = sp.coo_matrix((np.ones(len(r)), (r, c)), shape=(vocab_size, vocab_size)).tocsr()
    return (counts + counts.T).tocsr()


def ppmi(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Positive pointwise mutual information of a co-occurrence matrix (zeros stay zero)."""
    total = counts.sum()
    if total == 0:
        return counts.copy()
    word_p = np.asarray(counts.sum(axis=1)).ravel() / total
    context = np.asarray(counts.sum(axis=0)).ravel() ** CONTEXT_SMOOTHING
    context_p = context / context.sum()
    pairs = counts.tocoo()
    pmi = np.log(pairs.data / total / (word_p[pairs.row] * context_p[pairs.col]))
    keep = pmi > 0
    return sp.csr_matrix((pmi[keep], (pairs.row[keep], pairs.col[keep])), shape=counts.shape)


def ppmi_svd_vectors(
    token_ids: Iterable[Sequence[int]], vocab_size: int, dim: int, window: int = 5, seed: int = 0
) -> np.ndarray:
    """(vocab_size, dim) word vectors: U * sqrt(S) of the PPMI matrix's rank-`dim` SVD.

    Ids that never occur get zero rows. The result has unit standard deviation overall; callers
    rescale it to their layer's own initialisation.
    """
    if dim >= vocab_size:
        raise ValueError(f"embedding size {dim} must be below the vocabulary size {vocab_size}")
    matrix = ppmi(cooccurrence(token_ids, vocab_size, window))
    if matrix.nnz == 0:
        raise ValueError("the texts have no co-occurring tokens to learn word vectors from")
    u, s, _ = randomized_svd(matrix, dim, random_state=seed)
    vectors = u * np.sqrt(s)
    return vectors / (vectors.std() + 1e-12)
