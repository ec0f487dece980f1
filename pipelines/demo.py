"""``make demo``: the project's whole pipeline on one machine, each stage through the command a user runs at scale.

1. ``sgmg make-synthetic`` + ``sgmg validate-dataset``: a synthetic Ref-YouTube-VOS-layout dataset;
2. ``sgmg ingest`` (Ray Data): its train and valid splits into Parquet shards in ``WORK/storage`` (the local folder
   that stands in for object storage; ``--storage s3://bucket/prefix`` puts them there instead);
3. the untrained model's J&F on the valid split (the baseline);
4. ``sgmg sweep`` (Ray Tune, ASHA): trials over loss weights and learning rates, each a Ray Train job with 2 workers
   on clips streamed by Ray Data, validated on the valid split's J&F; the best is registered in MLflow (sqlite in
   ``WORK/mlflow.db``) as a version of ``sgmg``;
5. ``sgmg train --register sgmg`` (Ray Train): the best configuration trained further from the best trial's
   checkpoint; it becomes ``models:/sgmg@champion`` if it beats the sweep's best;
6. ``sgmg serve --model models:/sgmg@champion``: every valid expression is sent over HTTP with the project's client
   (``pipelines.serve.client``), the served masks are scored with the Ref-YouTube-VOS protocol, then Serve is stopped;
7. ``demo_out/report.json`` and ``demo_out/report.md`` (plots, stage table, overlays).

Every finished stage is reused by a rerun (``WORK/stages.json``). Run ``python -m pipelines.demo --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipelines.cluster import free_port

CONFIGS = Path(__file__).resolve().parent / "configs"
MODEL_NAME = "sgmg"


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is (the code paths are the same at every size).

    Attributes:
        videos, valid_videos, frames, size: the synthetic dataset.
        trials: sweep trials (each a Ray Train job with 2 workers).
        trial_steps: optimizer steps of each trial (ASHA may stop a trial earlier).
        train_steps: optimizer steps of the final training (from the best trial's checkpoint).
        checkpoint_every: steps between checkpoints (and validation J&F) of the sweep trials.
    """

    videos: int = 200
    valid_videos: int = 24  # 156 expressions: a closer estimate of J&F than 12 videos (81), whose first 12 they are
    frames: int = 8
    size: tuple[int, int] = (144, 192)
    trials: int = 3
    trial_steps: int = 100
    train_steps: int = 2100
    checkpoint_every: int = 50


SMALL = DemoSize(videos=4, valid_videos=2, frames=4, size=(96, 128), trials=3, trial_steps=4, train_steps=4,
                 checkpoint_every=2)  # fmt: skip


class StageFailed(RuntimeError):
    """A stage's command failed; the message has the tail of its log."""


