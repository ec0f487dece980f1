"""Benchmark: Ray Train throughput with 1 and 2 CPU workers, and the cost of a restore after a worker is killed.

Run: ``.venv/bin/python tests/benchmarks/bench_train.py [--steps 40 --frames 2 --size 96]`` (not part of ``make
test``). It ingests a tiny synthetic Ref-YouTube-VOS-layout set, then runs the same ``sgmg_tiny`` job (one clip per
worker per step, ``log_every=1``) on a local Ray with 1 and with 2 workers and reads the per-step timestamps the job
logs to MLflow: steps/s and clips/s over the steps after the first 5 (start-up excluded). Last, a 2-worker run is
SIGKILLed (one ``RayTrainWorker`` process) right after Ray Train registered its first checkpoint, and the restore cost
is the time from the kill to the first new step logged (the steps between the checkpoint and the kill are trained
again first, unlogged). Other processes share the CPU: the script prints ``os.getloadavg()``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout without installing
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipelines"))  # tiny_ytvos


def history(uri: str, run_id: str) -> list[tuple[int, float]]:
    """``(step, wall time in s)`` of the logged loss values, by step."""
    from mlflow.tracking import MlflowClient

    return sorted(
        (m.step, m.timestamp / 1000) for m in MlflowClient(tracking_uri=uri).get_metric_history(run_id, "loss")
    )


def rate(points: list[tuple[int, float]], skip: int = 5) -> float:
    """Steps/s between the ``skip``-th logged step and the last."""
    points = points[skip:]
    return (points[-1][0] - points[0][0]) / max(points[-1][1] - points[0][1], 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--out", default=None, help="write the JSON results here too")
    args = parser.parse_args()

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_TRAIN_ENABLE_STATE_ACTOR_RECONCILIATION", "0")
    import ray
    from tiny_ytvos import write_tiny_ytvos

    from pipelines import ingest, tracking, train_job
    from pipelines import train as ray_train

    print(f"load average before: {os.getloadavg()}")
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    write_tiny_ytvos(work / "ytvos", n_videos=8, n_frames=8, size=(64, 96))
    ray.init(num_cpus=4, include_dashboard=True, _temp_dir=tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    shards = str(work / "shards")
    ingest.run_ingest(
        ingest.IngestConfig(source=str(work / "ytvos"), dest=shards, max_side=args.size, shard_size=4),
        printer=lambda m: None,
    )
    uri = tracking.default_tracking_uri(work)
    results: dict[str, dict] = {}

    def job(name: str, workers: int, steps: int, checkpoint_every: int) -> train_job.RayTrainJob:
        return train_job.load_job(
            None,
            [
                f"shards={shards}",
                f"storage_path={work / 'runs'}",
                f"name={name}",
                f"num_workers={workers}",
                "cpus_per_worker=0.5",
                "data_cpus=0.5",
                "shuffle_buffer=0",
                "max_failures=1",
                f"tracking.tracking_uri={uri}",
                "train.model=sgmg_tiny",
                f"train.data.num_frames={args.frames}",
                f"train.data.max_size={args.size}",
                f"train.max_steps={steps}",
                f"train.checkpoint_every={checkpoint_every}",
                "train.log_every=1",
            ],
        )

    for workers in (1, 2):
        res = ray_train.fit(job(f"w{workers}", workers, args.steps, args.steps), log=lambda m: None)
        steps_per_s = rate(history(uri, res.mlflow_run_id))
        results[f"{workers}_workers"] = {
            "steps_per_s": round(steps_per_s, 2),
            "clips_per_s": round(steps_per_s * workers, 2),  # one clip per worker per step
            "fit_s": round(res.seconds, 1),
        }
        print(f"{workers} worker(s): {results[f'{workers}_workers']}", flush=True)

    # restore: kill a worker right after the first registered checkpoint
    from ray.util.state import list_actors

    run_path = work / "runs" / "restore"
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(r=ray_train.fit(job("restore", 2, 3 * args.steps, 5))))
    thread.start()
    snapshot = run_path / "checkpoint_manager_snapshot.json"
    while not (snapshot.is_file() and re.search(r"step_\d{7}", snapshot.read_text())):
        time.sleep(0.05)
    pid = next(
        a.pid
        for a in list_actors(
            address=ray.get_runtime_context().gcs_address,  # not "auto": other clusters may run on this machine
            filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")],
            detail=True,
        )
    )
    killed = time.time()
    os.kill(pid, signal.SIGKILL)
    thread.join()
    points = history(uri, box["r"].mlflow_run_id)
    before = [s for s, t in points if t < killed]
    first_new = min(t for s, t in points if t >= killed)
    results["restore"] = {
        "seconds_kill_to_first_new_step": round(first_new - killed, 1),
        "last_step_before_kill": max(before),
    }
    print(f"restore: {results['restore']}")
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    ray.shutdown()


if __name__ == "__main__":
    main()
