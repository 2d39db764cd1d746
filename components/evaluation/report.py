"""The evaluation report of one trained candidate: validation for selection, test for the record."""

from __future__ import annotations

from components.data.dataset import ClassificationData, CorpusData
from components.evaluation.classification import classification_metrics, measure_latency
from components.predictor import ClassifierPredictor, GeneratorPredictor, Predictor


def evaluate_classifier(predictor: ClassifierPredictor, data: ClassificationData) -> dict:
    val = classification_metrics(data.val_labels, predictor.predict_proba(data.val_texts), predictor.labels)
    test = classification_metrics(data.test_labels, predictor.predict_proba(data.test_texts), predictor.labels)
    latency = measure_latency(predictor.predict_proba, data.test_texts)
    return {"val": val, "test": test, "latency": latency}


def evaluate_generator(predictor: GeneratorPredictor, data: CorpusData) -> dict:
    """LM metrics are computed by the trainer on the validation text and kept in the bundle metadata."""
    metrics = dict(predictor.metadata.get("metrics", {}))
    if not metrics:
        raise ValueError(f"{predictor.kind} bundle carries no validation metrics")
    latency = measure_latency(
        lambda prompts: [predictor.generate(p, max_new_tokens=16, seed=0) for p in prompts],
        [data.val_text[i : i + 32] for i in range(0, 32 * 10, 32)],
        repeats=5,
        batch_size=5,
    )
    return {"val": metrics, "test": {}, "latency": latency}


def evaluate(predictor: Predictor, data: ClassificationData | CorpusData) -> dict:
    if isinstance(predictor, ClassifierPredictor):
        return evaluate_classifier(predictor, data)
    return evaluate_generator(predictor, data)
