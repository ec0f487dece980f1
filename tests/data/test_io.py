"""FileSource protocol, local source, and readers over a non-local source."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import labels_video, write

from sgmg.data.datasets import open_dataset
from sgmg.data.datasets.davis import parse_text_annotations
from sgmg.data.io import DataError, FileSource, LocalFileSource, as_source, decode_image, encode_jpeg


class MemorySource:
    """An in-memory FileSource, standing in for the object-storage one of the pipelines package."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def read_bytes(self, rel: str) -> bytes:
        if rel not in self.files:
            raise DataError(f"cannot read {self.describe(rel)}: no such object")
        return self.files[rel]

    def list_dir(self, rel: str) -> list[str]:
        prefix = rel.rstrip("/") + "/" if rel else ""
        return sorted({k[len(prefix) :].split("/")[0] for k in self.files if k.startswith(prefix)})

    def exists(self, rel: str) -> bool:
        return rel in self.files or any(k.startswith(rel.rstrip("/") + "/") for k in self.files)

    def describe(self, rel: str) -> str:
        return f"mem://bucket/{rel}"


def test_local_source(tmp_path: Path) -> None:
    write(tmp_path / "a/b.txt", "hi")
    src = as_source(f"file://{tmp_path}")
    assert isinstance(src, LocalFileSource) and isinstance(src, FileSource)
    assert src.read_bytes("a/b.txt") == b"hi" and src.list_dir("a") == ["b.txt"] and src.list_dir("zz") == []
    assert src.exists("a") and not src.exists("a/c")
    with pytest.raises(DataError, match="does not exist"):
        as_source(tmp_path / "missing")
    with pytest.raises(DataError, match="FileSource"):
        as_source("s3://bucket/data")
    with pytest.raises(DataError, match="unreadable image x.jpg"):
        decode_image(b"nope", "x.jpg")


def test_reader_over_a_memory_source() -> None:
    frames, labels = labels_video()
    from sgmg.data.io import encode_png

    files = {
        "meta_expressions/train/meta_expressions.json": json.dumps(
            {"videos": {"v": {"expressions": {"0": {"exp": "x", "obj_id": "1"}}, "frames": ["0", "1", "2"]}}}
        ).encode()
    }
    for k in range(3):
        files[f"train/JPEGImages/v/{k}.jpg"] = encode_jpeg(frames[k])
        files[f"train/Annotations/v/{k}.png"] = encode_png(labels[k])
    reader = open_dataset("auto", MemorySource(files), "train")
    (rec,) = reader.list_videos()
    video = reader.load_video(rec)
    np.testing.assert_array_equal(video.masks[0], labels == 1)
    del files["train/Annotations/v/1.png"]
    with pytest.raises(DataError, match=r"mem://bucket/train/Annotations/v/1\.png"):
        reader.load_video(rec)


def test_davis_text_errors_name_file_and_line() -> None:
    assert parse_text_annotations('bike 1 "a red bike"\n\n', "f.txt") == {"bike": {1: "a red bike"}}
    with pytest.raises(DataError, match=r"f\.txt:2: expected"):
        parse_text_annotations('bike 1 "a"\nbike x "b"\n', "f.txt")


def test_refcoco_converted_instances(tmp_path: Path) -> None:
    write(tmp_path / "train2014/a.jpg", encode_jpeg(np.zeros((8, 8, 3), np.uint8)))
    inst = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 8, "width": 8, "original_id": 42, "caption": "the cat"},
            {"id": 2, "file_name": "a.jpg", "height": 8, "width": 8, "original_id": 42, "caption": "a cat"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "original_id": 5, "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
            {"id": 2, "image_id": 2, "original_id": 5, "segmentation": [[1, 1, 4, 1, 4, 4, 1, 4]]},
        ],
    }
    write(tmp_path / "refcocog/instances_refcocog_val.json", json.dumps(inst))
    reader = open_dataset("refcoco", tmp_path, "refcocog/val")
    (rec,) = reader.list_videos()
    assert rec.video_id == "42" and [e.text for e in rec.expressions] == ["the cat", "a cat"]
    video = reader.load_video(rec)
    assert video.masks.shape == (2, 1, 8, 8) and video.masks[0, 0, 1:4, 1:4].all()


def test_decode_image_jpeg_fast_path_equals_pil_and_keeps_errors() -> None:
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    data = encode_jpeg(frame)
    with Image.open(io.BytesIO(data)) as img:
        np.testing.assert_array_equal(decode_image(data), np.asarray(img.convert("RGB")))  # same libjpeg-turbo pixels
    buf = io.BytesIO()  # CMYK JPEG: refused by simplejpeg, converted by PIL
    Image.fromarray(frame).convert("CMYK").save(buf, "JPEG")
    out = decode_image(buf.getvalue())
    assert out.shape == (37, 53, 3) and out.dtype == np.uint8
    buf = io.BytesIO()  # grey JPEG -> RGB
    Image.fromarray(frame[..., 0]).save(buf, "JPEG")
    assert decode_image(buf.getvalue()).shape == (37, 53, 3)
    with pytest.raises(DataError, match="frame 7"):
        decode_image(data[: len(data) // 2], "frame 7")  # truncated: an error, not a grey half image
