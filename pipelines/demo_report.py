"""The demo's measurements and report: the untrained baseline, the served masks scored with the Ref-YouTube-VOS
protocol, and ``report.json`` / ``report.md`` with plots (PNG) and overlays (GIF)."""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

MAX_TEXTS = 8  # the endpoint's default limit of expressions per request


def _valid_expressions(data: Path) -> dict[str, dict[str, Any]]:
    meta = json.loads((data / "meta_expressions" / "valid" / "meta_expressions.json").read_text())
    return meta["videos"]


def _frame_files(data: Path, video: str, frames: list[str]) -> list[Path]:
    return [data / "valid" / "JPEGImages" / video / f"{f}.jpg" for f in frames]


def _metrics(res: Any) -> dict[str, float]:
    return {k: float(v) for k, v in res.metrics.items()}


def predict_split_jf(data: Path, out: Path, *, seed: int, config: Path | None = None) -> dict[str, float]:
    """J&F of the untrained model of the demo's training config on the valid split (in this process)."""
    import torch

    from pipelines.train_job import load_job
    from sgmg.eval.evaluate import evaluate
    from sgmg.eval.ref_ytvos import write_expression_masks
    from sgmg.inference.commands import load_tokenizer_for
    from sgmg.inference.predictor import RVOSPredictor
    from sgmg.train.trainer import build_training_model

    config = config or Path(__file__).resolve().parent / "configs" / "demo_train.yaml"
    cfg = load_job(config).train
    torch.manual_seed(seed)
    model = build_training_model(cfg).eval()
    short_side = int(json.loads((data / "synthetic.json").read_text())["config"]["height"])
    predictor = RVOSPredictor(model, load_tokenizer_for(model), short_side=short_side)
    for video, item in _valid_expressions(data).items():
        frames = np.stack([np.asarray(_open_rgb(p)) for p in _frame_files(data, video, item["frames"])])
        exps = list(item["expressions"].items())
        ids, mask = predictor.tokenize_many([e["exp"] for _, e in exps])
        masks, _, _ = predictor.segment_window(frames, ids, mask)  # one visual pass for every expression
        for (exp_id, _), expr_masks in zip(exps, masks.numpy(), strict=True):
            write_expression_masks(out, video, exp_id, item["frames"], expr_masks)
    res = evaluate("ref-youtube-vos", out, data, split="valid")
    res.write_json(out / "eval.json")
    return _metrics(res)


