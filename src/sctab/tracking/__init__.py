"""sctab.tracking: where runs go and what they carry (:mod:`runs`), the one way to open a run (:mod:`tracked`),
and closing the runs of processes that died (:mod:`stale`)."""

from sctab.tracking.runs import (
                                 TrackingServerError,
                                 data_version,
                                 experiment_id,
                                 explain_tracking_error,
                                 flatten,
                                 fluent_uris,
                                 git_commit,
                                 lineage_tags,
                                 project_root,
                                 tracking_uri,
)
from sctab.tracking.stale import STALE_TAG, close_stale_runs, owner_gone, owner_tags, running_runs
from sctab.tracking.tracked import STOPPED, TrackedRun, close_run, record_failure, tracked_run

__all__ = ["tracked_run", "TrackedRun", "record_failure", "close_run", "STOPPED", "tracking_uri", "experiment_id",
           "lineage_tags", "flatten", "project_root", "git_commit", "data_version", "TrackingServerError",
           "explain_tracking_error", "fluent_uris", "close_stale_runs", "owner_tags", "owner_gone", "running_runs",
           "STALE_TAG"]
