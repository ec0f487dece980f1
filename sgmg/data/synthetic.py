"""A synthetic referring-video-object-segmentation dataset in the Ref-YouTube-VOS layout.

Every video shows 2-4 flat-coloured shapes (circle, square, triangle, diamond) of two sizes moving in straight lines
(left, right, up, down) or standing still over a textured background, occluding one another. Each object gets several
referring expressions built from its attributes (colour, shape, size, position in the frame, motion), each a set of
attributes that *no other object of the video shares*, and distractors are drawn to share some attributes with earlier
objects, so the sentence (not just "the red thing") is needed to find the object.

Output (``write_synthetic_dataset``), byte-identical for the same arguments:

```
<out>/train/JPEGImages/<vid>/00000.jpg ...     <out>/train/Annotations/<vid>/00000.png (palette, value = obj id)
<out>/train/meta.json                          {"videos": {vid: {"objects": {id: {"category": shape, "frames"}}}}}
<out>/valid/...                                same, WITH Annotations so the valid split can be scored locally
<out>/meta_expressions/{train,valid}/meta_expressions.json   (valid expressions also carry obj_id)
<out>/videos/{train,valid}/<vid>.mp4 + expressions.json       the same videos as mp4 (the ``videos`` format)
<out>/synthetic.json                           generator arguments and every object's attributes
```

Attribute definitions (what the tests recompute from the masks): *position* is the side of the frame the object's
mean centre lies in (``left`` < 0.4 W, ``right`` > 0.6 W, ``top`` < 0.4 H, ``bottom`` > 0.6 H; centres are kept at least
0.03 away from those limits); *motion* is the direction of the centre's displacement over the video (at least 0.2 of
the frame for moving objects, zero for static ones); *size* is ``small`` (radius 0.1 of the short side) or ``large``
(0.2). Every object is fully visible (unoccluded) in the first and the last frame; in between, objects may occlude
one another.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sgmg.data.io import encode_jpeg, encode_mp4, encode_png

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 190, 50),
    "blue": (40, 70, 230),
    "yellow": (240, 220, 30),
    "purple": (150, 40, 200),
    "orange": (250, 130, 20),
    "white": (250, 250, 250),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = {"small": 0.10, "large": 0.20}  # radius as a fraction of the short side
MOTIONS = ("left", "right", "up", "down", "static")
POS_LOW, POS_HIGH, POS_MARGIN = 0.4, 0.6, 0.03
MIN_TRAVEL, MAX_TRAVEL = 0.22, 0.4  # displacement over the video, fraction of the frame side along the motion
SPLIT_CODES = {"train": 0, "valid": 1}
# attribute subsets tried for expressions, most natural first (shuffled per object)
_SUBSETS = (
    ("color", "shape"),
    ("size", "shape"),
    ("shape", "hpos"),
    ("shape", "vpos"),
    ("shape", "motion"),
    ("color", "motion"),
    ("size", "color", "shape"),
    ("color", "shape", "hpos"),
    ("color", "shape", "vpos"),
    ("color", "shape", "motion"),
    ("size", "shape", "motion"),
    ("size", "color", "shape", "motion"),
    ("color", "shape", "hpos", "motion"),
    ("size", "color", "shape", "hpos", "vpos", "motion"),
)


@dataclass(frozen=True)
class SyntheticObject:
    """One object of a synthetic video: its attributes and trajectory (centre at frame t = start + t * velocity)."""

    obj_id: int
    color: str
    shape: str
    size: str
    motion: str
    hpos: str | None
    vpos: str | None
    start: tuple[float, float]  # (x, y) pixels
    velocity: tuple[float, float]  # pixels per frame
    radius: float


def _palette() -> list[int]:
    pal = [0, 0, 0]
    for i in range(1, 256):  # DAVIS-like distinct colours for viewing; values are what matters
        pal += [(i * 97) % 256, (i * 57 + 80) % 256, (i * 151 + 40) % 256]
    return pal


PALETTE = _palette()


def shape_mask(shape: str, cx: float, cy: float, r: float, h: int, w: int) -> np.ndarray:
    """bool ``[H, W]`` mask of a shape of "radius" ``r`` centred at ``(cx, cy)`` (pixel centres at +0.5).

    Evaluated only on the shape's bounding window, for speed.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: expected one of {SHAPES}")
    out = np.zeros((h, w), bool)
    x0, x1 = max(0, int(np.floor(cx - r - 1))), min(w, int(np.ceil(cx + r + 1)))
    y0, y1 = max(0, int(np.floor(cy - r - 1))), min(h, int(np.ceil(cy + r + 1)))
    if x0 >= x1 or y0 >= y1:
        return out
    dx = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]  # [1, w']
    dy = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]  # [h', 1]
    if shape == "circle":
        m = dx * dx + dy * dy <= r * r
    elif shape == "square":
        s = 0.85 * r
        m = (np.abs(dx) <= s) & (np.abs(dy) <= s)
    elif shape == "triangle":  # apex up, base at the bottom
        m = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
    else:  # diamond
        m = np.abs(dx) + np.abs(dy) <= r
    out[y0:y1, x0:x1] = m
    return out


