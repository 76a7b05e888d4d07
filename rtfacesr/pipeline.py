"""The photo pipeline: detect -> enlarge -> align -> super-resolve -> segment -> fuse.

`FaceEnhancer.enhance` takes an RGB image (H x W x 3, uint8 or uint16; channel order R, G, B)
and returns the enlarged image with every usable face super-resolved, plus per-face metadata.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rtfacesr.align import align_face, check_scale, choose_face_size
from rtfacesr.detect import FaceMeshDetector
from rtfacesr.frame_path import FRAME_PATHS, frame_path_for
from rtfacesr.fuse import paste_size
from rtfacesr.models.registry import DEFAULT_MODEL
from rtfacesr.segment import SEGMENTERS, Segmenter, create_segmenter
from rtfacesr.superres import SuperResolver
from rtfacesr.timing import StageTimer
from rtfacesr.types import Alignment, EnhanceResult, Face, FaceReport, scale_points

FACE_SIZE_RANGE = (64, 512)
SEGMENT_MIN_SIDE = 256  # FaceMesh finds faces reliably in crops of this size and up


@dataclass(frozen=True)
class EnhanceOptions:
    scale: int = 2
    model: str = DEFAULT_MODEL
    device: str = "auto"
    backend: str = "auto"  # auto, torch, onnxruntime, tensorrt
    precision: str = "fp32"  # fp16 on GPUs (torch CUDA, TensorRT)
    face_size: int | None = None  # force N instead of choosing a bucket from the face's size
    max_faces: int = 8
    color_match: bool = True
    min_face_px: float = 16.0  # faces narrower than this in the source are left as enlarged
    frame_path: str = "auto"  # host (OpenCV), device (torch on the model's device), auto: device on GPUs
    strength: float | None = None  # blend of the model's face with the unrestored crop (None: the model's default)
    fidelity: float | None = None  # CodeFormer's w (None: the model's default)
    segmenter: str = "facemesh"  # facemesh, or a learned face parser from the zoo: bisenet, parsenet
    offline: bool = False  # never download a model; fail if it is not in the cache

    def __post_init__(self):
        check_scale(self.scale)
        low, high = FACE_SIZE_RANGE
        if self.face_size is not None and not (low <= self.face_size <= high and self.face_size % 4 == 0):
            raise ValueError(f"face size must be a multiple of 4 between {low} and {high}, not {self.face_size}")
        if self.max_faces < 1:
            raise ValueError(f"max faces must be at least 1, not {self.max_faces}")
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"segmenter must be one of {', '.join(SEGMENTERS)}, not '{self.segmenter}'")
        for name, value in (("strength", self.strength), ("fidelity", self.fidelity)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie between 0 and 1, not {value}")
        if self.frame_path not in FRAME_PATHS:
            raise ValueError(f"frame path must be one of {', '.join(FRAME_PATHS)}, not '{self.frame_path}'")


def to_uint8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint8:
        return image
    return np.round(image.astype(np.float32) * (255.0 / np.iinfo(image.dtype).max)).astype(np.uint8)


def _report(face: Face, enhanced: bool, **extra) -> FaceReport:
    return FaceReport(
        box=[round(float(v), 2) for v in face.box],
        points5=np.round(face.points5, 2).tolist(),
        score=round(face.score, 4),
        enhanced=enhanced,
        **extra,
    )


class FaceEnhancer:
    """Holds the models (load once, reuse for every image); stages can be swapped for others."""

    def __init__(
        self,
        options: EnhanceOptions = EnhanceOptions(),
        *,
        detector: FaceMeshDetector | None = None,
        superres: SuperResolver | None = None,
        segmenter: Segmenter | None = None,
    ):
        self.options = options
        self.detector = detector or FaceMeshDetector(max_faces=options.max_faces)
        self.superres = superres or SuperResolver(
            options.model, options.device, options.backend, options.precision, max_batch=options.max_faces,
            strength=options.strength, fidelity=options.fidelity, offline=options.offline,
        )
        if self.superres.crop_size and options.face_size not in (None, self.superres.crop_size):
            raise ValueError(f"model '{options.model}' takes {self.superres.crop_size} px faces; --face-size does not apply to it")
        self.segmenter = segmenter or create_segmenter(
            options.segmenter, self.superres.device, self.superres.backend, options.precision, offline=options.offline
        )
        self.frame_path = frame_path_for(options.frame_path, self.superres.device)

    def close(self) -> None:
        for stage in (self.detector, self.segmenter):
            getattr(stage, "close", lambda: None)()

    def __enter__(self) -> "FaceEnhancer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def enhance(self, image: np.ndarray, faces: list[Face] | None = None) -> EnhanceResult:
        """Enhance every face of `image`; `faces` given (by a tracker) skips detection."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype not in (np.uint8, np.uint16):
            raise ValueError(f"expected an H x W x 3 uint8 or uint16 RGB array, got {image.shape} {image.dtype}")
        opts = self.options
        path = self.frame_path
        device = self.superres.device
        timer = StageTimer(sync=torch.cuda.synchronize if device.type == "cuda" else None)

        if faces is None:
            with timer("detect"):
                faces = self.detector.detect(to_uint8(image))
        with timer("enlarge"):
            frame = path.enlarge(image, opts.scale)

        reports: list[FaceReport] = []
        jobs: list[tuple[Face, Alignment, FaceReport]] = []
        with timer("align"):
            for face in faces:
                if face.width < opts.min_face_px:
                    reports.append(_report(face, False, skipped_reason=f"face narrower than {opts.min_face_px:g} px"))
                    continue
                big = face.scaled(opts.scale)
                alignment = align_face(big, self.superres.crop_size or choose_face_size(big, opts.scale, opts.face_size))
                report = _report(face, True, face_size=alignment.size, transform=np.round(alignment.matrix, 6).tolist())
                reports.append(report)
                jobs.append((big, alignment, report))
            crops = path.crops(frame, [alignment for _, alignment, _ in jobs])

        with timer("superres"):
            sr_faces = self.superres(crops) if crops else []

        faces_at_paste_size, masks = [], []
        with timer("segment"):
            for (big, alignment, report), sr_face in zip(jobs, sr_faces):
                # The mask is needed only at the size the face is pasted at (about one pixel per
                # frame pixel); FaceMesh gets at least SEGMENT_MIN_SIDE pixels of the SR face, a
                # learned parser its own input size.
                sr_side = sr_face.shape[-1]
                side = paste_size(alignment, sr_side)
                segment_side = min(sr_side, self.segmenter.input_side or max(side, SEGMENT_MIN_SIDE))
                fallback = None
                if big.mesh is not None:
                    in_crop = big.mesh @ alignment.matrix[:, :2].T + alignment.matrix[:, 2]
                    fallback = scale_points(in_crop, segment_side / alignment.size)
                segmentation = self.segmenter.segment(path.to_uint8(path.resize(sr_face, segment_side)), fallback)
                report.segmenter_source = segmentation.source
                masks.append(path.mask(segmentation.labels, side))
                faces_at_paste_size.append(path.resize(sr_face, side))

        with timer("fuse"):
            output = path.fuse(frame, faces_at_paste_size, masks, [alignment for _, alignment, _ in jobs], opts.color_match)

        return EnhanceResult(image=output, faces=reports, timings_ms=timer.as_dict())
