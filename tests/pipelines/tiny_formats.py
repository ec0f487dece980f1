"""Tiny datasets in the RefCOCO/+/g and MeViS layouts (the recipe tests), written here so the pipeline tests do not
depend on the data tests' fixtures. A module of its own so test modules can import it by a unique name."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np

from sgmg.data.io import encode_jpeg


def _square_video(t: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise frames with a bright square moving right (label 1) and a still one (label 2)."""
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 80, size=(t, h, w, 3), dtype=np.uint8)
    labels = np.zeros((t, h, w), np.uint8)
    for k in range(t):
        labels[k, 8:24, 4 + 4 * k : 20 + 4 * k] = 1
        labels[k, 40:56, 60:76] = 2
    frames[labels > 0] = 230
    return frames, labels


def write_tiny_refcoco(root: Path, size: tuple[int, int] = (64, 96)) -> Path:
    """RefCOCO, RefCOCO+ and RefCOCOg (REFER layout) over two COCO images, two referred objects each."""
    h, w = size
    frames, _ = _square_video(2, h, w)
    images, anns = [], []
    for i, image_id in enumerate((7, 8)):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        (root / "train2014").mkdir(parents=True, exist_ok=True)
        (root / "train2014" / name).write_bytes(encode_jpeg(frames[i]))
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        x = 4 + 4 * i
        for k, (x0, y0, x1, y1) in enumerate(((x, 8, x + 16, 24), (60, 40, 76, 56))):
            anns.append(
                {
                    "id": 100 * image_id + k,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "area": 256.0,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "segmentation": [[x0, y0, x1, y0, x1, y1, x0, y1]],
                }
            )
    instances = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "square"}]}
    texts = ("the square on the left", "the square at the bottom right")
    refs = [
        {
            "ref_id": a["id"],
            "ann_id": a["id"],
            "image_id": a["image_id"],
            "split": "train",
            "category_id": 1,
            "sentences": [{"sent_id": a["id"], "sent": texts[a["id"] % 100], "raw": texts[a["id"] % 100]}],
        }
        for a in anns
    ]
    for name, by in (("refcoco", "unc"), ("refcoco+", "unc"), ("refcocog", "umd")):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "instances.json").write_text(json.dumps(instances))
        (root / name / f"refs({by}).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def write_tiny_mevis(root: Path, frames_per_video: int = 4, size: tuple[int, int] = (64, 96)) -> Path:
    """A MeViS ``train`` split: one video, a motion expression of one object and one of both."""
    from pycocotools import mask as mask_utils

    frames, labels = _square_video(frames_per_video, *size)
    folder = root / "train" / "JPEGImages" / "v1"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(frames_per_video):
        (folder / f"{k:05d}.jpg").write_bytes(encode_jpeg(frames[k]))
    masks = {}
    for anno, obj in ((50, 1), (51, 2)):
        per_frame = []
        for k in range(frames_per_video):
            rle = mask_utils.encode(np.asfortranarray((labels[k] == obj).astype(np.uint8)))
            per_frame.append({"size": rle["size"], "counts": rle["counts"].decode()})
        masks[str(anno)] = per_frame
    meta = {
        "videos": {
            "v1": {
                "frames": [f"{k:05d}" for k in range(frames_per_video)],
                "expressions": {
                    "0": {"exp": "the square moving right", "obj_id": [1], "anno_id": [50]},
                    "1": {"exp": "both squares", "obj_id": [1, 2], "anno_id": [50, 51]},
                },
            }
        }
    }
    (root / "train" / "meta_expressions.json").write_text(json.dumps(meta))
    (root / "train" / "mask_dict.json").write_text(json.dumps(masks))
    return root
