"""Content features for offline image search, computed with numpy and Pillow only.

No image model ships its weights inside a wheel, so the built-in world (and the offline
fallback) search images by a hand-made descriptor. It is built to find the *same* picture
again after what a rollout or a scene does to it: rescaling, JPEG re-encoding, a small
rotation, brightness/contrast/saturation jitter, a loose crop or a partial occlusion.

The descriptor concatenates four L2-normalised blocks, computed on a fixed 32x32 working
copy of the image:

- a coarse 8x8 *lightness layout*, zero-mean and unit-variance per image (brightness and
  contrast jitter cancel);
- a coarse 8x8 *chroma layout* in an opponent colour space, divided by the image's own RMS
  chroma (saturation, brightness and contrast jitter only scale chroma, so they cancel);
- an 8x8 grid of unsigned *gradient-orientation histograms* (8 soft bins, HOG-like), which
  carries the pattern (stripes, crosses, stars) independently of colour;
- a global *hue/lightness histogram* (soft bins), which survives rotation, shifts and
  occlusion.

Determinism across machines: a fixed resampling filter (``BOX``), float64 arithmetic with no
transcendental functions on pixel data, and a float32 result. Similarity is the cosine, ranked
by :class:`ImageIndex` with scores rounded to 1e-7 and ties broken by the lower index.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["FEATURE_DIM", "FEATURE_VERSION", "ImageIndex", "image_feature", "image_features"]

FEATURE_VERSION = "1"
"""Bumped whenever :func:`image_feature` changes, so stored feature matrices are recomputed."""

_SIDE = 32
"""Side of the square working image every input is resampled to."""
_LAYOUT = 8
"""Cells per side of the colour layout grid."""
_HOG_CELLS = 8
"""Cells per side of the gradient-orientation grid."""
_ORIENTATIONS = 8
_HUES = 12
_LIGHTNESS_BINS = 6

# Block weights: how much each block counts in the cosine (each block has unit norm first).
_W_LIGHT = 0.6
_W_CHROMA = 1.0
_W_HOG = 1.2
_W_HIST = 0.8

# Unit directions for the soft bins, as literal constants (no libm on any machine).
_COS_SIN_8 = np.array([  # angles k * 45 deg: the *doubled* orientation angle, bins 22.5 deg apart
    [1.0, 0.0], [0.7071067811865476, 0.7071067811865476], [0.0, 1.0],
    [-0.7071067811865476, 0.7071067811865476], [-1.0, 0.0],
    [-0.7071067811865476, -0.7071067811865476], [0.0, -1.0],
    [0.7071067811865476, -0.7071067811865476],
])
_COS_SIN_12 = np.array([  # angles k * 30 deg: hue directions in the opponent-colour plane
    [1.0, 0.0], [0.8660254037844387, 0.5], [0.5, 0.8660254037844387], [0.0, 1.0],
    [-0.5, 0.8660254037844387], [-0.8660254037844387, 0.5], [-1.0, 0.0],
    [-0.8660254037844387, -0.5], [-0.5, -0.8660254037844387], [0.0, -1.0],
    [0.5, -0.8660254037844387], [0.8660254037844387, -0.5],
])
_LIGHTNESS_CENTRES = np.linspace(-2.0, 2.0, _LIGHTNESS_BINS)

FEATURE_DIM = (_LAYOUT * _LAYOUT * 3 + _HOG_CELLS * _HOG_CELLS * _ORIENTATIONS
               + _HUES + _LIGHTNESS_BINS)
"""Length of every vector :func:`image_feature` returns."""

_EPS = 1e-12


def _unit(v: np.ndarray) -> np.ndarray:
    norm = float(np.sqrt(np.dot(v, v)))
    return v / norm if norm > _EPS else v


def _pool(channel: np.ndarray, cells: int) -> np.ndarray:
    """Average-pool a square (S, S) array into (cells, cells)."""
    step = channel.shape[0] // cells
    return channel.reshape(cells, step, cells, step).mean(axis=(1, 3))


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of any PIL image; transparent pixels count as white (flags ship with alpha)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        white.alpha_composite(rgba)
        return white.convert("RGB")
    return image.convert("RGB")


def image_feature(image: Image.Image) -> np.ndarray:
    """The content descriptor of one image: float32, shape ``(FEATURE_DIM,)``, unit L2 norm.

    Any size and mode is accepted (alpha is composited on white). An empty image raises
    ``ValueError``; a perfectly uniform one gets a valid, mostly-zero vector.
    """
    if image.width < 1 or image.height < 1:
        raise ValueError(f"cannot describe an empty image of size {image.size}")
    small = _to_rgb(image).resize((_SIDE, _SIDE), Image.Resampling.BOX)
    rgb = np.asarray(small, dtype=np.float64) * (1.0 / 255.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    light = (r + g + b) * (1.0 / 3.0)
    opp1 = r - g
    opp2 = (r + g) * 0.5 - b

    # Lightness: zero mean, unit variance per image -> brightness/contrast invariant.
    light_std = float(light.std())
    light_n = (light - light.mean()) / (light_std + 0.02)
    # Chroma: scaled by the image's own RMS chroma -> saturation/brightness invariant.
    chroma_rms = float(np.sqrt(np.mean(opp1 * opp1 + opp2 * opp2)))
    chroma_scale = 1.0 / (chroma_rms + 0.03)
    c1 = opp1 * chroma_scale
    c2 = opp2 * chroma_scale

    layout_light = _unit(_pool(light_n, _LAYOUT).ravel())
    layout_chroma = _unit(np.concatenate([_pool(c1, _LAYOUT).ravel(), _pool(c2, _LAYOUT).ravel()]))

    # Unsigned gradient orientation via the doubled-angle vector (gx^2 - gy^2, 2 gx gy),
    # soft-assigned to 8 directions with relu(cos)^2 and weighted by the gradient magnitude.
    gx = np.zeros_like(light_n)
    gy = np.zeros_like(light_n)
    gx[:, 1:-1] = light_n[:, 2:] - light_n[:, :-2]
    gy[1:-1, :] = light_n[2:, :] - light_n[:-2, :]
    mag2 = gx * gx + gy * gy
    mag = np.sqrt(mag2)
    doubled = np.stack([gx * gx - gy * gy, 2.0 * gx * gy], axis=-1)  # (S, S, 2), norm = mag2
    proj = doubled @ _COS_SIN_8.T / (mag2[..., None] + _EPS)  # cos(2 theta - 2 theta_k)
    votes = np.maximum(proj, 0.0) ** 2 * mag[..., None]  # (S, S, 8)
    step = _SIDE // _HOG_CELLS
    hog = votes.reshape(_HOG_CELLS, step, _HOG_CELLS, step, _ORIENTATIONS).sum(axis=(1, 3))
    hog_block = _unit(np.sqrt(hog.ravel()))

    # Global hue histogram (weighted by chroma) and lightness histogram (weighted by greyness).
    chroma_mag = np.sqrt(c1 * c1 + c2 * c2)
    hue_proj = np.stack([c1, c2], axis=-1) @ _COS_SIN_12.T / (chroma_mag[..., None] + _EPS)
    sat_weight = np.minimum(chroma_mag, 2.0)
    hue_hist = (np.maximum(hue_proj, 0.0) ** 4 * sat_weight[..., None]).reshape(-1, _HUES).sum(axis=0)
    grey_weight = np.maximum(1.0 - 0.5 * chroma_mag, 0.0).ravel()
    light_dist = np.abs(light_n.ravel()[:, None] - _LIGHTNESS_CENTRES[None, :])
    light_hist = (np.maximum(1.0 - light_dist / 0.8, 0.0) * grey_weight[:, None]).sum(axis=0)
    hist_block = _unit(np.sqrt(np.concatenate([hue_hist, light_hist])))

    feature = np.concatenate([
        _W_LIGHT * layout_light,
        _W_CHROMA * layout_chroma,
        _W_HOG * hog_block,
        _W_HIST * hist_block,
    ])
    return _unit(feature).astype(np.float32)


def image_features(images: list[Image.Image]) -> np.ndarray:
    """Stack :func:`image_feature` of several images into a ``(n, FEATURE_DIM)`` float32 matrix."""
    if not images:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    return np.stack([image_feature(im) for im in images])


class ImageIndex:
    """Exact cosine nearest-neighbour search over a fixed matrix of image features.

    Rows are re-normalised on construction (zero rows stay zero and never score above 0).
    Scores are computed in float64 and rounded to 1e-7 so that rankings, ties included,
    are the same on every machine; ties go to the lower row index.
    """

    def __init__(self, features: np.ndarray) -> None:
        matrix = np.asarray(features, dtype=np.float64)
        if matrix.ndim != 2:
            raise ValueError(f"ImageIndex needs a 2-D (n, d) feature matrix, got shape {matrix.shape}")
        if not np.all(np.isfinite(matrix)):
            raise ValueError("ImageIndex features contain NaN or infinity; recompute them with image_feature()")
        norms = np.sqrt(np.einsum("ij,ij->i", matrix, matrix))
        self._matrix = matrix / np.where(norms > _EPS, norms, 1.0)[:, None]
        self._matrix.setflags(write=False)

    def __len__(self) -> int:
        return int(self._matrix.shape[0])

    @property
    def dim(self) -> int:
        return int(self._matrix.shape[1])

    def __repr__(self) -> str:
        return f"ImageIndex({len(self)} images, dim={self.dim})"

    def scores(self, feature: np.ndarray) -> np.ndarray:
        """Rounded cosine similarity of ``feature`` to every indexed image (float64, shape (n,))."""
        query = np.asarray(feature, dtype=np.float64).ravel()
        if query.shape[0] != self.dim:
            raise ValueError(f"query feature has length {query.shape[0]}, the index expects {self.dim}")
        norm = float(np.sqrt(np.dot(query, query)))
        if norm > _EPS:
            query = query / norm
        return np.round(self._matrix @ query, 7)

    def search(self, feature: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` most similar ``(row index, cosine)`` pairs, best first, ties by lower index."""
        if k <= 0 or len(self) == 0:
            return []
        scores = self.scores(feature)
        order = np.lexsort((np.arange(scores.shape[0]), -scores))[:k]
        return [(int(i), float(scores[i])) for i in order]
