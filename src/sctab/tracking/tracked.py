"""One tracked run: every MLflow run of the project is opened, logged to and closed through here.

    with tracked_run("train", name="mlp-seed0", params=params, log_params=spec.to_dict(),
                     tags={"model_type": "mlp"}, parent=parent_id) as run:
        run.log_epoch({"val_f1_macro": 0.8}, epoch=3)
        run.log_final({"test_f1_macro": 0.79})
        run.log_folder("models/mlp", "model")

One failure policy: a run whose body raises ends FAILED with the error as the tag ``error``; one stopped on
purpose (Ctrl+C, or Ray Tune stopping a trial early, which raises SystemExit) ends KILLED; otherwise
FINISHED. Closing is best effort, so when the tracking server is what failed, the original error surfaces.
A process killed outright cannot close its run: every run carries its owner (host, pid), so that a later
stage closes it as stale (:mod:`sctab.tracking.stale`).
A process that only logs to a run someone else opened (a Ray Train worker) uses :meth:`TrackedRun.attach`.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sctab.tracking.runs import experiment_id, flatten, lineage_tags, tracking_uri
from sctab.tracking.stale import STALE_TAG, owner_tags

__all__ = ["TrackedRun", "tracked_run", "record_failure", "STOPPED", "close_run"]

#: exceptions that mean "stopped on purpose", not "failed"
STOPPED = (KeyboardInterrupt, SystemExit)


def _numbers(metrics: dict) -> dict[str, float]:
    """The numeric entries (numpy scalars included, booleans not) as floats."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))}


@dataclass
class TrackedRun:
    """A handle on one MLflow run: what the code inside ``tracked_run`` logs through."""

    run_id: str
    uri: str
    _client: object = field(default=None, repr=False, compare=False)

    @property
    def client(self):
        from mlflow.tracking import MlflowClient  # mlflow is heavy: imported when a run is first used

        if self._client is None:
            self._client = MlflowClient(self.uri)
        return self._client

    @classmethod
    def attach(cls, run_id: str, uri: str | None = None) -> TrackedRun:
        """Log to a run opened elsewhere (another process); its lifecycle stays with its opener."""
        return cls(run_id=run_id, uri=uri or tracking_uri())

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        flat = flatten(params)
        if flat:
            self.client.log_batch(self.run_id, params=[Param(k, v) for k, v in flat.items()])

    def set_tags(self, **tags) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)[:5000]) for k, v in tags.items() if v is not None]
        if items:
            self.client.log_batch(self.run_id, tags=items)

    def log_metrics(self, metrics: dict, step: int = 0, prefix: str = "") -> None:
        """Every number in ``metrics`` (others are skipped) at ``step``."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        vals = [Metric(f"{prefix}{k}", v, ts, int(step)) for k, v in _numbers(metrics).items() if k != "epoch"]
        if vals:
            self.client.log_batch(self.run_id, metrics=vals)

    def log_epoch(self, metrics: dict, epoch: int) -> None:
        self.log_metrics(metrics, step=epoch)

    def log_final(self, metrics: dict) -> None:
        """The fit's final scores, as ``final_<name>`` (the convention the studies and registry read)."""
        self.log_metrics(metrics, prefix="final_")

    def log_folder(self, folder: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(self.run_id, str(folder), artifact_path=artifact_path)

    def log_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def log_dict(self, data: dict, name: str) -> None:
        self.client.log_dict(self.run_id, data, name)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def epoch_printer(self, label: str) -> Callable[[dict, int], None]:
        """The per-epoch hook of every training path: one progress line, the epoch's metrics in the run."""

        def log_epoch(metrics: dict, epoch: int) -> None:
            print(f"[{label}] epoch {epoch}: train loss {metrics['train_loss']:.4f}, val loss "
                  f"{metrics['val_loss']:.4f}, val macro F1 {metrics['val_f1_macro']:.4f}, "
                  f"{metrics['train_cells_per_s']:,.0f} cells/s", flush=True)
            self.log_epoch(metrics, epoch)

        return log_epoch


def close_run(client, run_id: str, status: str, error: BaseException | str | None = None) -> None:
    """Best effort: tag the error, set the status; a failure to do so is a warning, never a second error."""
    try:
        if error is not None:
            text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
            client.set_tag(run_id, "error", text[:5000])
        client.set_terminated(run_id, status)
    except Exception as e:  # noqa: BLE001 - reported; the caller re-raises the original error
        print(f"warning: could not mark MLflow run {run_id} {status}: {str(e).splitlines()[0][:200] if str(e) else e}",
              file=sys.stderr)


@contextmanager
def tracked_run(experiment: str, *, name: str, params: dict | None = None, log_params: dict | None = None,
                tags: dict | None = None, parent: str | None = None, uri: str | None = None,
                resume: str | None = None) -> Iterator[TrackedRun]:
    """Open a run in ``experiment`` with the lineage tags of ``params`` (git commit, profile, data version)
    plus ``tags``, nested under ``parent``; log ``log_params``; close it by the one failure policy.

    ``resume`` names an earlier run of this experiment to reopen instead (a study or sweep that goes on
    after an interruption); it is set RUNNING again and closed by the same policy.
    """
    from mlflow.tracking import MlflowClient

    uri = uri or tracking_uri()
    client = MlflowClient(uri)
    if resume:
        experiment_id(experiment, uri)  # a clear error when the tracking server is unreachable
        client.update_run(resume, status="RUNNING")
        run_id = resume
        for stale in {"error", STALE_TAG} & set(client.get_run(resume).data.tags):
            client.delete_tag(resume, stale)  # closed as stale while its process was gone: it goes on now
        TrackedRun(run_id=run_id, uri=uri, _client=client).set_tags(**owner_tags())  # its owner now
    else:
        all_tags = {**lineage_tags(params or {}, **(tags or {})), **owner_tags()}
        if parent:
            all_tags["mlflow.parentRunId"] = parent
        run_id = client.create_run(experiment_id(experiment, uri), run_name=name, tags=all_tags).info.run_id
    run = TrackedRun(run_id=run_id, uri=uri, _client=client)
    try:
        if log_params:
            run.log_params(log_params)
        yield run
    except STOPPED:
        close_run(client, run.run_id, "KILLED")
        raise
    except BaseException as e:
        close_run(client, run.run_id, "FAILED", str(e) if isinstance(e, _Recorded) else e)
        raise
    else:
        client.set_terminated(run.run_id, "FINISHED")


class _Recorded(Exception):
    """The failure :func:`record_failure` records."""


def record_failure(experiment: str, *, name: str, error: str, tags: dict | None = None, parent: str | None = None,
                   uri: str | None = None) -> str:
    """A FAILED run for work that died before it could open its own (a trial lost at start); its id."""
    opened: list[TrackedRun] = []
    try:
        with tracked_run(experiment, name=name, tags=tags, parent=parent, uri=uri) as run:
            opened.append(run)
            raise _Recorded(error)
    except _Recorded:
        pass
    return opened[0].run_id
