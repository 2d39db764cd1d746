"""Behavioural checks of a classifier: invariance to harmless perturbations, must-pass examples.

Accuracy on a split can hide brittle models; these checks are the gate's second question
("does it behave?") after the metric's ("is it better?").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from components.config import BehaviouralChecks
from components.predictor import ClassifierPredictor

PERTURBATIONS: dict[str, Callable[[str], str]] = {
    "case": str.upper,
    # Doubles every space and pads the ends: tokenisation must not depend on spacing.
    "whitespace": lambda text: "  " + text.replace(" ", "  ") + "  ",
}


def _labels(predictor: ClassifierPredictor, texts: Sequence[str]) -> list[str]:
    proba = predictor.predict_proba(list(texts))
    return [predictor.labels[i] for i in proba.argmax(axis=1)]


def run_checks(predictor: ClassifierPredictor, checks: BehaviouralChecks, texts: Sequence[str]) -> dict:
    """Returns {"passed": bool, "invariance": {name: share kept}, "must_pass_failures": [...]}."""
    sample = list(texts[: checks.invariance_sample])
    report: dict = {"invariance": {}, "must_pass_failures": []}
    passed = True
    if sample:
        original = _labels(predictor, sample)
        for name in checks.invariance:
            perturbed = _labels(predictor, [PERTURBATIONS[name](t) for t in sample])
            kept = sum(a == b for a, b in zip(original, perturbed, strict=True)) / len(sample)
            report["invariance"][name] = kept
            passed &= kept >= checks.min_invariance
    for label, examples in checks.must_pass.items():
        if label not in predictor.labels:
            raise ValueError(f"must_pass names label {label!r}, which the model does not know ({predictor.labels})")
        for text, got in zip(examples, _labels(predictor, examples), strict=True):
            if got != label:
                report["must_pass_failures"].append({"text": text[:200], "expected": label, "got": got})
    passed &= not report["must_pass_failures"]
    report["passed"] = bool(passed)
    return report
