"""RefCOCO / RefCOCO+ / RefCOCOg as 1-frame videos (the image pretraining data of SgMg).

Layout (the REFER toolkit's files next to the COCO images):

```
<root>/train2014/COCO_train2014_<id>.jpg          (or <root>/images/train2014/, <root>/images/mscoco/images/train2014/)
<root>/<name>/refs(<by>).p                        name: refcoco, refcoco+, refcocog; by: unc, umd, google
<root>/<name>/instances.json                      COCO instances (images, annotations with polygons/RLE)
```

or, instead of the pickle, the official SgMg conversion ``<root>/<name>/instances_<name>_<split>.json`` (one COCO
"image" per sentence, with ``caption`` and ``original_id``).

``split`` is ``"<name>/<split>"`` (``"refcoco+/testA"``), a bare split (``"train"``: RefCOCO), or ``"all/<split>"``:
RefCOCO, RefCOCO+ and RefCOCOg together (the official image pretraining's ``--dataset_file all``; their video ids are
prefixed ``<name>:``, as one COCO image is in all three). One record per image: every referred object of the image in
that split is an object of the 1-frame video and each sentence an expression.

The ``refs(*).p`` files are Python pickles. Unpickling data from a user is unsafe (a pickle can run code), so they are
read with :class:`SafeUnpickler`, which only rebuilds builtin containers and scalars and refuses every other global.
"""

from __future__ import annotations

import dataclasses
import io
import pickle
from collections.abc import Sequence

import numpy as np

from sgmg.data import rle
from sgmg.data.datasets.base import DatasetReader, assemble, raise_if_errors, select_indices, source_dict
from sgmg.data.io import DataError, FileSource, decode_image, join, read_json
from sgmg.data.schema import Expression, VideoData, VideoRecord

