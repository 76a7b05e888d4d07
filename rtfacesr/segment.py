"""Stage 5: a semantic label map of the super-resolved face, and the fusion mask derived from it.

The built-in segmenter runs FaceMesh on the SR face itself and fills its region contours. A
learned face parser plugs in behind the same `Segmenter` interface.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

import cv2
import numpy as np

from rtfacesr.detect import _MESH, landmarks_of, new_face_mesh


class FaceLabel(IntEnum):
    BACKGROUND = 0
    SKIN = 1
    BROWS = 2
    EYES = 3
    NOSE = 4
    LIPS = 5
    MOUTH = 6  # inner mouth: teeth, tongue


@dataclass(frozen=True)
class Segmentation:
    labels: np.ndarray  # H x W uint8 of FaceLabel values
    source: str  # what the labels came from: "sr-face", or "detection-mesh" when FaceMesh missed


class Segmenter(Protocol):
    input_side: int | None  # the face size it works at best (a parser's input), None: any

    def segment(self, face: np.ndarray, fallback_mesh: np.ndarray | None) -> Segmentation:
        """Label an RGB uint8 face image; `fallback_mesh` are landmarks already known in its frame."""


def chains_from_edges(edges) -> list[list[int]]:
    """Order an undirected edge set into its paths and closed loops (each as a vertex list)."""
    neighbours: dict[int, list[int]] = defaultdict(list)
    for a, b in edges:
        neighbours[a].append(b)
        neighbours[b].append(a)
    unvisited = set(neighbours)
    chains = []
    while unvisited:
        ends = [v for v in unvisited if len(neighbours[v]) == 1]
        start = min(ends) if ends else min(unvisited)
        chain = [start]
        unvisited.discard(start)
        while True:
            nxt = [v for v in neighbours[chain[-1]] if v in unvisited]
            if not nxt:
                break
            chain.append(nxt[0])
            unvisited.discard(nxt[0])
        chains.append(chain)
    return chains


def _polygon(edges) -> list[int]:
    """One outline: a loop as it is, or two open paths (upper and lower brow) joined end to end."""
    chains = chains_from_edges(edges)
    return [v for chain, flip in zip(chains, (False, True)) for v in (chain[::-1] if flip else chain)]


def _lip_loops() -> tuple[list[int], list[int]]:
    """FaceMesh's lips edge set is two loops; the outer lip line passes through vertex 0."""
    first, second = chains_from_edges(_MESH.FACEMESH_LIPS)
    return (first, second) if 0 in first else (second, first)


_OUTER_LIPS, _INNER_LIPS = _lip_loops()
_NOSE = sorted({v for e in _MESH.FACEMESH_NOSE for v in e})
# Painted in this order, later regions over earlier ones.
_REGIONS = (
    (FaceLabel.SKIN, _polygon(_MESH.FACEMESH_FACE_OVAL), False),
    (FaceLabel.BROWS, _polygon(_MESH.FACEMESH_LEFT_EYEBROW), False),
    (FaceLabel.BROWS, _polygon(_MESH.FACEMESH_RIGHT_EYEBROW), False),
    (FaceLabel.EYES, _polygon(_MESH.FACEMESH_LEFT_EYE), False),
    (FaceLabel.EYES, _polygon(_MESH.FACEMESH_RIGHT_EYE), False),
    (FaceLabel.NOSE, _NOSE, True),
    (FaceLabel.LIPS, _OUTER_LIPS, False),
    (FaceLabel.MOUTH, _INNER_LIPS, False),
)


def labels_from_mesh(mesh: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill the mesh's region contours into a label map of `shape` (H, W)."""
    labels = np.zeros(shape, dtype=np.uint8)
    for label, indices, hull in _REGIONS:
        points = mesh[indices].astype(np.float32)
        if hull:
            points = cv2.convexHull(points)[:, 0]
        cv2.fillPoly(labels, [np.round(points * 16).astype(np.int32)], int(label), lineType=cv2.LINE_8, shift=4)
    return labels


class FaceMeshSegmenter:
    """FaceMesh on the SR face, region contours filled; the detection mesh where FaceMesh misses."""

    input_side = None  # any: the pipeline gives it at least SEGMENT_MIN_SIDE pixels

    def __init__(self):
        self._mesh = new_face_mesh()

    def close(self) -> None:
        self._mesh.close()

    def segment(self, face: np.ndarray, fallback_mesh: np.ndarray | None) -> Segmentation:
        mesh = landmarks_of(self._mesh, face)
        source = "sr-face"
        if mesh is None:
            mesh, source = fallback_mesh, "detection-mesh"
        if mesh is None:
            return Segmentation(np.zeros(face.shape[:2], np.uint8), "none")
        return Segmentation(labels_from_mesh(mesh, face.shape[:2]), source)


SEGMENTERS = ("facemesh", "bisenet", "parsenet")


def create_segmenter(name: str, device, backend: str = "auto", precision: str = "fp32", *, offline: bool = False) -> Segmenter:
    """FaceMesh (built in), or a learned face parser from the model zoo (fetched if missing),
    run on the same kind of engine as the face model."""
    if name == "facemesh":
        return FaceMeshSegmenter()
    from rtfacesr.backends import create_engine
    from rtfacesr.models.parsers import ParserSegmenter
    from rtfacesr.models.zoo import ModelChoice, load_zoo_model

    spec = load_zoo_model(name, "parser", offline=offline)
    return ParserSegmenter(spec.architecture.lower(), create_engine(ModelChoice(spec), backend, device, precision), device)


FEATHER_FRACTION = 0.03  # feather width as a share of the face region's size


def feather_sigma(face_area: float) -> float:
    """The mask's blur radius (its erosion is twice this), in proportion to the face's size."""
    return max(1.0, FEATHER_FRACTION * float(np.sqrt(face_area)))


def fusion_mask(labels: np.ndarray) -> np.ndarray:
    """Float mask in [0, 1]: the face region, shrunk and feathered in proportion to its size.

    The erosion is twice the blur radius, so the mask has faded to ~0 at the region's edge;
    the blur's far tail is cut there, so it never reaches past it.
    """
    region = (labels != FaceLabel.BACKGROUND).astype(np.float32)
    area = float(region.sum())
    if area == 0:
        return region
    sigma = feather_sigma(area)
    # Erode by 2 sigma (a distance transform: fast at any radius), then blur by sigma.
    inside = cv2.distanceTransform(region.astype(np.uint8), cv2.DIST_L2, 5)
    core = (inside > 2 * sigma).astype(np.float32)
    return np.clip(cv2.GaussianBlur(core, (0, 0), sigma, borderType=cv2.BORDER_CONSTANT), 0.0, 1.0) * region
