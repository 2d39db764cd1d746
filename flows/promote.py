"""Promotion: the best candidate by validation metric challenges the `champion` alias.

The challenger and the champion are compared on the same validation split of the same
data version (the champion is re-evaluated when the data changed); the test split is
never used to choose. The alias moves only when the challenger is better by the margin.
A champion chosen by cross-validation cannot be re-scored on new data (it was refit on
train+val), so there its candidate's CV score on the new data, made in the same run as the
challenger's, stands for it.
A file lock under MAAS_HOME serialises promotions of one registered model.
"""

from __future__ import annotations

from typing import Any

from filelock import FileLock
from prefect import task

from components.config import TaskSpec
from components.data.dataset import ClassificationData, CorpusData
from components.evaluation.behaviour import run_checks
from components.evaluation.classification import classification_metrics
from components.predictor import ClassifierPredictor, GeneratorPredictor
from flows import tracking
from flows.logs import run_logger
from flows.retries import TRANSIENT_RETRIES
from flows.settings import Settings
from flows.train import load_task_data


def select_best(results: list[dict[str, Any]], task_spec: TaskSpec) -> dict[str, Any]:
    """The candidate with the best validation metric (ties: the first listed in the config)."""
    if not results:
        raise ValueError(f"no trained candidates for {task_spec.registered_model}")
    sign = 1 if task_spec.greater_is_better else -1
    return max(results, key=lambda r: sign * r["val"][task_spec.metric])


def selection_method(settings: Settings, result: dict[str, Any]) -> str:
    """How a result's selection score was made: its run's `maas.selection` tag ("holdout" before it existed)."""
    if result.get("selection"):
        return result["selection"]
    if result.get("run_id"):
        return tracking.client(settings).get_run(result["run_id"]).data.tags.get("maas.selection", "holdout")
    return "holdout"


def is_better(challenger: float, champion: float, task_spec: TaskSpec) -> bool:
    """Strictly better by more than the margin, in the metric's direction."""
    if task_spec.greater_is_better:
        return challenger > champion + task_spec.margin
    return challenger < champion - task_spec.margin


def champion_score(settings: Settings, task_spec: TaskSpec, champion, dataset_version: str,
                   method: str = "holdout") -> float | None:
    """The champion's selection score made the way the challenger's was (`method`: "holdout" or
    "cv<k>") on `dataset_version`; None when there is no such score to compare with.

    A CV score exists only for the run that made it (CV would retrain the champion's spec), and a
    CV-chosen champion was refit on train+val, so it cannot be re-scored on the validation split.
    """
    champion_method = champion.tags.get("selection", "holdout")
    if champion.tags.get("data_version") == dataset_version and champion_method == method:
        metrics = tracking.run_metrics(settings, champion.run_id)
        if f"val_{task_spec.metric}" in metrics:
            return metrics[f"val_{task_spec.metric}"]
    if method != "holdout" or champion_method != "holdout":
        return None
    # New data: score the champion on the new validation split, never on test.
    predictor = tracking.load_registered(settings, task_spec.registered_model, champion.version)
    data = load_task_data(settings, task_spec, predictor.kind)
    if isinstance(predictor, ClassifierPredictor) and isinstance(data, ClassificationData):
        return classification_metrics(data.val_labels, predictor.predict_proba(data.val_texts), predictor.labels)[
            task_spec.metric
        ]
    if isinstance(predictor, GeneratorPredictor) and isinstance(data, CorpusData):
        metrics = predictor.evaluate(data.val_text, max_chars=predictor.metadata.get("eval_max_chars"))
        return metrics[task_spec.metric]
    raise ValueError(f"cannot score a {predictor.kind} champion on a {type(data).__name__}")


def champion_recipe(champion, results: list[dict[str, Any]], method: str) -> dict[str, Any] | None:
    """The result of the champion's own candidate among this run's, scored the same way (`method`), if any."""
    candidate = champion.tags.get("candidate")
    # The ensemble's nested score estimates the same thing as its members' (select_best ranks them together).
    same_way = method.removeprefix("nested-")
    return next((r for r in results if r["candidate"] == candidate
                 and r.get("selection", "holdout").removeprefix("nested-") == same_way), None)