def _open_rgb(path: Path) -> Any:
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def _frames_zip(files: list[Path]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for f in files:
            zf.write(f, f.name)
    return buf.getvalue()


def score_served(url: str, data: Path, out: Path, *, progress: Any = None) -> dict[str, Any]:
    """Send every valid expression to the endpoint at ``url`` (a zip of each video's frames, up to 8 sentences a
    request, with :func:`pipelines.serve.client.segment`), write the masks in the Ref-YouTube-VOS layout under
    ``out`` and score them."""
    from pipelines.serve.client import SegmentError, segment
    from sgmg.eval.evaluate import evaluate
    from sgmg.eval.ref_ytvos import write_expression_masks

    videos = _valid_expressions(data)
    total = sum(len(v["expressions"]) for v in videos.values())
    bar = progress(total, "expressions served") if progress else None
    requests = errors = 0
    failures: list[str] = []
    for video, item in videos.items():
        payload = _frames_zip(_frame_files(data, video, item["frames"]))
        exps = list(item["expressions"].items())
        for start in range(0, len(exps), MAX_TEXTS):
            chunk = exps[start : start + MAX_TEXTS]
            requests += 1
            try:
                answer = segment(url, payload, [e["exp"] for _, e in chunk], filename=f"{video}.zip")
            except (SegmentError, OSError) as exc:
                errors += 1
                failures.append(f"{video}: {exc}")
                continue
            for (exp_id, _), result in zip(chunk, answer.expressions, strict=True):
                write_expression_masks(out, video, exp_id, item["frames"], result.masks)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    res = evaluate("ref-youtube-vos", out, data, split="valid")
    res.write_json(out / "eval.json")
    return {
        "jf": _metrics(res),
        "requests": requests,
        "errors": errors,
        "failures": failures[:10],
        "expressions": total,
    }


# ------------------------------------------------------------------------------------------------ report


def _ema(values: list[float], decay: float) -> list[float]:
    """Exponential moving average of ``values``, debiased like Adam's (the first value is not pulled towards 0)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = decay * avg + (1 - decay) * v
        out.append(avg / (1 - decay**i))
    return out


def _plot_training(train: dict[str, Any], path: Path) -> bool:
    from pipelines import tracking

    try:
        history = tracking.run_metrics(train["tracking_uri"], train["mlflow_run_id"])
    except Exception:  # noqa: BLE001 - no run to plot: the report says so
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    loss = history.get("loss", [])
    if loss:
        steps, values = [s for s, _ in loss], [v for _, v in loss]
        ax.plot(steps, values, color="tab:blue", lw=0.6, alpha=0.35, label="training loss (a step's batch)")
        ax.plot(steps, _ema(values, 0.9), color="tab:blue", lw=1.5, label="training loss (moving average)")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if history.get("val_jf"):
        ax2 = ax.twinx()
        val = history["val_jf"]
        ax2.plot([s for s, _ in val], [v for _, v in val], "o-", color="tab:red", label="validation J&F")
        ax2.set_ylabel("validation J&F")
        ax2.set_ylim(0, 1)
    fig.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_sweep(sweep: dict[str, Any], path: Path) -> bool:
    trials = sweep.get("trials") or []
    metric = sweep.get("metric", "val_jf")
    params = sorted({k for t in trials for k in t["params"]})
    if not trials or not params:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(3.2 * len(params), 3), squeeze=False)
    for ax, name in zip(axes[0], params, strict=True):
        xs = [t["params"][name] for t in trials]
        ys = [t["metrics"].get(metric, math.nan) for t in trials]
        ax.scatter(xs, ys, color="tab:purple")
        if all(isinstance(x, int | float) and x > 0 for x in xs) and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(name.split(".")[-1])
        ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _pick_examples(data: Path, per_item: dict[str, dict[str, float]]) -> list[tuple[str, str, str]]:
    """A few (video, exp_id, why): the best and the median expression, and one whose object has a distractor of the
    same colour or shape in its video."""
    synthetic = json.loads((data / "synthetic.json").read_text())["videos"]
    videos = _valid_expressions(data)
    scored = []
    for key, scores in per_item.items():
        video, _, exp_id = key.partition("/")
        if video in videos and exp_id in videos[video]["expressions"]:
            scored.append((scores.get("J", 0.0), video, exp_id))
    scored.sort()
    picks: list[tuple[str, str, str]] = []
    if scored:
        picks.append((scored[-1][1], scored[-1][2], "best J"))
        picks.append((scored[len(scored) // 2][1], scored[len(scored) // 2][2], "median J"))
    for _, video, exp_id in reversed(scored):
        obj_id = int(videos[video]["expressions"][exp_id]["obj_id"])
        objects = {o["obj_id"]: o for o in synthetic[video]["objects"]}
        target = objects.get(obj_id)
        shared = [a for o in objects.values() if o["obj_id"] != obj_id for a in ("color", "shape") if o[a] == target[a]]
        if target and shared and (video, exp_id) not in {(v, e) for v, e, _ in picks}:
            picks.append((video, exp_id, f"a distractor shares its {shared[0]}"))
            break
    return picks


def _overlay_gif(data: Path, predictions: Path, video: str, exp_id: str, path: Path) -> None:
    """Frames with the served mask (left) and the ground truth (right) drawn over them, as an animated GIF."""
    from PIL import Image

    from sgmg.inference.writers import overlay

    item = _valid_expressions(data)[video]
    obj_id = int(item["expressions"][exp_id]["obj_id"])
    images = []
    for frame_id, f in zip(item["frames"], _frame_files(data, video, item["frames"]), strict=True):
        frame = np.asarray(_open_rgb(f))
        pred = np.asarray(Image.open(predictions / "Annotations" / video / exp_id / f"{frame_id}.png")) > 127
        with Image.open(data / "valid" / "Annotations" / video / f"{frame_id}.png") as im:
            gt = np.asarray(im) == obj_id
        images.append(Image.fromarray(np.concatenate([overlay(frame, pred), overlay(frame, gt)], axis=1)))
    images[0].save(path, save_all=True, append_images=images[1:], duration=250, loop=0)


def write_report(demo: Any, **stages: dict[str, Any]) -> dict[str, Any]:
    """``report.json`` and ``report.md`` (with PNG plots and GIF overlays) in ``demo.out``; returns the JSON."""
    import time

    out: Path = demo.out
    out.mkdir(parents=True, exist_ok=True)
    sweep, train, served = stages["sweep"], stages["train"], stages["served"]
    metric = sweep.get("metric", "val_jf")
    report = {
        "champion_jf": served["jf"]["J&F"],
        "champion_j": served["jf"]["J"],
        "champion_f": served["jf"]["F"],
        "untrained_jf": stages["untrained"]["jf"]["J&F"],
        "serve_requests": served["requests"],
        "serve_errors": served["errors"],
        "serve_expressions": served["expressions"],
        "wall_seconds": round(time.perf_counter() - demo.t0, 1),  # this run (a rerun reuses finished stages)
        "stages_total_seconds": round(sum(s.get("seconds") or 0 for s in demo.state.values()), 1),
        "stage_seconds": {name: s.get("seconds") for name, s in demo.state.items()},
        "sweep_trials": [{"params": t["params"], metric: t["metrics"].get(metric)} for t in sweep.get("trials", [])],
        "sweep_best": {"params": sweep.get("best_params"), metric: (sweep.get("best_metrics") or {}).get(metric)},
        "champion_version": served["champion"]["version"],
        "champion_uri": served["champion"]["uri"],
        "sweep_registration": sweep.get("registration"),
        "train_registration": train.get("registration"),
        "mlflow_db": demo.tracking_uri,
        "storage": demo.storage,
        "size": {k: v for k, v in vars(demo.size).items()},
    }
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    has_curve = _plot_training(train, out / "training_curve.png")
    has_sweep = _plot_sweep(sweep, out / "sweep.png")
    per_item = json.loads((demo.work / "predictions_served" / "eval.json").read_text()).get("per_item", {})
    examples = []
    for i, (video, exp_id, why) in enumerate(_pick_examples(demo.data, per_item)):
        name = f"overlay_{i}.gif"
        _overlay_gif(demo.data, demo.work / "predictions_served", video, exp_id, out / name)
        text = _valid_expressions(demo.data)[video]["expressions"][exp_id]["exp"]
        j = per_item.get(f"{video}/{exp_id}", {}).get("J", math.nan)
        examples.append((name, f'{video}: "{text}" ({why}; J {j:.2f})'))
    (out / "report.md").write_text(_markdown(report, has_curve, has_sweep, examples, metric))
    return report


def _markdown(
    report: dict[str, Any], has_curve: bool, has_sweep: bool, examples: list[tuple[str, str]], metric: str
) -> str:
    lines = [
        "# SgMg demo report",
        "",
        f"- champion `{report['champion_uri']}`: **J&F {report['champion_jf']:.3f}** (J {report['champion_j']:.3f}, "
        f"F {report['champion_f']:.3f}) on the synthetic valid split, from masks served over HTTP",
        f"- untrained model (baseline): J&F {report['untrained_jf']:.3f}",
        f"- {report['serve_expressions']} expressions in {report['serve_requests']} requests, "
        f"{report['serve_errors']} errors",
        f"- wall time of this run: {report['wall_seconds']:.0f} s; MLflow: `{report['mlflow_db']}`",
        "",
        "## Stages",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {name} | {s} |" for name, s in report["stage_seconds"].items()],
        "",
        "## Sweep",
        "",
        f"| trial | parameters | {metric} |",
        "|---|---|---|",
        *[
            f"| {i} | {', '.join(f'{k.split(chr(46))[-1]}={v:.3g}' for k, v in t['params'].items())} | "
            f"{t[metric] if t[metric] is None else round(t[metric], 4)} |"
            for i, t in enumerate(report["sweep_trials"])
        ],
        "",
    ]
    if has_sweep:
        lines += ["![sweep](sweep.png)", ""]
    if has_curve:
        lines += ["## Training of the champion", "", "![training curve](training_curve.png)", ""]
    if examples:
        lines += ["## Served masks (left) and ground truth (right)", ""]
        for name, caption in examples:
            lines += [f"{caption}", "", f"![{caption}]({name})", ""]
    return "\n".join(lines)
