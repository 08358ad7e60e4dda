"""One tracked run: how every run of the project is opened, logged to and closed (one failure policy)."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from sctab.tracking import TrackedRun, record_failure, tracked_run
from tests.paths import SRC

PARAMS = {"profile": "tiny"}


def _only_run(uri):
    client = MlflowClient(uri)
    exps = [e.experiment_id for e in client.search_experiments()]
    (run,) = client.search_runs(exps)
    return run


def test_a_run_that_ends_well_is_finished_with_params_tags_and_metrics(tracking):
    with tracked_run("train", name="mlp-seed0", params=PARAMS, log_params={"arch": {"n_hidden": 2}, "lr": 0.1},
                     tags={"model_type": "mlp"}) as run:
        run.log_epoch({"val_f1_macro": 0.5, "epoch": 0, "note": "text is skipped"}, epoch=0)
        run.log_epoch({"val_f1_macro": 0.6}, epoch=1)
        run.log_final({"test_f1_macro": 0.7, "flag": True})
    r = _only_run(tracking)
    assert r.info.status == "FINISHED" and r.info.run_name == "mlp-seed0"
    assert r.data.params == {"arch.n_hidden": "2", "lr": "0.1"}
    assert r.data.tags["model_type"] == "mlp" and r.data.tags["profile"] == "tiny" and "git_commit" in r.data.tags
    assert r.data.metrics == {"val_f1_macro": 0.6, "final_test_f1_macro": 0.7}
    hist = MlflowClient(tracking).get_metric_history(r.info.run_id, "val_f1_macro")
    assert [(h.step, h.value) for h in hist] == [(0, 0.5), (1, 0.6)]


def test_a_run_that_raises_is_failed_with_the_error(tracking):
    with pytest.raises(ValueError, match="bad setting"):
        with tracked_run("train", name="x", params=PARAMS):
            raise ValueError("bad setting lr=-1")
    r = _only_run(tracking)
    assert r.info.status == "FAILED" and r.data.tags["error"] == "ValueError: bad setting lr=-1"


@pytest.mark.parametrize("stop", [KeyboardInterrupt, SystemExit])
def test_a_run_stopped_on_purpose_is_killed(tracking, stop):
    with pytest.raises(stop):
        with tracked_run("tune-xgboost", name="trial", params=PARAMS):
            raise stop()
    r = _only_run(tracking)
    assert r.info.status == "KILLED" and "error" not in r.data.tags


def test_nested_resumed_attached_and_recorded_runs(tracking):
    with tracked_run("study", name="parent", params=PARAMS) as parent:
        with tracked_run("study", name="child", params=PARAMS, parent=parent.run_id) as child:
            TrackedRun.attach(child.run_id).set_tags(worker_nodes="a,b")  # another process logging to it
        failed = record_failure("study", name="lost trial", error="node died", parent=parent.run_id)
    client = MlflowClient(tracking)
    kid, lost = client.get_run(child.run_id), client.get_run(failed)
    assert kid.data.tags["mlflow.parentRunId"] == parent.run_id and kid.data.tags["worker_nodes"] == "a,b"
    assert lost.info.status == "FAILED" and lost.data.tags["error"] == "node died"
    assert lost.data.tags["mlflow.parentRunId"] == parent.run_id
    # a study that goes on after an interruption reopens its parent run and closes it by the same policy
    with pytest.raises(KeyboardInterrupt):
        with tracked_run("study", name="ignored", resume=parent.run_id):
            assert client.get_run(parent.run_id).info.status == "RUNNING"
            raise KeyboardInterrupt
    assert client.get_run(parent.run_id).info.status == "KILLED"


def test_every_run_is_opened_through_tracked_run():
    """No module but sctab.tracking creates MLflow runs (MLflow's fluent start_run may only re-enter a run
    that tracked_run opened, by its run_id, for APIs such as log_model that log into the active run)."""
    import ast
    root = SRC / "sctab"
    bad = []
    for f in sorted(root.rglob("*.py")):
        if f.relative_to(root).parts[0] == "tracking":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                name = node.func.attr
                reenter = name == "start_run" and any(k.arg == "run_id" for k in node.keywords)
                if name == "create_run" or (name == "start_run" and not reenter):
                    bad.append(f"{f.relative_to(root)}:{node.lineno} {name}")
    assert not bad, "MLflow runs opened outside sctab.tracking.tracked_run:\n" + "\n".join(bad)