def _side(v: float, lo_name: str, hi_name: str) -> str | None:
    if v < POS_LOW:
        return lo_name
    if v > POS_HIGH:
        return hi_name
    return None


def _draw_axis(rng: np.random.Generator, dim: int, r: float, travel: float, near: float | None = None) -> float:
    """A mean centre coordinate (fraction of ``dim``) keeping the path inside and away from the position limits.

    With ``near`` (a fraction), the coordinate is drawn close to it (so the object crosses another one's path).
    """
    lo, hi = (r + 1 + travel / 2) / dim, (dim - r - 1 - travel / 2) / dim
    for _ in range(100):
        v = float(rng.uniform(lo, hi)) if near is None else float(np.clip(near + rng.uniform(-0.05, 0.05), lo, hi))
        if abs(v - POS_LOW) > POS_MARGIN and abs(v - POS_HIGH) > POS_MARGIN:
            return v
    return 0.5  # centre band: no position attribute


def _draw_object(
    rng: np.random.Generator, obj_id: int, previous: list[SyntheticObject], h: int, w: int, num_frames: int
) -> SyntheticObject:
    color = str(rng.choice(list(COLORS)))
    shape = str(rng.choice(SHAPES))
    if previous and rng.random() < 0.6:  # distractor sharing attributes with an earlier object
        other = previous[int(rng.integers(len(previous)))]
        if rng.random() < 0.5:
            color = other.color
        else:
            shape = other.shape
    size = str(rng.choice(list(SIZES)))
    motion = str(rng.choice(MOTIONS))
    r = SIZES[size] * min(h, w)
    steps = max(num_frames - 1, 1)
    travel_x = travel_y = 0.0
    if motion in ("left", "right"):
        travel_x = float(rng.uniform(MIN_TRAVEL, MAX_TRAVEL)) * w
    elif motion in ("up", "down"):
        travel_y = float(rng.uniform(MIN_TRAVEL, MAX_TRAVEL)) * h
    near_x = near_y = None
    if previous and motion != "static" and rng.random() < 0.6:  # cross an earlier object's path mid-video: occlusion
        other = previous[int(rng.integers(len(previous)))]
        mid = (num_frames - 1) / 2
        near_x = (other.start[0] + mid * other.velocity[0]) / w
        near_y = (other.start[1] + mid * other.velocity[1]) / h
    mx = _draw_axis(rng, w, r, travel_x, near_x)
    my = _draw_axis(rng, h, r, travel_y, near_y)
    sign_x = {"left": -1.0, "right": 1.0}.get(motion, 0.0)
    sign_y = {"up": -1.0, "down": 1.0}.get(motion, 0.0)
    start = (mx * w - sign_x * travel_x / 2, my * h - sign_y * travel_y / 2)
    velocity = (sign_x * travel_x / steps, sign_y * travel_y / steps)
    return SyntheticObject(
        obj_id=obj_id,
        color=color,
        shape=shape,
        size=size,
        motion=motion,
        hpos=_side(mx, "left", "right"),
        vpos=_side(my, "top", "bottom"),
        start=start,
        velocity=velocity,
        radius=r,
    )


def _matches(obj: SyntheticObject, target: SyntheticObject, attrs: tuple[str, ...]) -> bool:
    return all(getattr(obj, a) == getattr(target, a) for a in attrs)


