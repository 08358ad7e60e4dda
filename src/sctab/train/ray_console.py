"""What Ray prints on an operator's console: the stages' own lines, not Ray's internals.

By default a stage shows its summary, one line per epoch and the Ray dashboard's address; ``SCTAB_LOG=debug``
brings back everything Ray says (its INFO logs, every ``ray.train.report``, C++ core-worker errors), which
also stays in the session's log files (``/tmp/ray/session_latest/logs``) either way. The causes of the
noise, each handled where it arises (docs/logging.md):

- Ray Train's detached PlacementGroupCleaner polls the controller through the State API, which the
  dashboard serves; without the dashboard every poll fails with a warning. So Ray starts with its dashboard.
- Ray Train logs each report at INFO under a logger named by file path, outside its own LoggingConfig:
  :func:`quiet_worker` raises the worker's root logger to WARNING.
- One C++ core-worker line per run about Ray Train's PreemptionWatcher actor: skipped by the driver's log
  forwarder (``RAY_DEDUP_LOGS_SKIP_REGEX``, read when ``ray`` is first imported, hence :func:`prepare`).
"""

from __future__ import annotations

import logging
import os

#: Ray-internal lines the driver drops from forwarded worker output (default level only)
SKIP_LINES = r"has constructor arguments in the object store and max_restarts > 0"


def debug() -> bool:
    """``SCTAB_LOG=debug``: show everything Ray logs."""
    return os.environ.get("SCTAB_LOG", "").strip().lower() == "debug"


def prepare() -> None:
    """Environment for Ray, set before ``ray`` is imported or started (its processes inherit it)."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # reports reach the controller at its polling interval (2 s by default): one epoch of tiny is shorter
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")
    if not debug():
        os.environ.setdefault("RAY_DEDUP_LOGS_SKIP_REGEX", SKIP_LINES)


def driver_level() -> str:
    """Level of the driver's ``ray`` logger (ray.init's ``logging_level``) and of Ray Train's LoggingConfig."""
    return "INFO" if debug() else "WARNING"


def quiet_driver() -> None:
    """Drop the driver's notice that a local Ray uses token authentication (it is on by design, see README)."""
    if not debug():
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)


def quiet_worker() -> None:
    """In a Ray worker (Train worker, Tune trial): INFO logs of Ray's internals stay in the session's files."""
    if not debug():
        logging.getLogger().setLevel(logging.WARNING)
