"""Runs left RUNNING by a process that died (SIGKILL, OOM, a lost node) are closed as FAILED, with the reason.

Every run :func:`sctab.tracking.tracked_run` opens carries its owner: ``host``, ``pid`` and ``pid_started``
(the process's start time, so that a recycled pid does not pass for the owner). Before a training stage,
a study or a sweep starts, :func:`close_stale_runs` looks for earlier RUNNING runs of the same experiment
and data version (and, for the train stages, the same model) and closes those whose owner is gone. A run
whose owner cannot be judged (another host, or a run from before owners were recorded) is left alone.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import psutil

__all__ = ["owner_tags", "owner_gone", "close_stale_runs", "running_runs", "STALE_TAG"]

#: the tag that says why a run was closed as stale (``error`` carries the same text, as for any FAILED run)
STALE_TAG = "stale_reason"


def _started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, someone else's


def owner_tags() -> dict[str, str]:
    """This process as a run's owner."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "pid_started": f"{_started(pid) or 0:.2f}"}


def owner_gone(tags: dict) -> str | None:
    """Why the run's owner is known to be gone, or None when it may be alive (or cannot be judged here)."""
    host, pid = tags.get("host"), tags.get("pid")
    if not host or not pid or not pid.isdigit() or host != socket.gethostname():
        return None
    started = _started(int(pid))
    if started is None:
        return f"its process {pid} on {host} is gone"
    recorded = float(tags.get("pid_started") or 0)
    if started > 0 and recorded > 0 and abs(started - recorded) > 1.0:
        return f"its process {pid} on {host} is gone (the pid now belongs to another process)"
    return None


def running_runs(client, experiment_ids: list[str], where: str = "") -> list:
    """The RUNNING runs of ``experiment_ids`` (``where``: more of MLflow's filter, joined with ``and``)."""
    flt = "attributes.status = 'RUNNING'" + (f" and {where}" if where else "")
    return list(client.search_runs(experiment_ids, filter_string=flt, max_results=5000))


def close_stale_runs(experiment: str, *, data_version: str | None = None, match: dict | None = None,
                     who: str = "", uri: str | None = None) -> list[str]:
    """Close as FAILED every RUNNING run of ``experiment`` (with ``data_version``, and tags equal to one of the
    values in ``match``: ``{"model_type": ["linear", "linear-ensemble"]}``) whose owner is gone.

    Returns the closed runs' ids and prints one line per run, so the operator sees what was cleaned up."""
    from mlflow.tracking import MlflowClient

    from sctab.tracking.runs import experiment_id, tracking_uri
    from sctab.tracking.tracked import close_run

    uri = uri or tracking_uri()
    client = MlflowClient(uri)
    where = f"tags.data_version = '{data_version}'" if data_version else ""
    closed = []
    for r in running_runs(client, [experiment_id(experiment, uri)], where):
        tags = r.data.tags
        if any(str(tags.get(k)) not in {str(v) for v in (vals if isinstance(vals, (list, tuple, set)) else [vals])}
               for k, vals in (match or {}).items()):
            continue
        why = owner_gone(tags)
        if why is None:
            continue
        reason = (f"stale: still RUNNING but {why}; closed by {who or 'a later run'} at "
                  f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        try:
            client.set_tag(r.info.run_id, STALE_TAG, reason)
        except Exception:  # noqa: BLE001 - close_run reports a failing server; the reason is also in `error`
            pass
        close_run(client, r.info.run_id, "FAILED", reason)
        name = tags.get("mlflow.runName", r.info.run_id)
        print(f"closed stale MLflow run {name} ({r.info.run_id}) as FAILED: {why}", file=sys.stderr, flush=True)
        closed.append(r.info.run_id)
    return closed
