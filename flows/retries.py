"""The retry policy of tasks that talk to the outside (DVC, MLflow, the BentoML store): transient errors only."""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from flows import versioning

# MLflow's REST client already retries HTTP 429/5xx itself; these codes are what is left.
TRANSIENT_MLFLOW_CODES = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED"}


def is_transient(error: BaseException) -> bool:
    """Whether a second try may pass: network and disk errors, DVC commands, MLflow server errors."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, MlflowException):
        return error.error_code in TRANSIENT_MLFLOW_CODES
    return isinstance(error, OSError | versioning.VersioningError)


def _failed_transiently(task, task_run, state) -> bool:
    try:
        state.result()
    except Exception as error:
        return is_transient(error)
    return False


# A wrong config or invalid data fails at once; a dropped connection or a busy server gets three more tries.
TRANSIENT_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),  # 2, 4, 8 s
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": _failed_transiently,
}
