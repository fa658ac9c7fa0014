"""MLflow: one MLflow run per vitkit run (experiment: the dataset; run name: the run directory's name), continued by
a resume. Params: the flat config and the run's facts; metrics: per step and per epoch; at the end the checkpoint,
report.html, split.csv and the figures as artifacts, and the model as an MLflow pyfunc model (`mlflow_model.py`)
with an input example, registered in the model registry.

The tracking store is `--mlflow-uri`, else $MLFLOW_TRACKING_URI, else a SQLite database beside the runs
(sqlite:///OUT/mlflow.db, artifacts in OUT/mlartifacts): MLflow 3 no longer writes its old mlruns/ file store.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import time
import urllib.error
import urllib.request
import warnings
from pathlib import Path

from ..config import Config
from ..errors import UserError
from ..optional import require
from .base import STATUS, RunOutputs, Tracker, experiment_name

log = logging.getLogger(__name__)

BATCH = 900  # metrics per log_batch call (MLflow's limit is 1000)
PARAM_CHARS = 6000  # MLflow's longest param value
MODEL_CODE = Path(__file__).with_name("mlflow_model.py")  # the pyfunc model, logged as code


def tracking_uri(cfg: Config) -> str:
    return cfg.output.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(Path(cfg.output.dir) / 'mlflow.db').resolve()}"


def _check_reachable(uri: str) -> None:
    """An HTTP tracking server must answer its health check within seconds (MLflow itself would retry for
    minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5).close()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise UserError(f"the MLflow tracking server {uri} cannot be reached ({reason}): start it, fix --mlflow-uri, "
                        "or pass --log-optional to train without it") from None


@contextlib.contextmanager
def _quiet():
    """MLflow's own INFO lines, progress bars and advice stay out of vitkit's log."""
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    said = io.StringIO()  # what MLflow prints ("Successfully registered model ...") goes to the debug log
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        if said.getvalue().strip():
            log.debug("MLflow said: %s", said.getvalue().strip())


class MlflowTracker(Tracker):
    name = "mlflow"

    def __init__(self, uri: str, experiment: str, run_name: str, run_id: str | None, artifact_root: Path | None):
        require("mlflow", "track")
        from mlflow.tracking import MlflowClient

        self.uri, self.experiment = uri, experiment
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a server gone costs seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        with _quiet():
            self.client = MlflowClient(uri)
            self.run_id = self._continue(run_id) if run_id else None
            if self.run_id is None:
                exp = self.client.get_experiment_by_name(experiment)
                exp_id = exp.experiment_id if exp else self.client.create_experiment(
                    experiment, artifact_location=(artifact_root / experiment).resolve().as_uri() if artifact_root else None)
                self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        self.logged_params: set[str] = set(self.client.get_run(self.run_id).data.params) if run_id else set()

    def _continue(self, run_id: str) -> str | None:
        try:
            self.client.update_run(run_id, status="RUNNING")
        except Exception as err:  # MLflow's errors for a run this store does not have
            log.warning("MLflow run %s is not in %s (%s): the resumed run is logged as a new MLflow run", run_id,
                        self.uri, type(err).__name__)
            return None
        log.info("continuing MLflow run %s", run_id)
        return run_id

    def ids(self) -> dict:
        return {"run_id": self.run_id, "uri": self.uri}

    def start(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        # A resume keeps the params logged first (MLflow refuses to change one); what it changed is in config.yaml.
        new = [Param(k, str(v)[:PARAM_CHARS]) for k, v in params.items() if k not in self.logged_params]
        for i in range(0, len(new), 100):
            self.client.log_batch(self.run_id, params=new[i:i + 100])
        self.logged_params.update(p.key for p in new)

    def _metrics(self, items: list[tuple[str, float, int]]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value, step in items]
        for i in range(0, len(metrics), BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + BATCH])

    def log_steps(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        self._metrics([(k, v, step) for step, values in rows for k, v in values.items()])

    def log_epoch(self, epoch: int, step: int, row: dict[str, float]) -> None:
        self._metrics([(k, v, epoch) for k, v in row.items()])

    def finish(self, status: str, outputs: RunOutputs | None) -> None:
        try:
            if outputs is not None:
                with _quiet():
                    for path in outputs.artifacts():
                        self.client.log_artifact(self.run_id, str(path))
                    for png in outputs.figures():
                        self.client.log_artifact(self.run_id, str(png), "report")
                    self._log_model(outputs)
        finally:  # the run's end status even when an artifact failed
            self.client.set_terminated(self.run_id, STATUS[status])

    def _log_model(self, outputs: RunOutputs) -> None:
        """The best checkpoint as an MLflow pyfunc model (loads with `mlflow.pyfunc.load_model`), registered under
        `outputs.model_name` where the store has a model registry."""
        import mlflow

        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        try:
            with mlflow.start_run(run_id=self.run_id, log_system_metrics=False):
                info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                               artifacts={"checkpoint": str(outputs.checkpoint)},
                                               input_example=outputs.example,
                                               registered_model_name=outputs.model_name)
            log.info("MLflow: run %s, model %s (registered as %s)", self.run_id, info.model_uri, outputs.model_name)
        finally:
            mlflow.set_tracking_uri(previous)


def open_mlflow(cfg: Config, run_dir: Path, ids: dict) -> MlflowTracker:
    uri = ids.get("uri") or tracking_uri(cfg)  # a resume logs where the run began
    _check_reachable(uri)
    artifact_root = Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" if uri.startswith("sqlite:///") \
        else None
    try:
        return MlflowTracker(uri, experiment_name(cfg), run_dir.name, ids.get("run_id"), artifact_root)
    except UserError:
        raise
    except Exception as err:  # MLflow's own errors: a bad URI, a locked or foreign database
        first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
        raise UserError(f"MLflow cannot use the tracking store {uri} ({first}): fix --mlflow-uri, or pass "
                        "--log-optional to train without it") from None
