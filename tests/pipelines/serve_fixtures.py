"""Shared material of the Serve tests: a tiny SgMg checkpoint trained for a few steps on a bright moving square (so
its masks are not noise), and short videos of that square in the formats the endpoint takes.

A module of its own (not conftest.py) so test modules can import it by a unique name.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

TEXT = "the bright square"
SHORT_SIDE = 128  # small frames keep the tests fast; `sgmg predict --short-side` and the app's `short_side` match


def square_frames(t: int = 6, h: int = 72, w: int = 96, seed: int = 0) -> np.ndarray:
    """uint8 ``[t, h, w, 3]``: a bright square moving right over dim noise."""
    rng = np.random.default_rng(seed)
    frames = (rng.random((t, h, w, 3)) * 60).astype(np.uint8)
    side = h // 3
    for f in range(t):
        y, x = h // 4 + f, w // 6 + 4 * f
        frames[f, y : y + side, x : x + side] = 230
    return frames


def train_tiny_checkpoint(out: Path, steps: int = 30) -> Path:
    """Train ``sgmg_tiny`` for ``steps`` steps on the square clip (~10 s on 2 cores) and save it to ``out``."""
    import torch

    import sgmg
    from sgmg.data.schema import ClipBatch, VideoTarget
    from sgmg.data.tokenizer import load_tokenizer
    from sgmg.data.transforms import masks_to_boxes
    from sgmg.inference.predictor import preprocess_frames
    from sgmg.loss.criterion import build_criterion
    from sgmg.train.config import LossConfig, OptimConfig
    from sgmg.train.optim import build_optimizer
    from sgmg.train.step import NonFiniteGuard, train_step

    torch.manual_seed(0)
    model = sgmg.build_model("sgmg_tiny")
    tokenizer = load_tokenizer(model.config.text.tokenizer_source)
    frames = square_frames(t=2, h=96, w=128)
    video = preprocess_frames(frames, short_side=96)[None]  # [1, 2, 3, 96, 128]
    masks = torch.from_numpy((frames[..., 0] > 200).astype(np.float32))[None]  # [1, 2, 96, 128]
    boxes = torch.from_numpy(masks_to_boxes(masks.bool().numpy()))
    target = VideoTarget(masks, boxes, torch.ones(1, 2, dtype=torch.bool), (96, 128))
    enc = tokenizer([TEXT], return_tensors="pt")
    batch = ClipBatch(
        video, torch.zeros(1, 96, 128, dtype=torch.bool), enc["input_ids"], enc["attention_mask"], [target]
    )
    lr = 3e-3
    opt = build_optimizer(model, OptimConfig(lr=lr, lr_visual_encoder=lr, lr_text_encoder=lr, weight_decay=0.0))
    crit, guard = build_criterion(LossConfig()), NonFiniteGuard(1)
    for step in range(steps):
        train_step(model, crit, batch, opt, step_index=step, clip_max_norm=1.0, nonfinite=guard)
    sgmg.save_checkpoint(model.eval(), out)
    return out


def write_mp4(path: Path, frames: np.ndarray, fps: int = 10, codec: str = "libx264") -> Path:
    """Encode ``frames`` losslessly enough for the test (H.264, or VP9 for ``.webm``)."""
    import av

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def frames_zip(frames: np.ndarray, fmt: str = "PNG", names: list[str] | None = None) -> bytes:
    """A zip of the frames as images, ``00000.png``, ... (or ``names``)."""
    from PIL import Image

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, frame in enumerate(frames):
            img = io.BytesIO()
            Image.fromarray(frame).save(img, format=fmt)
            zf.writestr(names[i] if names else f"{i:05d}.{fmt.lower()}", img.getvalue())
    return buf.getvalue()


def gif_bytes(frames: np.ndarray) -> bytes:
    """An animated GIF of the frames."""
    from PIL import Image

    buf = io.BytesIO()
    images = [Image.fromarray(f) for f in frames]
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=100, loop=0)
    return buf.getvalue()
