"""Readers of every format over tiny generated fixtures, and their errors."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from data_helpers import labels_video, write

from sgmg.data.datasets import detect_format, open_dataset
from sgmg.data.datasets.refcoco import safe_unpickle
from sgmg.data.io import DataError, LocalFileSource, decode_index_png, decode_video, encode_mp4, encode_png


def test_ytvos_reader_on_synthetic(synthetic_root: Path) -> None:
    reader = open_dataset("ref-youtube-vos", synthetic_root, "train")
    records = reader.list_videos()
    assert [r.video_id for r in records] == ["vid00000", "vid00001", "vid00002", "vid00003"]
    rec = records[0]
    assert rec.frame_ids == tuple(f"{t:05d}" for t in range(6))
    assert all(e.obj_ids for e in rec.expressions)
    pickle.loads(pickle.dumps(rec))  # records are picklable
    video = pickle.loads(pickle.dumps(reader)).load_video(rec)
    assert video.frames.shape == (6, 96, 128, 3) and video.frames.dtype == np.uint8
    assert video.has_gt and video.masks.shape == (len(video.obj_ids), 6, 96, 128)
    labels = decode_index_png((synthetic_root / "train/Annotations/vid00000/00002.png").read_bytes())
    for k, o in enumerate(video.obj_ids):
        np.testing.assert_array_equal(video.masks[k, 2], labels == o)
    sample = video.sample(rec.expressions[0])
    assert sample.masks.shape[0] == 1 and sample.valid.any()


def test_ytvos_resize_and_frame_subset(synthetic_root: Path) -> None:
    reader = open_dataset("auto", synthetic_root, "valid")
    rec = reader.list_videos()[0]
    full = reader.load_video(rec)
    small = reader.load_video(rec, max_side=64, frame_indices=[4, 1])
    assert small.frames.shape == (2, 48, 64, 3)
    assert small.masks.shape[1:] == (2, 48, 64)
    # nearest-neighbour masks: every pixel keeps a value of the full-size mask
    area_full = full.masks[:, 4].mean(axis=(1, 2))
    area_small = small.masks[:, 0].mean(axis=(1, 2))
    np.testing.assert_allclose(area_small, area_full, atol=0.03)
    with pytest.raises(ValueError, match="out of range"):
        reader.load_video(rec, frame_indices=[6])


def test_ytvos_valid_without_ground_truth(tmp_path: Path, synthetic_root: Path) -> None:
    root = tmp_path / "ytvos"
    shutil.copytree(synthetic_root, root)
    shutil.rmtree(root / "valid/Annotations")
    meta_path = root / "meta_expressions/valid/meta_expressions.json"
    meta = json.loads(meta_path.read_text())
    for v in meta["videos"].values():  # the real valid split has no obj_id
        for e in v["expressions"].values():
            del e["obj_id"]
    meta_path.write_text(json.dumps(meta))
    reader = open_dataset("ref-youtube-vos", root, "valid")
    rec = reader.list_videos()[0]
    assert all(e.obj_ids == () for e in rec.expressions)
    video = reader.load_video(rec)
    assert not video.has_gt and video.masks.shape[0] == 0
    assert video.sample(rec.expressions[0]).masks.shape == (0, 6, 96, 128)


def test_ytvos_errors_name_the_file(tmp_path: Path, synthetic_root: Path) -> None:
    root = tmp_path / "ytvos"
    shutil.copytree(synthetic_root, root)
    (root / "train/JPEGImages/vid00000/00003.jpg").unlink()
    (root / "train/JPEGImages/vid00000/00004.jpg").write_bytes(b"not a jpeg")
    reader = open_dataset("ref-youtube-vos", root, "train")
    rec = reader.list_videos()[0]
    with pytest.raises(DataError) as info:
        reader.load_video(rec)
    msg = str(info.value)
    assert "00003.jpg" in msg and "00004.jpg" in msg and "2 problem(s)" in msg
    (root / "meta_expressions/train/meta_expressions.json").write_text('{"videos": {')
    with pytest.raises(DataError, match=r"malformed JSON in .*meta_expressions\.json"):
        reader.list_videos()
    with pytest.raises(DataError, match="no expressions file for split 'test'"):
        open_dataset("ref-youtube-vos", root, "test").list_videos()


def test_ref_davis_raw(davis_raw: Path) -> None:
    assert detect_format(davis_raw) == "ref-davis"
    reader = open_dataset("ref-davis", davis_raw, "train")
    (rec,) = reader.list_videos()
    assert rec.video_id == "dogs-scale"  # "dog-scale" in the text files is fixed
    texts = {e.exp_id: (e.text, e.obj_ids) for e in rec.expressions}
    assert texts["0"] == ("a dog on the left", (1,))
    assert texts["1"] == ("dog moving", (1,))
    assert texts["2"] == ("left dog", (1,))  # paired by object id, not by line position
    assert texts["6"] == ("caf\xe9 dog", (2,))  # annot2 files are Latin-1
    video = reader.load_video(rec)
    _, labels = labels_video()
    assert video.obj_ids == [1, 2]
    np.testing.assert_array_equal(video.masks[1], labels == 2)
    (val,) = open_dataset("ref-davis", davis_raw, "valid").list_videos()
    assert val.video_id == "bike" and [e.exp_id for e in val.expressions] == ["0", "1", "2", "3"]


def test_ref_davis_converted_layout(tmp_path: Path) -> None:
    root = tmp_path / "davis_conv"
    frames, labels = labels_video()
    for k in range(3):
        write(root / f"valid/JPEGImages/480p/bike/{k:05d}.jpg", encode_png(frames[k]))
        write(root / f"valid/Annotations/480p/bike/{k:05d}.png", encode_png(labels[k]))
    # frames listed without extension; JPEG names but PNG bytes still decode (PIL sniffs content)
    write(
        root / "meta_expressions/valid/meta_expressions.json",
        json.dumps(
            {
                "videos": {
                    "bike": {
                        "expressions": {"0": {"exp": "a bike", "obj_id": "2"}},
                        "frames": ["00000", "00001", "00002"],
                    }
                }
            }
        ),
    )
    reader = open_dataset("ref-davis", root, "valid")
    (rec,) = reader.list_videos()
    assert rec.dataset == "ref-davis"
    video = reader.load_video(rec)
    np.testing.assert_array_equal(video.masks[0], labels == 2)


def test_refcoco(refcoco_root: Path) -> None:
    assert detect_format(refcoco_root) == "refcoco"
    reader = open_dataset("refcoco", refcoco_root, "refcoco/train")
    (rec,) = reader.list_videos()
    assert rec.video_id == "7" and len(rec.frame_ids) == 1
    assert [(e.exp_id, e.text, e.obj_ids) for e in rec.expressions] == [
        ("11", "left square", (100,)),
        ("12", "top left thing", (100,)),
    ]
    video = reader.load_video(rec)
    assert video.frames.shape == (1, 20, 30, 3) and video.obj_ids == [100]
    ys, xs = np.nonzero(video.masks[0, 0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 5, 2, 5)
    (val,) = open_dataset("refcoco", refcoco_root, "val").list_videos()
    assert val.expressions[0].obj_ids == (101,)
    with pytest.raises(ValueError, match="dataset name"):
        open_dataset("refcoco", refcoco_root, "cocox/train")


def test_refcoco_all_combines_the_three_datasets(refcoco_root: Path) -> None:
    """``all/train``: RefCOCO, RefCOCO+ and RefCOCOg together (the official image pretraining), ids kept apart."""
    import shutil

    with pytest.raises(DataError, match=r"combines .* do not exist"):
        open_dataset("refcoco", refcoco_root, "all/train").list_videos()
    shutil.copytree(refcoco_root / "refcoco", refcoco_root / "refcoco+")
    (refcoco_root / "refcocog").mkdir()
    shutil.copy(refcoco_root / "refcoco/instances.json", refcoco_root / "refcocog/instances.json")
    shutil.copy(refcoco_root / "refcoco/refs(unc).p", refcoco_root / "refcocog/refs(umd).p")
    reader = open_dataset("refcoco", refcoco_root, "all/train")
    records = reader.list_videos()
    assert [r.video_id for r in records] == ["refcoco:7", "refcoco+:7", "refcocog:7"]
    assert reader.load_video(records[2]).frames.shape == (1, 20, 30, 3)


def test_safe_unpickler_refuses_code() -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with pytest.raises(DataError, match="refusing to load global builtins.print"):
        safe_unpickle(pickle.dumps([Evil()]), "refs(unc).p")
    assert safe_unpickle(pickle.dumps({"a": [1, 2.0, "x", (3,)], "s": {1}}), "ok.p") == {
        "a": [1, 2.0, "x", (3,)],
        "s": {1},
    }


def test_mevis_multi_object(mevis_root: Path) -> None:
    assert detect_format(mevis_root) == "mevis"
    reader = open_dataset("mevis", mevis_root, "train")
    (rec,) = reader.list_videos()
    assert rec.expressions[0].obj_ids == (1, 2)
    video = reader.load_video(rec)
    _, labels = labels_video()
    assert video.obj_ids == [1, 2]
    np.testing.assert_array_equal(video.masks[0], labels == 1)
    assert not video.masks[1, 0].any() and (video.masks[1, 1:] == (labels[1:] == 2)).all()
    sample = video.sample(rec.expressions[0])
    assert sample.masks.shape[0] == 2
    assert sample.valid.tolist() == [[True, True, True], [False, True, True]]
    # corrupt RLE -> error naming mask_dict.json
    masks = json.loads((mevis_root / "train/mask_dict.json").read_text())
    masks["50"][1] = {"size": [24, 32], "counts": "%%%%"}
    (mevis_root / "train/mask_dict.json").write_text(json.dumps(masks))
    with pytest.raises(DataError, match=r"mask_dict\.json anno_id 50 frame 1"):
        open_dataset("mevis", mevis_root, "train").load_video(rec)


def test_videos_folder(videos_root: Path) -> None:
    assert detect_format(videos_root) == "videos"
    reader = open_dataset("videos", videos_root, "test")
    recs = {r.video_id: r for r in reader.list_videos()}
    assert set(recs) == {"clip", "frames_dir"}
    assert [e.text for e in recs["clip"].expressions] == ["the red car", "a dog"]
    assert recs["clip"].frame_ids == ("00000", "00001", "00002", "00003")
    clip = reader.load_video(recs["clip"], frame_indices=[0, 3])
    assert clip.frames.shape == (2, 32, 48, 3) and not clip.has_gt
    frames, _ = labels_video(t=4, h=32, w=48)
    err = [np.abs(clip.frames[1].astype(int) - f).mean() for f in frames]
    assert int(np.argmin(err)) == 3 and err[3] < 0.8 * min(err[:3])  # lossy, but decoded the right frame
    folder = reader.load_video(recs["frames_dir"], max_side=24)
    assert folder.frames.shape == (2, 16, 24, 3)


def test_videos_folder_errors(tmp_path: Path) -> None:
    root = tmp_path / "v"
    write(root / "broken.mp4", b"\x00" * 100)
    write(root / "expressions.json", json.dumps({"broken": ["x"], "missing": ["y"]}))
    problems: list[str] = []
    open_dataset("videos", root).list_videos(problems)
    assert any("broken.mp4" in p for p in problems) and any("'missing'" in p for p in problems)
    with pytest.raises(DataError, match="unreadable video"):
        decode_video(b"\x00" * 100, "broken.mp4")


def test_decode_video_pyav_fallback_matches_decord() -> None:
    from sgmg.data.io import _decode_video_av, _decode_video_decord

    frames, _ = labels_video(t=3, h=32, w=64)  # decord mis-sizes some widths (48 fails): decode_video falls back
    data = encode_mp4(frames)
    a, b = _decode_video_decord(data, [0, 2]), _decode_video_av(data, [0, 2])
    assert a.shape == b.shape == (2, 32, 64, 3)
    assert np.abs(a.astype(int) - b).mean() < 3
    with pytest.raises(IndexError, match="out of range"):
        _decode_video_av(data, [5])
    with pytest.raises(DataError, match=r"unreadable video v\.mp4: decord: .*; av: .*out of range"):
        decode_video(data, "v.mp4", [0, 7])


def test_masks_keep_palette_indices(tmp_path: Path) -> None:
    labels = np.array([[0, 3], [7, 255]], np.uint8)
    from sgmg.data.synthetic import PALETTE

    np.testing.assert_array_equal(decode_index_png(encode_png(labels, PALETTE)), labels)
    with pytest.raises(DataError, match="RGB image; expected a palette"):
        decode_index_png(encode_png(np.zeros((2, 2, 3), np.uint8)), "m.png")
    src = LocalFileSource(tmp_path)
    with pytest.raises(DataError, match=str(tmp_path / "nope.png")):
        src.read_bytes("nope.png")


def test_ytvos_valid_excludes_the_competition_test_videos(tmp_path: Path, synthetic_root: Path) -> None:
    root = tmp_path / "ytvos"
    shutil.copytree(synthetic_root, root)
    meta = json.loads((root / "meta_expressions/valid/meta_expressions.json").read_text())
    test_vid = sorted(meta["videos"])[0]
    write(
        root / "meta_expressions/test/meta_expressions.json",
        json.dumps({"videos": {test_vid: meta["videos"][test_vid]}}),
    )
    valid = [r.video_id for r in open_dataset("ref-youtube-vos", root, "valid").list_videos()]
    every = [r.video_id for r in open_dataset("ref-youtube-vos", root, "valid-all").list_videos()]
    test_reader = open_dataset("ref-youtube-vos", root, "test")
    (test_rec,) = test_reader.list_videos()
    assert test_vid not in valid and sorted(every) == sorted([*valid, test_vid]) and test_rec.video_id == test_vid
    assert test_reader.load_video(test_rec).frames.shape[0] == 6  # frames read from valid/