def behaviour_report(settings: Settings, task_spec: TaskSpec, version: str) -> dict | None:
    """The challenger's behavioural checks on the validation texts (classification only)."""
    predictor = tracking.load_registered(settings, task_spec.registered_model, version)
    if not isinstance(predictor, ClassifierPredictor):
        return None
    data = load_task_data(settings, task_spec, predictor.kind)
    return run_checks(predictor, task_spec.checks, data.val_texts)


def _lock(settings: Settings, registered_model: str) -> FileLock:
    (settings.home / "locks").mkdir(parents=True, exist_ok=True)
    return FileLock(str(settings.home / "locks" / f"promote-{registered_model}.lock"))


@task(name="promote", **TRANSIENT_RETRIES)
def promote(settings: Settings, task_spec: TaskSpec, results: list[dict[str, Any]], dataset_version: str) -> dict:
    """Returns the decision: promoted or kept, with both scores and the reason."""
    logger = run_logger()
    best = select_best(results, task_spec)
    challenger = best["val"][task_spec.metric]
    with _lock(settings, task_spec.registered_model).acquire(timeout=600):
        champion = tracking.get_alias_version(settings, task_spec.registered_model)
        decision = {
            "registered_model": task_spec.registered_model,
            "metric": f"val_{task_spec.metric}",
            "challenger": {"candidate": best["candidate"], "version": best["version"], "score": challenger},
            "champion": None,
        }
        behaviour = behaviour_report(settings, task_spec, best["version"])
        decision["checks"] = behaviour
        if champion is not None and champion.version == best["version"]:
            decision |= {"promoted": False, "reason": "the best candidate already is the champion"}
        elif behaviour is not None and not behaviour["passed"]:
            decision |= {"promoted": False, "reason": "the challenger failed its behavioural checks"}
        elif champion is None:
            tracking.set_champion(settings, task_spec.registered_model, best["version"])
            decision |= {"promoted": True, "reason": "there was no champion"}
        else:
            method = selection_method(settings, best)
            score = champion_score(settings, task_spec, champion, dataset_version, method)
            decision["champion"] = {"version": champion.version, "score": score}
            recipe = champion_recipe(champion, results, method) if score is None else None
            if recipe is not None:
                score = recipe["val"][task_spec.metric]
                decision["champion"] |= {"score": score, "scored_as": f"candidate {recipe['candidate']} "
                                         f"v{recipe['version']}, retrained on this data"}
            if score is None:
                # Nothing made the same way on this data stands for the champion: no evidence to replace it.
                decision |= {"promoted": False,
                             "reason": f"the champion has no {method} score on this data version, and its "
                                       f"candidate {champion.tags.get('candidate')!r} did not train in this run"}
            elif recipe is not None and recipe is best:
                # The champion's own candidate won again: its retrained version replaces it.
                tracking.set_champion(settings, task_spec.registered_model, best["version"])
                decision |= {"promoted": True, "reason": "the champion's candidate, retrained on this data, "
                                                         f"is again the best by {method}"}
            elif is_better(challenger, score, task_spec):
                tracking.set_champion(settings, task_spec.registered_model, best["version"])
                decision |= {"promoted": True, "reason": f"better than the champion by more than {task_spec.margin}"}
            else:
                decision |= {"promoted": False, "reason": f"not better than the champion by more than {task_spec.margin}"}
        current = tracking.get_alias_version(settings, task_spec.registered_model)
        decision["champion_version"] = current.version if current is not None else None
        tracking.tag_version(
            settings, task_spec.registered_model, best["version"], "promotion",
            ("promoted: " if decision["promoted"] else "kept champion: ") + decision["reason"],
        )
    logger.info(
        "%s: %s (%s) -> champion v%s",
        task_spec.registered_model,
        "promoted" if decision["promoted"] else "kept",
        decision["reason"],
        decision["champion_version"],
    )
    return decision


def rollback(settings: Settings, task_spec: TaskSpec) -> dict:
    """Swap `champion` and `previous`: the replaced champion serves again."""
    with _lock(settings, task_spec.registered_model).acquire(timeout=600):
        previous = tracking.get_alias_version(settings, task_spec.registered_model, tracking.PREVIOUS)
        if previous is None:
            raise ValueError(f"{task_spec.registered_model} has no `previous` version to roll back to")
        replaced = tracking.set_champion(settings, task_spec.registered_model, previous.version)
    return {"registered_model": task_spec.registered_model, "champion_version": previous.version,
            "replaced": replaced}