def _phrase(obj: SyntheticObject, attrs: tuple[str, ...], rng: np.random.Generator) -> str:
    words = [str(rng.choice(["the", "a"]))]
    if "size" in attrs:
        words.append(str(rng.choice(["small", "little"])) if obj.size == "small" else str(rng.choice(["large", "big"])))
    if "color" in attrs:
        words.append(obj.color)
    words.append(obj.shape if "shape" in attrs else str(rng.choice(["object", "shape", "thing"])))
    if "hpos" in attrs:
        words.append(f"on the {obj.hpos}")
    if "vpos" in attrs:
        words.append(f"at the {obj.vpos}")
    if "motion" in attrs:
        if obj.motion == "static":
            words.append(str(rng.choice(["that is not moving", "standing still", "that stays still"])))
        else:
            verb = str(rng.choice(["moving", "going", "heading"]))
            to = " to the" if obj.motion in ("left", "right") and rng.random() < 0.5 else ""
            words.append(f"{verb}{to} {obj.motion}")
    return " ".join(words)


def _expressions(objects: list[SyntheticObject], rng: np.random.Generator, per_object: int) -> list[tuple[str, int]]:
    out = []
    for obj in objects:
        usable = [s for s in _SUBSETS if all(getattr(obj, a) is not None for a in s)]
        unique = [s for s in usable if not any(_matches(o, obj, s) for o in objects if o is not obj)]
        order = rng.permutation(len(unique))
        chosen = [unique[i] for i in order[:per_object]]
        out += [(_phrase(obj, s, rng), obj.obj_id) for s in chosen]
    return out


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-saturation texture: random sinusoids plus noise around a random grey-brown tone, float ``[H, W, 3]``."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(70, 140)
    tint = rng.uniform(-12, 12, size=3)
    tex = np.zeros((h, w), np.float32)
    for _ in range(4):
        fx, fy = rng.uniform(-0.25, 0.25, size=2)
        tex += rng.uniform(5, 15) * np.sin(fx * x + fy * y + rng.uniform(0, 2 * np.pi))
    tex += rng.normal(0, 4, size=(h, w)).astype(np.float32)
    return base + tex[..., None] + tint.astype(np.float32)


def _object_mask(o: SyntheticObject, t: int, h: int, w: int) -> np.ndarray:
    return shape_mask(o.shape, o.start[0] + t * o.velocity[0], o.start[1] + t * o.velocity[1], o.radius, h, w)


def _ends_unoccluded(objects: list[SyntheticObject], num_frames: int, h: int, w: int) -> bool:
    """No object overlaps another in the first and last frames (so its attributes are recoverable from the masks)."""
    for t in {0, num_frames - 1}:
        count = np.zeros((h, w), np.uint8)
        for o in objects:
            count += _object_mask(o, t, h, w)
        if (count > 1).any():
            return False
    return True


def render_video(
    rng: np.random.Generator, num_frames: int, h: int, w: int, max_tries: int = 200
) -> tuple[np.ndarray, np.ndarray, list[SyntheticObject]]:
    """Draw one synthetic video.

    Returns:
        frames uint8 ``[T, H, W, 3]``, labels uint8 ``[T, H, W]`` (0 background, object ids from 1) and the objects,
        each with a unique attribute combination and unoccluded in the first and last frames.
    """
    for _ in range(max_tries):
        n = int(rng.integers(2, 5))
        objects: list[SyntheticObject] = []
        for k in range(n):
            objects.append(_draw_object(rng, k + 1, objects, h, w, num_frames))
        keys = {(o.color, o.shape, o.size, o.motion, o.hpos, o.vpos) for o in objects}
        if len(keys) < n or not _ends_unoccluded(objects, num_frames, h, w):
            continue
        bg = _background(rng, h, w)
        frames = np.empty((num_frames, h, w, 3), np.uint8)
        labels = np.zeros((num_frames, h, w), np.uint8)
        for t in range(num_frames):
            img = bg + rng.normal(0, 2.0, size=(h, w, 1)).astype(np.float32)
            for o in objects:
                m = _object_mask(o, t, h, w)
                img[m] = np.asarray(COLORS[o.color], np.float32) * rng.uniform(0.92, 1.0)
                labels[t][m] = o.obj_id
            frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        return frames, labels, objects
    raise RuntimeError(f"could not draw a valid synthetic video in {max_tries} tries (frame {h}x{w} too small?)")


