"""The behavioural checks catch a model that changes its mind on harmless perturbations."""

from pathlib import Path

import numpy as np

from components.config import BehaviouralChecks
from components.evaluation.behaviour import run_checks
from components.predictor import ClassifierPredictor


class KeywordModel(ClassifierPredictor):
    """'a' when the text holds `keyword`, else 'b'; case-sensitive unless told otherwise."""

    def __init__(self, keyword: str, ignore_case: bool):
        super().__init__("tfidf_logreg", {}, ["a", "b"])
        self.keyword, self.ignore_case = keyword, ignore_case

    def predict_proba(self, texts):
        hits = [(self.keyword in (t.lower() if self.ignore_case else t)) for t in texts]
        return np.array([[1.0, 0.0] if h else [0.0, 1.0] for h in hits])

    def _save_files(self, folder: Path) -> None: ...

    @classmethod
    def _load(cls, folder, manifest): ...


TEXTS = ["the goal was late", "a quiet day", "goal after goal", "rain again"]


def test_robust_model_passes():
    checks = BehaviouralChecks(must_pass={"a": ["what a goal"], "b": ["nothing here"]})
    report = run_checks(KeywordModel("goal", ignore_case=True), checks, TEXTS)
    assert report["passed"], report
    assert report["invariance"] == {"case": 1.0, "whitespace": 1.0}


def test_case_sensitive_model_fails_invariance():
    report = run_checks(KeywordModel("goal", ignore_case=False), BehaviouralChecks(), TEXTS)
    assert not report["passed"]
    assert report["invariance"]["case"] == 0.5  # the two 'goal' texts flip when upper-cased


def test_must_pass_failure_is_reported():
    checks = BehaviouralChecks(invariance=[], must_pass={"a": ["GOAL!"]})
    report = run_checks(KeywordModel("goal", ignore_case=False), checks, TEXTS)
    assert not report["passed"]
    assert report["must_pass_failures"] == [{"text": "GOAL!", "expected": "a", "got": "b"}]