class Demo:
    """Runs the stages in ``work`` and records what each produced in ``work/stages.json``."""

    def __init__(self, work: Path, out: Path, size: DemoSize, storage: str | None, seed: int, port: int) -> None:
        self.work, self.out, self.size, self.seed, self.port = work, out, size, seed, port
        self.storage = storage or str(work / "storage")
        self.data = work / "data"
        self.logs = work / "logs"
        self.tracking_uri = f"sqlite:///{work / 'mlflow.db'}"
        self.state_path = work / "stages.json"
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.exists() else {}
        self.env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled"),
            "PYTHONUNBUFFERED": "1",
            "TQDM_DISABLE": "1",
            "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        }
        self.t0 = time.perf_counter()

    # ------------------------------------------------------------------------------------------------ plumbing

    def say(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.t0:6.0f}s] {msg}", flush=True)

    def stage(self, name: str, title: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run ``fn`` unless the stage is recorded as done; record its outputs and time."""
        done = self.state.get(name)
        if done is not None:
            self.say(f"{title}: done before ({done['seconds']:.0f} s then), reused")
            return done
        self.say(f"{title} ...")
        started = time.perf_counter()
        result = fn()
        result["seconds"] = round(time.perf_counter() - started, 1)
        self.state[name] = result
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, self.state_path)
        self.say(f"{title}: done in {result['seconds']:.0f} s")
        return result

    def sgmg(self, stage: str, args: list[str], progress: Progress | None = None) -> None:
        """Run ``sgmg ARGS`` (this Python), output to ``logs/STAGE.log``, following it for ``progress``."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log_path = self.logs / f"{stage}.log"
        cmd = [sys.executable, "-m", "sgmg.cli", *args]
        with log_path.open("w") as log:
            log.write("$ sgmg " + " ".join(args) + "\n")
            log.flush()
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.work)
            with _follow(log_path, progress):
                rc = proc.wait()
        if rc != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
            raise StageFailed(f"`sgmg {' '.join(args[:2])} ...` exited with {rc}; log {log_path}:\n{tail}")

    # ------------------------------------------------------------------------------------------------ stages

    def make_data(self) -> dict[str, Any]:
        s = self.size
        if not (self.data / "synthetic.json").exists():
            args = ["make-synthetic", str(self.data), "--videos", str(s.videos), "--valid-videos", str(s.valid_videos)]
            args += ["--frames", str(s.frames), "--size", f"{s.size[0]}x{s.size[1]}", "--seed", str(self.seed)]
            self.sgmg("make-synthetic", [*args, "--overwrite", "--quiet"])
        self.sgmg("validate-dataset", ["validate-dataset", str(self.data)])
        report = (self.logs / "validate-dataset.log").read_text().splitlines()[-1]
        return {"data": str(self.data), "validate": report}

    def ingest(self) -> dict[str, Any]:
        out = {}
        for split in ("train", "valid"):
            dest = f"{self.storage.rstrip('/')}/shards/{split}"
            args = ["ingest", "--source", str(self.data), "--dest", dest, "--format", "ref-youtube-vos"]
            self.sgmg(f"ingest-{split}", [*args, "--split", split, "--shard-size", "4"])
            out[split] = dest
        return out

    def untrained(self) -> dict[str, Any]:
        import transformers

        from pipelines.demo_report import predict_split_jf

        transformers.utils.logging.disable_progress_bar()
        jf = predict_split_jf(self.data, self.work / "predictions_untrained", seed=self.seed)
        self.say(f"      untrained model: J&F {jf['J&F']:.3f}")
        return {"jf": jf}

    def sweep(self, shards: dict[str, str]) -> dict[str, Any]:
        s = self.size
        summary = self.work / "sweep.json"
        args = ["sweep", "--config", str(CONFIGS / "demo_sweep.yaml"), "--summary", str(summary)]
        args += [f"num_samples={s.trials}", f"seed={self.seed}", f"job.shards={shards['train']}"]
        args += [f"job.val_shards={shards['valid']}", f"job.storage_path={self.storage.rstrip('/')}/sweeps"]
        args += [f"job.train.max_steps={s.trial_steps}", f"job.train.checkpoint_every={s.checkpoint_every}"]
        args += [f"job.tracking.tracking_uri={self.tracking_uri}", f"job.train.seed={self.seed}"]
        self.sgmg("sweep", args, Progress("sweep trials' steps", s.trials * s.trial_steps, _STEP, per_source=True))
        return json.loads(summary.read_text())

    def train(self, shards: dict[str, str], sweep: dict[str, Any]) -> dict[str, Any]:
        s = self.size
        summary = self.work / "train.json"
        args = ["train", "--config", str(CONFIGS / "demo_train.yaml"), "--register", MODEL_NAME]
        args += ["--summary", str(summary), f"shards={shards['train']}", f"val_shards={shards['valid']}"]
        args += [f"storage_path={self.storage.rstrip('/')}/runs", f"tracking.tracking_uri={self.tracking_uri}"]
        args += [f"train.max_steps={s.train_steps}", f"train.init_from={sweep['best_checkpoint']}"]
        args += [f"train.seed={self.seed}", f"train.checkpoint_every={max(1, s.train_steps // 4)}"]
        args += [f"train.optim.lr_milestones=[{max(1, int(0.9 * s.train_steps))}]"]  # one LR drop, at 90 %
        args += [f"{k}={v}" for k, v in sweep["best_params"].items()]
        self.sgmg("train", args, Progress("training steps", s.train_steps, _STEP))
        return json.loads(summary.read_text())

    def serve_and_score(self) -> dict[str, Any]:
        from pipelines import model_uris
        from pipelines.demo_report import score_served

        champion = model_uris.resolve_model_version(self.tracking_uri, f"models:/{MODEL_NAME}@champion")
        with self.serving() as url:
            served = score_served(url, self.data, self.work / "predictions_served", progress=_bar)
        self.say(f"      champion {champion.uri}: J&F {served['jf']['J&F']:.3f} over {served['requests']} requests")
        return {"champion": {**asdict(champion), "uri": champion.uri}, **served}

    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """``sgmg serve`` on the champion for the block; stopped with SIGTERM (it must exit 0)."""
        port = self.port or free_port()
        log_path = self.logs / "serve.log"
        log = log_path.open("w")
        cmd = [sys.executable, "-m", "sgmg.cli", "serve", "--model", f"models:/{MODEL_NAME}@champion"]
        cmd += [f"short_side={self.size.size[0]}", "reload_interval_s=0"]  # the training resolution
        proc = subprocess.Popen(cmd + ["--port", str(port)], stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                cwd=self.work)  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while "SgMg is serving" not in log_path.read_text(errors="replace"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise StageFailed(f"sgmg serve did not start; log {log_path}")
                time.sleep(0.5)
            self.say(f"      serving at http://127.0.0.1:{port}/ (log {log_path})")
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait()
            log.close()
            self.say(f"      sgmg serve stopped (exit {rc})")
            if rc != 0:
                raise StageFailed(f"sgmg serve exited with {rc} on SIGTERM; log {log_path}")

    def run(self) -> dict[str, Any]:
        data = self.stage("data", "[1/6] synthetic dataset + validate-dataset", self.make_data)
        shards = self.stage("ingest", "[2/6] sgmg ingest (Ray Data) of the train and valid splits", self.ingest)
        base = self.stage("untrained", "[3/6] the untrained model's J&F (baseline)", self.untrained)
        sweep = self.stage("sweep", "[4/6] sgmg sweep (Ray Tune + Ray Train, 2 workers per trial)",
                           lambda: self.sweep(shards))  # fmt: skip
        train = self.stage("train", "[5/6] sgmg train --register (the best configuration, further)",
                           lambda: self.train(shards, sweep))  # fmt: skip
        served = self.stage("serve", "[6/6] sgmg serve on models:/sgmg@champion, every valid expression over HTTP",
                            self.serve_and_score)  # fmt: skip
        from pipelines.demo_report import write_report

        report = write_report(self, data=data, untrained=base, sweep=sweep, train=train, served=served)
        self.say(f"report: {self.out / 'report.md'} and {self.out / 'report.json'}")
        return report


# ------------------------------------------------------------------------------------------------ progress

_STEP = re.compile(r"\[train\] step (\d+)/(\d+)")
_PID = re.compile(r"pid=(\d+)")


@dataclass
class Progress:
    """A progress bar fed by the lines of a log: ``pattern``'s first group is the step reached (per Ray worker pid when
    ``per_source``: several trials log at once)."""

    title: str
    total: int
    pattern: re.Pattern
    per_source: bool = False


def _bar(total: int, title: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, desc=f"      {title}", unit="it", dynamic_ncols=True, file=sys.stdout, mininterval=1.0)


@contextlib.contextmanager
def _follow(path: Path, progress: Progress | None) -> Iterator[None]:
    """Follow ``path`` in a thread while the block runs, moving a tqdm bar by ``progress``."""
    if progress is None:
        yield
        return
    stop = threading.Event()
    bar = _bar(progress.total, progress.title)
    reached: dict[str, int] = {}

    def read() -> None:
        with path.open(errors="replace") as f:
            while True:
                line = f.readline()
                if not line:
                    if stop.is_set():
                        return
                    time.sleep(0.3)
                    continue
                match = progress.pattern.search(line)
                if match:
                    source = _PID.search(line)
                    key = source.group(1) if progress.per_source and source else ""
                    reached[key] = max(reached.get(key, 0), int(match.group(1)))
                    bar.n = min(progress.total, sum(reached.values()))
                    bar.refresh()

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        bar.n = progress.total
        bar.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="work", help="work folder (default: ./work); a rerun reuses finished stages")
    parser.add_argument("--out", default="demo_out", help="report folder (default: ./demo_out)")
    parser.add_argument("--storage", help="object storage for shards and checkpoints (default: WORK/storage; s3://...)")
    parser.add_argument("--small", action="store_true", help="a tiny run of the same stages (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--port", type=int, default=0, help="port of the demo's sgmg serve (default: a free one)")
    parser.add_argument("--fresh", action="store_true", help="delete WORK first instead of reusing finished stages")
    args = parser.parse_args(argv)
    work, out = Path(args.work).resolve(), Path(args.out).resolve()
    if args.fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    demo = Demo(work, out, SMALL if args.small else DemoSize(), args.storage, args.seed, args.port)
    try:
        report = demo.run()
    except StageFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    demo.say(
        f"champion J&F {report['champion_jf']:.3f} (untrained {report['untrained_jf']:.3f}), "
        f"{report['serve_requests']} requests, {report['serve_errors']} errors, {report['wall_seconds']:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
