"""Boundaries of the F measure (DAVIS 2017 toolkit semantics, see :mod:`sgmg.eval.metrics`): 1-pixel boundary maps,
the dilation radius and disk, and the matching of one boundary against another's dilation.

Why no scikit-image / OpenCV: the toolkit builds the disk with ``skimage.morphology.disk`` and dilates with
``cv2.dilate``; both are heavy dependencies used for two lines. The disk is a one-line formula, and a boundary pixel is
matched exactly when a pixel of the other boundary lies within that disk, which for the integer radii the toolkit uses
is a nearest-neighbour query on the (sparse) boundary pixels with ``scipy.spatial.cKDTree`` -- exact, because squared
distances between pixels are integers, and much cheaper than dilating whole frames. A non-integer radius (only with
``bound_th >= 1``) falls back to :func:`dilate`, an exact numpy re-implementation of ``cv2.dilate`` (OR of shifted
window sums, zero border). Masks are cropped to each object's box first, and every step is vectorised over frames.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Boundary", "boundary_map", "boundary_radius", "dilate", "disk"]


def boundary_map(seg: np.ndarray) -> np.ndarray:
    """1-pixel-wide boundary of bool ``[..., H, W]`` masks, half a pixel towards the origin (toolkit ``seg2bmap``).

    A pixel is a boundary pixel when it differs from its east, south or south-east neighbour. On the last row only the
    east neighbour counts, on the last column only the south one, and the bottom-right pixel is never a boundary.
    """
    seg = np.asarray(seg, dtype=bool)
    b = np.zeros_like(seg)
    if seg.shape[-1] > 1 and seg.shape[-2] > 1:
        # interior: all three neighbours exist; (c ^ e) | (c ^ s) | (c ^ se), computed in place
        c = seg[..., :-1, :-1]
        inner = b[..., :-1, :-1]
        np.bitwise_xor(c, seg[..., :-1, 1:], out=inner)
        inner |= c ^ seg[..., 1:, :-1]
        inner |= c ^ seg[..., 1:, 1:]
    if seg.shape[-1] > 1:  # last row: east neighbour only
        b[..., -1, :-1] = seg[..., -1, :-1] ^ seg[..., -1, 1:]
    if seg.shape[-2] > 1:  # last column: south neighbour only
        b[..., :-1, -1] = seg[..., :-1, -1] ^ seg[..., 1:, -1]
    return b


def boundary_radius(height: int, width: int, bound_th: float = 0.008) -> float:
    """Dilation radius in pixels: ``ceil(bound_th * diagonal)``, or ``bound_th`` itself when it is >= 1 (toolkit)."""
    if bound_th >= 1:
        return float(bound_th)
    # the same float expression as the toolkit, so e.g. a 600x800 frame gives exactly 8.0
    return float(np.ceil(bound_th * np.linalg.norm((height, width))))


def disk(radius: float) -> np.ndarray:
    """Flat disk structuring element, identical to ``skimage.morphology.disk(radius)`` (bool ``[K, K]``).

    The grid is ``arange(-radius, radius + 1)`` on both axes and a cell is set when ``x**2 + y**2 <= radius**2``.
    """
    grid = np.arange(-radius, radius + 1)
    x, y = np.meshgrid(grid, grid)
    return (x**2 + y**2) <= radius**2


def dilate(masks: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Binary dilation of bool ``[..., H, W]`` by a flat bool ``[KH, KW]`` footprint, exactly as ``cv2.dilate``.

    The anchor is the footprint centre ``(KH // 2, KW // 2)`` and pixels outside the image never contribute:
    ``out[y, x] = any(masks[y + i - KH // 2, x + j - KW // 2] for footprint[i, j])``.
    """
    masks = np.asarray(masks, dtype=bool)
    footprint = np.asarray(footprint, dtype=bool)
    height, width = masks.shape[-2:]
    kh, kw = footprint.shape
    ay, ax = kh // 2, kw // 2
    out = np.zeros_like(masks)
    if not footprint.any() or not masks.any():
        return out
    # cumulative sum along W with a leading zero: window count over columns [a, b) = csum[b] - csum[a]
    csum = np.zeros(masks.shape[:-1] + (width + 1,), dtype=np.int32)
    np.cumsum(masks, axis=-1, out=csum[..., 1:])
    cols = np.arange(width)
    rows_by_runs: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for i in range(kh):
        row = footprint[i]
        if not row.any():
            continue
        # maximal runs of set cells as offsets (first, last) relative to the anchor
        padded = np.concatenate(([False], row, [False]))
        edges = np.flatnonzero(padded[1:] != padded[:-1])
        runs = tuple((int(a) - ax, int(b) - 1 - ax) for a, b in zip(edges[::2], edges[1::2], strict=True))
        rows_by_runs.setdefault(runs, []).append(i - ay)
    for runs, offsets in rows_by_runs.items():
        horizontal = np.zeros_like(masks)  # [..., H, W]: any(masks[..., y, x + lo : x + hi + 1]) for some run
        for lo, hi in runs:
            start = np.clip(cols + lo, 0, width)
            stop = np.clip(cols + hi + 1, 0, width)
            horizontal |= (csum[..., stop] - csum[..., start]) > 0
        for dy in offsets:  # out[y] |= horizontal[y + dy]
            if dy >= 0:
                if dy < height:
                    out[..., : height - dy, :] |= horizontal[..., dy:, :]
            elif -dy < height:
                out[..., -dy:, :] |= horizontal[..., : height + dy, :]
    return out


