"""``python -m pipelines.demo --small`` end to end in a fresh work folder, as ``make demo`` runs it (a subprocess):
synthetic data, ingest, sweep, train, registry, serve, the client and the report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_small_demo_runs_every_stage_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipelines.demo", "--small", "--work", str(tmp_path / "work")]
    run = subprocess.run([*cmd, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    for key in ("champion_jf", "untrained_jf", "serve_requests", "serve_errors", "wall_seconds", "stage_seconds",
                "sweep_trials", "champion_version", "mlflow_db"):  # fmt: skip
        assert key in report, key
    assert report["serve_errors"] == 0 and report["serve_requests"] > 0
    assert 0.0 <= report["champion_jf"] <= 1.0 and 0.0 <= report["untrained_jf"] <= 1.0
    assert len(report["sweep_trials"]) == 3
    assert set(report["stage_seconds"]) == {"data", "ingest", "untrained", "sweep", "train", "serve"}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "![sweep](sweep.png)" in md and "overlay_0.gif" in md
    for name in ("sweep.png", "training_curve.png", "overlay_0.gif"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    # the experiments notebook plots this run's MLflow runs, sweep and registry
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for its notebook runner
    from test_notebooks import execute_notebook

    monkeypatch.setenv("SGMG_DEMO_WORK", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    nb = execute_notebook(Path(__file__).resolve().parents[2] / "notebooks" / "experiments.ipynb", tmp_path)
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 2
    # a second run reuses every finished stage
    again = subprocess.run([*cmd, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("reused") == 6, again.stdout