@dataclass(frozen=True)
class SyntheticConfig:
    """Arguments of :func:`write_synthetic_dataset` (recorded in ``synthetic.json``)."""

    train_videos: int = 8
    valid_videos: int = 2
    frames: int = 8
    height: int = 96
    width: int = 128
    seed: int = 0
    expressions_per_object: int = 3
    mp4: bool = True

    def __post_init__(self) -> None:
        if self.train_videos < 0 or self.valid_videos < 0 or self.train_videos + self.valid_videos == 0:
            raise ValueError(f"need at least one video, got train={self.train_videos} valid={self.valid_videos}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if self.height < 32 or self.width < 32 or self.height % 2 or self.width % 2:
            raise ValueError(f"size {self.height}x{self.width}: height and width must be even and >= 32")
        if self.expressions_per_object < 1:
            raise ValueError(f"expressions_per_object must be >= 1, got {self.expressions_per_object}")


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()


def write_synthetic_dataset(
    out: str | os.PathLike,
    config: SyntheticConfig,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Generate the dataset into ``out`` atomically (written to a temporary sibling folder, then renamed).

    Args:
        out: output folder; must not exist unless ``overwrite``.
        config: generator arguments.
        overwrite: replace an existing ``out`` (the old folder is removed only after the new one is in place).
        progress: called as ``progress(done, total)`` after every video.

    Returns:
        The output folder.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    summary: dict = {"config": asdict(config), "videos": {}}
    try:
        first = 0  # videos are numbered across the splits
        for split, count in (("train", config.train_videos), ("valid", config.valid_videos)):
            _write_split(tmp, config, split, count, first, summary["videos"], progress)
            first += count
        _write(tmp / "synthetic.json", _json_bytes(summary))
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_split(
    root: Path,
    config: SyntheticConfig,
    split: str,
    count: int,
    first: int,
    videos: dict,
    progress: Callable[[int, int], None] | None,
) -> None:
    """Write the ``count`` videos of ``split`` (numbered from ``first``) and the split's index files under ``root``;
    add each video's objects to ``videos`` (the ``synthetic.json`` summary) and report ``progress`` after each."""
    total = config.train_videos + config.valid_videos
    meta_exp: dict = {}
    meta_obj: dict = {}
    sentences: dict = {}
    for i in range(count):
        vid = f"vid{first + i:05d}"
        meta_exp[vid], meta_obj[vid], sentences[vid], videos[vid] = _write_video(root, config, split, i, vid)
        if progress is not None:
            progress(first + i + 1, total)
    if count:
        _write(root / "meta_expressions" / split / "meta_expressions.json", _json_bytes({"videos": meta_exp}))
        _write(root / split / "meta.json", _json_bytes({"videos": meta_obj}))
        if config.mp4:
            _write(root / "videos" / split / "expressions.json", _json_bytes(sentences))


def _write_video(
    root: Path, config: SyntheticConfig, split: str, index: int, vid: str
) -> tuple[dict, dict, dict, dict]:
    """Render video ``index`` of ``split`` (its own random stream: seed, split, index) and write its frames, masks and
    (``config.mp4``) mp4.

    Returns:
        The video's entries of ``meta_expressions.json``, ``meta.json``, the ``videos`` format's ``expressions.json``
        and ``synthetic.json``.
    """
    rng = np.random.default_rng([config.seed, SPLIT_CODES[split], index])
    frames, labels, objects = render_video(rng, config.frames, config.height, config.width)
    exps = _expressions(objects, rng, config.expressions_per_object)
    frame_ids = [f"{t:05d}" for t in range(config.frames)]
    for t, fid in enumerate(frame_ids):
        _write(root / split / "JPEGImages" / vid / f"{fid}.jpg", encode_jpeg(frames[t], quality=92))
        _write(root / split / "Annotations" / vid / f"{fid}.png", encode_png(labels[t], PALETTE))
    meta_exp = {
        "expressions": {str(k): {"exp": s, "obj_id": str(o)} for k, (s, o) in enumerate(exps)},
        "frames": frame_ids,
    }
    meta_obj = {
        "objects": {
            str(o.obj_id): {
                "category": o.shape,
                "frames": [f for t, f in enumerate(frame_ids) if (labels[t] == o.obj_id).any()],
            }
            for o in objects
        }
    }
    sentences = {str(k): s for k, (s, _) in enumerate(exps)}
    summary = {"split": split, "objects": [asdict(o) for o in objects]}
    if config.mp4:
        _write(root / "videos" / split / f"{vid}.mp4", encode_mp4(frames))
    return meta_exp, meta_obj, sentences, summary


def _replace_folder(new: Path, out: Path) -> None:
    """Move the finished folder ``new`` to ``out``; an existing ``out`` is removed only once the new one is there."""
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old)
    else:
        new.rename(out)