class Boundary:
    """The boundary pixels of one object over ``T`` frames, as coordinates (a sparse ``boundary_map``).

    Boundaries are a small fraction of a frame, so matching them is done on their coordinates: a boundary pixel is
    matched when a pixel of the other boundary lies within the dilation footprint around it. For an integer radius the
    footprint is the set of integer offsets with ``dy**2 + dx**2 <= r**2``, so this is a nearest-neighbour query
    (``scipy.spatial.cKDTree``, exact: squared distances between pixels are integers). Frames are kept apart by
    placing frame ``t`` at ``t * (2r + 2)`` on a third axis. A non-integer radius (``bound_th >= 1`` with a fraction)
    gives a footprint that is not a Euclidean ball around the anchor, so it falls back to the dense :func:`dilate`.
    """

    def __init__(self, mask: np.ndarray) -> None:
        """Boundary of bool ``[T, H, W]`` ``mask`` (void already removed)."""
        n_frames, height, width = mask.shape
        self.shape = (n_frames, height, width)
        footprint = mask.any(axis=0)  # [H, W]
        rows = np.flatnonzero(footprint.any(axis=1))
        if rows.size == 0:
            self.t = self.y = self.x = np.zeros(0, dtype=np.int64)
        else:
            cols = np.flatnonzero(footprint.any(axis=0))
            # crop to the object's box plus one pixel after it: the boundary map is identical inside (the extra row
            # and column are empty, and the image's last row/column keep their special rule when the crop reaches it)
            y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, height)
            x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, width)
            crop_h, crop_w = y1 - y0, x1 - x0
            flat = np.flatnonzero(boundary_map(mask[:, y0:y1, x0:x1]))  # indices into [T, crop_h, crop_w]
            t, rest = np.divmod(flat, crop_h * crop_w)
            y, x = np.divmod(rest, crop_w)
            self.t, self.y, self.x = t, y + y0, x + x0
        self.count = np.bincount(self.t, minlength=n_frames)  # [T] boundary pixels per frame
        # per-frame bounding box of the boundary (empty frames get an inverted box), to skip far-apart pairs
        big = np.iinfo(np.int64).max // 4
        self.box = np.empty((4, n_frames), dtype=np.int64)  # [ymin, ymax, xmin, xmax] x T
        self.box[0::2] = big
        self.box[1::2] = -big
        if self.t.size:
            np.minimum.at(self.box[0], self.t, self.y)
            np.maximum.at(self.box[1], self.t, self.y)
            np.minimum.at(self.box[2], self.t, self.x)
            np.maximum.at(self.box[3], self.t, self.x)
        self._trees: dict[float, object] = {}
        self._coords_cache: dict[float, np.ndarray] = {}
        self._dilated: dict[float, np.ndarray] = {}

    def matched_by(self, other: Boundary, radius: float) -> np.ndarray:
        """int ``[T]``: pixels of this boundary that lie in ``other``'s boundary dilated by ``disk(radius)``."""
        n_frames = self.shape[0]
        if self.t.size == 0 or other.t.size == 0:
            return np.zeros(n_frames, dtype=np.int64)
        reach = int(np.ceil(radius)) + 1  # generous: a footprint never reaches further than this
        a, b = self.box, other.box
        near = (a[0] <= b[1] + reach) & (b[0] <= a[1] + reach) & (a[2] <= b[3] + reach) & (b[2] <= a[3] + reach)
        if not near.any():
            return np.zeros(n_frames, dtype=np.int64)
        sel = near[self.t]  # only boundary pixels in frames where the two boundaries can meet
        t = self.t[sel]
        if float(radius).is_integer():
            tree = other._tree(radius)
            dist, _ = tree.query(self._coords(radius)[sel], k=1, distance_upper_bound=radius + 0.5)
            hit = dist <= radius
        else:
            hit = other._dilated_map(radius)[t, self.y[sel], self.x[sel]]
        return np.bincount(t[hit], minlength=n_frames)

    def _coords(self, radius: float) -> np.ndarray:
        if radius not in self._coords_cache:
            coords = np.stack([self.t * (2.0 * radius + 2.0), self.y, self.x], axis=1).astype(np.float64)  # [n, 3]
            self._coords_cache[radius] = coords
        return self._coords_cache[radius]

    def _tree(self, radius: float) -> object:
        if radius not in self._trees:
            from scipy.spatial import cKDTree

            self._trees[radius] = cKDTree(self._coords(radius))
        return self._trees[radius]

    def _dilated_map(self, radius: float) -> np.ndarray:
        if radius not in self._dilated:
            bmap = np.zeros(self.shape, dtype=bool)
            bmap[self.t, self.y, self.x] = True
            self._dilated[radius] = dilate(bmap, disk(radius))
        return self._dilated[radius]
