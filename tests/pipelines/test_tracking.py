"""pipelines.tracking's training runs on sqlite: one run per job (found again by its storage path), one value per step
when a restarted job replays steps, sweep parent and trial runs."""

from __future__ import annotations

import pytest

from pipelines import tracking

pytestmark = pytest.mark.integration  # real MLflow on sqlite


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """One sqlite tracking DB for the module (creating its tables takes seconds)."""
    return tracking.default_tracking_uri(tmp_path_factory.mktemp("mlflow"))


def test_a_job_keeps_one_run_and_each_step_is_logged_once(uri) -> None:
    params = {"job": {"train": {"max_steps": 4}}}
    run_id = tracking.open_run(uri, "exp", "job", key="/runs/job", params=params)
    first = tracking.RunTracker(uri, "exp", "job", run_id=run_id)
    for step in (1, 2, 3):
        first.log_metrics({"loss": 10.0 + step, "epoch": 0}, step)
    first.log_metrics({"val_jf": 0.5}, 2)

    # the worker group restarts from a checkpoint at step 1 and trains steps 2, 3 again, then 4
    again = tracking.RunTracker(uri, "exp", "job", run_id=run_id)
    for step in (2, 3, 4):
        again.log_metrics({"loss": 20.0 + step, "epoch": 1}, step)
    history = tracking.run_metrics(uri, run_id)
    assert history["loss"] == [(1, 11.0), (2, 12.0), (3, 13.0), (4, 24.0)]  # the first value of a replayed step
    assert [s for s, _ in history["epoch"]] == [1, 2, 3, 4] and history["val_jf"] == [(2, 0.5)]

    # a rerun of the job (same key) continues the run; a changed param is kept as a tag (params cannot change)
    tracking.end_run(uri, run_id, "KILLED")
    rerun = tracking.open_run(uri, "exp", "job", key="/runs/job", params={"job": {"train": {"max_steps": 8}}})
    assert rerun == run_id and tracking.run_status(uri, run_id) == "RUNNING"
    assert tracking.run_tags(uri, run_id)["sgmg.rerun.job.train.max_steps"] == "8"
    assert tracking.changed_params(uri, run_id, {"job": {"train": {"max_steps": 8}}, "new": 1}) == [
        "job.train.max_steps"
    ]
    assert tracking.open_run(uri, "exp", "other", key="/runs/other") != run_id
    with pytest.raises(ValueError, match="status: expected one of"):
        tracking.end_run(uri, run_id, "DONE")


def test_sweep_trials_are_nested_and_ended_with_their_status(uri) -> None:
    from pipelines import sweep_trials
    from pipelines.sweep_report import FAILED, FINISHED, STOPPED_EARLY, TrialRow, to_markdown

    parent = tracking.open_run(uri, "exp2", "sweep", key="sweep:/runs/sweep")
    runs = {
        t: tracking.open_run(uri, "exp2", t, key=f"/runs/{t}", parent_run_id=parent, tags={sweep_trials.TRIAL_TAG: t})
        for t in ("a", "b", "c", "d", "e")
    }
    tracking.end_run(uri, runs["a"], "FINISHED")  # its fit() returned; b was stopped by ASHA; c never reported
    # b was left FAILED by its process (before trial processes left their runs open on an error, one torn down by the
    # scheduler mid-fit ended its run so): Tune's verdict wins
    tracking.end_run(uri, runs["b"], "FAILED", tags={tracking.ERROR_TAG: "actor died"})
    # e finished just before the sweep was killed; the restored sweep ran it again, it resumed at its last step and
    # reported nothing, so Tune counts it as stopped early: its own FINISHED stands
    tracking.end_run(uri, runs["e"], "FINISHED")
    rows = [
        TrialRow("a", FINISHED, {"train.optim.lr": 1e-4}, {"loss": 1.0, "step": 4}),
        TrialRow("b", STOPPED_EARLY, {"train.optim.lr": 1e-3}, {"loss": 2.0, "step": 2}),
        TrialRow("d", FAILED, {"train.optim.lr": 1e-2}, {}, error="RuntimeError: out of memory"),
        TrialRow("e", STOPPED_EARLY, {"train.optim.lr": 1e-5}, {}),
    ]
    final = sweep_trials.close_trial_runs(uri, parent, rows)
    status = {t: tracking.run_status(uri, r) for t, r in runs.items()}
    assert status == {"a": "FINISHED", "b": "KILLED", "c": "FAILED", "d": "FAILED", "e": "FINISHED"}
    assert final == {"a": FINISHED, "b": STOPPED_EARLY, "c": FAILED, "d": FAILED, "e": FINISHED}
    assert tracking.run_tags(uri, runs["d"])[tracking.ERROR_TAG] == "RuntimeError: out of memory"
    assert tracking.run_tags(uri, runs["b"])["sgmg.trial_status"] == "stopped early"
    assert tracking.ERROR_TAG not in tracking.run_tags(uri, runs["b"])
    assert {r.info.run_id for r in tracking.child_runs(uri, parent)} == set(runs.values())
    table = to_markdown(rows, "loss").splitlines()
    assert table[0] == "| trial | status | train.optim.lr | reports | step | loss | mlflow_run |"
    assert table[3].startswith("| b | stopped early | 0.001 |")