NAMES = ("refcoco", "refcoco+", "refcocog")
ALL = "all"  # the three together
_DEFAULT_BY = {"refcoco": ("unc", "google"), "refcoco+": ("unc",), "refcocog": ("umd", "google")}
_IMAGE_DIRS = ("train2014", "images/train2014", "images/mscoco/images/train2014")


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that only allows builtin containers and scalars (no classes, no callables: no code execution)."""

    _ALLOWED = {
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "list"),
        ("builtins", "dict"),
        ("builtins", "tuple"),
        ("builtins", "str"),
        ("builtins", "bytes"),
        ("builtins", "int"),
        ("builtins", "float"),
        ("builtins", "bool"),
        ("builtins", "complex"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> type:
        """Resolve only the allowed builtin types (Python 2 ``__builtin__`` is mapped to ``builtins``)."""
        if module == "__builtin__":
            module = "builtins"
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (only builtin containers allowed)")
        return super().find_class(module, name)


def safe_unpickle(data: bytes, name: str) -> object:
    """Load a pickle of plain containers with :class:`SafeUnpickler` (Python 2 strings decoded as UTF-8, else Latin-1).

    Raises:
        DataError: not a pickle, or one that needs anything besides builtin containers.
    """
    last: Exception | None = None
    for encoding in ("utf-8", "latin-1"):
        try:
            return SafeUnpickler(io.BytesIO(data), encoding=encoding).load()
        except UnicodeDecodeError as err:
            last = err
        except Exception as err:  # UnpicklingError, EOFError, ValueError, ...
            raise DataError(f"cannot read pickle {name}: {err}") from err
    raise DataError(f"cannot read pickle {name}: {last}")


class RefCocoReader(DatasetReader):
    """Reader of RefCOCO/+/g (see the module docstring)."""

    format = "refcoco"

    def __init__(self, source: FileSource, split: str) -> None:
        name, _, sub = split.rpartition("/")
        name = name or "refcoco"
        if name not in (*NAMES, ALL):
            raise ValueError(
                f"refcoco split {split!r}: dataset name must be one of {(*NAMES, ALL)} (e.g. 'refcoco+/testA')"
            )
        super().__init__(source, split)
        self.name, self.sub = name, sub

    def _image_dir(self) -> str:
        for rel in _IMAGE_DIRS:
            if self.source.exists(rel):
                return rel
        raise DataError(f"no COCO image folder: expected {self.source.describe('train2014')}")

    def _refs_file(self) -> str | None:
        for by in _DEFAULT_BY[self.name]:
            rel = f"{self.name}/refs({by}).p"
            if self.source.exists(rel):
                return rel
        return None

    def _instances(self, rel: str) -> dict[int, dict]:
        """``{ann_id: annotation}`` plus ``{-image_id: image}`` of an instances JSON, cached per process."""
        cache = self.__dict__.setdefault("_cache_instances", {})
        if rel not in cache:
            data = read_json(self.source, rel)
            where = self.source.describe(rel)
            if not isinstance(data, dict) or "annotations" not in data or "images" not in data:
                raise DataError(f"{where}: expected a COCO instances file with 'images' and 'annotations'")
            index = {int(a["id"]): a for a in data["annotations"]}
            index.update({-int(i["id"]) - 1: i for i in data["images"]})
            cache[rel] = index
        return cache[rel]

    def list_videos(self, problems: list[str] | None = None) -> list[VideoRecord]:
        """See :meth:`DatasetReader.list_videos`."""
        if self.name == ALL:
            missing = [n for n in NAMES if not self.source.exists(n)]
            if missing:
                raise DataError(
                    f"split {self.split!r} combines {list(NAMES)}, but {[self.source.describe(n) for n in missing]} "
                    "do not exist; ingest the datasets one by one (e.g. 'refcoco/train') instead"
                )
            records = []
            for name in NAMES:
                part = RefCocoReader(self.source, f"{name}/{self.sub}").list_videos(problems)
                records += [dataclasses.replace(r, video_id=f"{name}:{r.video_id}") for r in part]
            return records
        image_dir = self._image_dir()
        refs_rel = self._refs_file()
        if refs_rel is not None:
            return self._from_refs(refs_rel, image_dir, problems)
        converted = f"{self.name}/instances_{self.name}_{self.sub}.json"
        if self.source.exists(converted):
            return self._from_converted(converted, image_dir, problems)
        raise DataError(
            f"no annotations for {self.split!r}: expected {self.source.describe(self.name + '/refs(unc).p')} "
            f"(+ instances.json) or {self.source.describe(converted)}"
        )

    def _from_refs(self, refs_rel: str, image_dir: str, problems: list[str] | None) -> list[VideoRecord]:
        refs = safe_unpickle(self.source.read_bytes(refs_rel), self.source.describe(refs_rel))
        inst_rel = f"{self.name}/instances.json"
        index = self._instances(inst_rel)
        if not isinstance(refs, list):
            raise DataError(f"{self.source.describe(refs_rel)}: expected a list of refs, got {type(refs).__name__}")
        by_image: dict[int, list[dict]] = {}
        for ref in refs:
            if isinstance(ref, dict) and ref.get("split") == self.sub:
                by_image.setdefault(int(ref["image_id"]), []).append(ref)
        records = []
        for image_id in sorted(by_image):
            try:
                image = index.get(-image_id - 1)
                if image is None:
                    raise DataError(
                        f"{self.source.describe(refs_rel)}: image {image_id} is not in {self.source.describe(inst_rel)}"
                    )
                exps = []
                for ref in by_image[image_id]:
                    ann_id = int(ref["ann_id"])
                    if ann_id not in index:
                        raise DataError(
                            f"{self.source.describe(refs_rel)}: ref {ref.get('ref_id')} points to "
                            f"annotation {ann_id}, missing from {self.source.describe(inst_rel)}"
                        )
                    for sent in ref.get("sentences", []):
                        exps.append(Expression(exp_id=str(sent["sent_id"]), text=str(sent["sent"]), obj_ids=(ann_id,)))
                records.append(self._record(image_id, image, exps, image_dir, inst_rel))
            except (DataError, KeyError, TypeError, ValueError) as err:
                if problems is None:
                    raise DataError(str(err)) from err
                problems.append(str(err))
        return records

    def _from_converted(self, rel: str, image_dir: str, problems: list[str] | None) -> list[VideoRecord]:
        index = self._instances(rel)
        anns = {k: v for k, v in index.items() if k >= 0}
        by_image: dict[int, list[Expression]] = {}
        images: dict[int, dict] = {}
        for ann in anns.values():
            entry = index.get(-int(ann["image_id"]) - 1)
            if entry is None:
                msg = f"{self.source.describe(rel)}: annotation {ann['id']} points to a missing image"
                if problems is None:
                    raise DataError(msg)
                problems.append(msg)
                continue
            image_id = int(entry.get("original_id", entry["id"]))
            images[image_id] = entry
            by_image.setdefault(image_id, []).append(
                Expression(exp_id=str(entry["id"]), text=str(entry.get("caption", "")), obj_ids=(int(ann["id"]),))
            )
        return [self._record(i, images[i], by_image[i], image_dir, rel) for i in sorted(by_image)]

    def _record(self, image_id: int, image: dict, exps: list[Expression], image_dir: str, inst: str) -> VideoRecord:
        file_name = str(image["file_name"])
        return VideoRecord(
            dataset=self.format,
            split=self.split,
            video_id=str(image_id),
            frame_ids=(file_name.rsplit(".", 1)[0],),
            expressions=tuple(exps),
            source=(
                ("image", join(image_dir, file_name)),
                ("instances", inst),
                ("size", f"{image['height']}x{image['width']}"),
            ),
        )

    def load_video(
        self, record: VideoRecord, max_side: int | None = None, frame_indices: Sequence[int] | None = None
    ) -> VideoData:
        """See :meth:`DatasetReader.load_video` (a 1-frame video)."""
        src = source_dict(record)
        idx = select_indices(record, frame_indices)
        errors: list[str] = []
        try:
            frame = decode_image(self.source.read_bytes(src["image"]), self.source.describe(src["image"]))
        except DataError as err:
            raise_if_errors(record, [str(err)])
        h, w = frame.shape[:2]
        if src.get("size") != f"{h}x{w}":
            errors.append(
                f"image {self.source.describe(src['image'])} is {h}x{w} (HxW) but "
                f"{self.source.describe(src['instances'])} says {src.get('size')}"
            )
        index = self._instances(src["instances"])
        obj_ids = sorted({o for e in record.expressions for o in e.obj_ids})
        masks = np.zeros((len(obj_ids), len(idx), h, w), dtype=bool)
        for k, ann_id in enumerate(obj_ids):
            try:
                if not errors:
                    masks[k, :] = rle.decode_segmentation(index[ann_id]["segmentation"], h, w)[None]
            except Exception as err:
                errors.append(
                    f"annotation {ann_id} in {self.source.describe(src['instances'])}: bad segmentation ({err})"
                )
        raise_if_errors(record, errors)
        return assemble(record, [frame] * len(idx), obj_ids, masks, max_side)
