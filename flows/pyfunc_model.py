"""The MLflow pyfunc wrapper around a Predictor bundle ("models from code").

MLflow copies this file next to the logged model and runs it on load, so it holds no
pickled class: the registry needs only this script, the bundle artifact and the
`components` package (logged as code). Input: a list of texts (classification) or of
prompts (generation); output: one map per input.
"""

from __future__ import annotations

from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


class BundleModel(PythonModel):
    def load_context(self, context) -> None:
        from components.predictor import load_predictor

        self.predictor = load_predictor(context.artifacts["bundle"])

    def predict(self, model_input: list[str], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if self.predictor.task == "classification":
            return self.predictor.predict(model_input)
        options = params or {}
        return [{"text": self.predictor.generate(prompt, **options)} for prompt in model_input]


mlflow.models.set_model(BundleModel())
