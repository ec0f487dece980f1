"""A tiny dataset in the Ref-YouTube-VOS layout, written here so the pipeline tests do not depend on the generator.

A module of its own (not conftest.py) so test modules can import it by a unique name.
"""

from __future__ import annotations

import os


def write_tiny_ytvos(
    root: str | os.PathLike,
    n_videos: int = 6,
    n_frames: int = 5,
    size: tuple[int, int] = (72, 96),
    split: str = "train",
    corrupt_frame: str | None = None,
    bad_mask_size: str | None = None,
    seed: int = 0,
) -> list[str]:
    """Write a tiny Ref-YouTube-VOS-layout dataset: smooth random frames, 1-2 moving rectangles per video.

    Args:
        root: dataset root folder.
        n_videos, n_frames, size: videos, frames per video and ``(H, W)``.
        split: split folder name.
        corrupt_frame: video id whose second frame is replaced by garbage bytes.
        bad_mask_size: video id whose first mask has another size than its frame.
        seed: RNG seed.

    Returns:
        The video ids.
    """
    import io
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    root = Path(root)
    palette = [0, 0, 0, 236, 95, 103, 249, 145, 87, 250, 200, 99] + [0] * (256 * 3 - 12)
    meta: dict = {"videos": {}}
    ids = [f"vid{i:03d}" for i in range(n_videos)]
    for v, vid in enumerate(ids):
        (root / split / "JPEGImages" / vid).mkdir(parents=True, exist_ok=True)
        (root / split / "Annotations" / vid).mkdir(parents=True, exist_ok=True)
        n_obj = 1 + v % 2
        base = rng.integers(0, 256, size=(h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
        frame_ids = [f"{5 * t:05d}" for t in range(n_frames)]
        for t, fid in enumerate(frame_ids):
            img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
            arr = np.roll(np.asarray(img), shift=2 * t, axis=1).copy()
            labels = np.zeros((h, w), dtype=np.uint8)
            for o in range(n_obj):
                y0 = (10 + 17 * o + t) % (h - 20)
                x0 = (5 + 29 * o + 3 * t + v) % (w - 24)
                if not (o == 1 and t == n_frames - 1):  # object 2 leaves in the last frame (visibility False)
                    labels[y0 : y0 + 14 + 3 * o, x0 : x0 + 18] = o + 1
                    arr[y0 : y0 + 14 + 3 * o, x0 : x0 + 18] = (40 + 90 * o, 200 - 60 * o, 30 * t)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
            if vid == corrupt_frame and t == 1:
                data = b"this is not a jpeg"
            (root / split / "JPEGImages" / vid / f"{fid}.jpg").write_bytes(data)
            mask = Image.fromarray(labels if not (vid == bad_mask_size and t == 0) else labels[: h // 2], mode="P")
            mask.putpalette(palette)
            mask.save(root / split / "Annotations" / vid / f"{fid}.png")
        exps = {}
        for o in range(n_obj):
            exps[str(2 * o)] = {
                "exp": f"the {'red' if o == 0 else 'green'} box number {o + 1} in {vid}",
                "obj_id": str(o + 1),
            }
            exps[str(2 * o + 1)] = {"exp": f"object {o + 1} moving right", "obj_id": str(o + 1)}
        meta["videos"][vid] = {"expressions": exps, "frames": frame_ids}
    (root / "meta_expressions" / split).mkdir(parents=True, exist_ok=True)
    (root / "meta_expressions" / split / "meta_expressions.json").write_text(json.dumps(meta))
    return ids
