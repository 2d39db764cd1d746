"""The lean TF-IDF scorer gives scikit-learn's own probabilities, for every pipeline shape it accepts."""

import numpy as np
import pytest
from sklearn.feature_extraction.text import CountVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, Pipeline

from components.models.tfidf import DEFAULT_PARAMS, build_pipeline
from components.models.tfidf_inference import LinearTfidfScorer

WORDS = {
    "sport": "match goal team player score league coach win",
    "tech": "software chip computer internet phone data network code",
    "politics": "election minister party vote parliament policy government law",
}
# Texts the vectorisers never saw: repeated tokens, unknown words only, one character, accents.
UNSEEN = [
    "goal goal goal team match minister",
    "zzzz qqqq xxxx",
    "a",
    "Élection du ministre: the party's VOTE on software, 2026!",
    "",
]


def _corpus(labels: list[str], n: int = 20) -> tuple[list[str], list[str]]:
    rng = np.random.default_rng(0)
    common = "the a of and to in".split()
    texts, y = [], []
    for label in labels:
        for _ in range(n):
            texts.append(" ".join(rng.choice(WORDS[label].split() + common, size=15)))
            y.append(label)
    return texts, y


def _fitted(params: dict, labels: list[str]) -> Pipeline:
    texts, y = _corpus(labels)
    return build_pipeline({**DEFAULT_PARAMS, "min_df": 1, **params}, seed=0).fit(texts, y)


# The scorer must reproduce the pipeline whatever the spec says: together these cases move every
# option of DEFAULT_PARAMS away from its default (the last one makes max_features bind).
CASES = [
    {"word_ngrams": [1, 1], "char_ngrams": None},  # the cheap serving baseline
    {"word_ngrams": [1, 2], "char_ngrams": [2, 5]},  # the pipeline's default: a FeatureUnion
    {"word_ngrams": [1, 2], "char_ngrams": None, "sublinear_tf": False},
    {"word_ngrams": [1, 3], "char_ngrams": [3, 4], "min_df": 2, "max_features": 25, "sublinear_tf": False,
     "C": 0.5, "max_iter": 200, "class_weight": "balanced"},
]


def test_the_cases_cover_every_tfidf_option():
    """A new option in the TF-IDF spec needs a case here, or serving could compute something else."""
    assert set().union(*CASES) == set(DEFAULT_PARAMS)


@pytest.mark.parametrize("params", CASES)
@pytest.mark.parametrize("labels", [sorted(WORDS), ["sport", "tech"]], ids=["3-classes", "2-classes"])
def test_scorer_matches_scikit_learn(params, labels):
    pipeline = _fitted(params, labels)
    scorer = LinearTfidfScorer.from_pipeline(pipeline)
    assert scorer is not None
    texts = _corpus(labels, n=3)[0] + UNSEEN
    expected = pipeline.predict_proba(texts)
    np.testing.assert_allclose(scorer.predict_proba(texts), expected, rtol=1e-10, atol=1e-12)
    # One text at a time (the server's smallest batch) gives the same rows.
    np.testing.assert_allclose(scorer.predict_proba(texts[:1]), expected[:1], rtol=1e-10, atol=1e-12)


def test_unknown_pipeline_shapes_fall_back_to_scikit_learn():
    texts, y = _corpus(sorted(WORDS))
    counts = Pipeline([("features", CountVectorizer()), ("classifier", LogisticRegression())]).fit(texts, y)
    weighted = Pipeline(
        [
            ("features", FeatureUnion([("w", TfidfVectorizer())], transformer_weights={"w": 2.0})),
            ("classifier", LogisticRegression()),
        ]
    ).fit(texts, y)
    assert LinearTfidfScorer.from_pipeline(counts) is None
    assert LinearTfidfScorer.from_pipeline(weighted) is None


def test_scorer_features_are_the_pipelines_features():
    pipeline = _fitted({"word_ngrams": [1, 2], "char_ngrams": [2, 5]}, sorted(WORDS))
    texts = _corpus(sorted(WORDS), n=2)[0] + UNSEEN
    expected = pipeline.named_steps["features"].transform(texts).toarray()
    got = LinearTfidfScorer.from_pipeline(pipeline).transform(texts).toarray()
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "options",
    [{}, {"lowercase": False}, {"token_pattern": r"[a-z]{3,}"}, {"token_pattern": r"(\w+)'s"}],
    ids=["default", "case-kept", "custom-pattern", "one-group"],
)
def test_plain_word_tokenizer_gives_scikit_learns_tokens(options):
    from components.models.tfidf_inference import _word_tokenizer

    texts, y = _corpus(sorted(WORDS))
    vectorizer = TfidfVectorizer(**options).fit(texts + ["the party's vote"])
    tokenize = _word_tokenizer(vectorizer)
    assert tokenize is not None
    for text in UNSEEN + ["x y zz ÉÉ é-é a_b 3d 42 l'été", "Party's  VOTE\\n\\tgoal's", *ASCII_EDGES]:
        assert tokenize(text) == vectorizer.build_analyzer()(text)


# ASCII texts take the translate-and-split path: every kind of separator and edge.
ASCII_EDGES = [
    "__init__ a_b _x x_ 3.14 1,000 e-mail U.S. it's o'clock",
    "tab\tnew\nline\rcarriage\x0bvt\x0cff\x1cfs\x1fus\x7fdel\x00nul end",
    '(brackets)[square]{curly}<angle> "quoted" `tick` ~tilde^caret|pipe\\back/slash',
    "a b c dd e ff ! @# $%&*+=?;: ab",
    "   leading and trailing   ",
    "CamelCase ALLCAPS MiXeD 99Problems",
]


def test_ascii_fast_path_matches_the_regex_on_every_ascii_character():
    import re

    from components.models.tfidf_inference import SKLEARN_TOKEN_PATTERN, _default_pattern_tokens

    every_character = "".join(chr(c) for c in range(128))
    for text in [*ASCII_EDGES, every_character, every_character[::-1], "x" + every_character * 3]:
        assert _default_pattern_tokens(text) == re.findall(SKLEARN_TOKEN_PATTERN, text)


def test_other_analyzers_keep_scikit_learns_analyzer():
    from components.models.tfidf_inference import _word_tokenizer

    for options in ({"ngram_range": (1, 2)}, {"analyzer": "char_wb"}, {"stop_words": ["the"]}):
        assert _word_tokenizer(TfidfVectorizer(**options)) is None
