"""Where a frame lives between the stages: on the host (OpenCV on numpy arrays) or on a torch
device. Both give the pipeline the same five steps, so `FaceEnhancer.enhance` reads the same
for either; the device path uploads the frame once and downloads the result once.

Crops and SR faces are 3 x N x N float tensors in [0, 1] on both paths (the engines take
tensors); on the host path they live on the CPU.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from rtfacesr.align import enlarge, warp_face
from rtfacesr.device_frame import enlarge_torch, fuse_faces_torch, fusion_mask_torch, resize_face_torch, warp_faces_torch
from rtfacesr.fuse import paste_face, resize_square
from rtfacesr.segment import fusion_mask
from rtfacesr.types import Alignment

FRAME_PATHS = ("auto", "host", "device")


class FramePath(Protocol):
    def enlarge(self, image: np.ndarray, scale: int): ...
    def crops(self, frame, alignments: list[Alignment]) -> list[torch.Tensor]: ...
    def resize(self, face: torch.Tensor, side: int): ...
    def to_uint8(self, face) -> np.ndarray: ...
    def mask(self, labels: np.ndarray, side: int): ...
    def fuse(self, frame, faces: list, masks: list, alignments: list[Alignment], color_match: bool) -> np.ndarray: ...


def _max_value(dtype) -> float:
    return float(np.iinfo(dtype).max)


def _hwc(face: torch.Tensor) -> np.ndarray:
    return face.permute(1, 2, 0).float().cpu().numpy()


class HostFramePath:
    """OpenCV on numpy arrays: the faster choice when the models run on the CPU."""

    def enlarge(self, image: np.ndarray, scale: int) -> np.ndarray:
        return enlarge(image, scale)

    def crops(self, frame: np.ndarray, alignments: list[Alignment]) -> list[torch.Tensor]:
        max_value = _max_value(frame.dtype)
        return [torch.from_numpy(warp_face(frame, a).astype(np.float32) / max_value).permute(2, 0, 1) for a in alignments]

    def resize(self, face: torch.Tensor, side: int) -> np.ndarray:
        return resize_square(_hwc(face), side)

    def to_uint8(self, face: np.ndarray) -> np.ndarray:
        return np.round(face * 255).astype(np.uint8)

    def mask(self, labels: np.ndarray, side: int) -> np.ndarray:
        return resize_square(fusion_mask(labels), side)

    def fuse(self, frame: np.ndarray, faces: list[np.ndarray], masks: list[np.ndarray], alignments: list[Alignment], color_match: bool) -> np.ndarray:
        output = frame.copy()
        for face, mask, alignment in zip(faces, masks, alignments):
            paste_face(output, frame, face, mask, alignment, color_match)
        return output


class DeviceFrame:
    """The enlarged frame as an H x W x 3 float32 tensor holding 0..max pixel values."""

    def __init__(self, pixels: torch.Tensor, dtype: np.dtype):
        self.pixels, self.dtype = pixels, dtype
        self.max_value = _max_value(dtype)


class DeviceFramePath:
    """torch on one device (a GPU, or the CPU in tests): one upload, one download per frame."""

    def __init__(self, device: torch.device):
        self.device = device

    def enlarge(self, image: np.ndarray, scale: int) -> DeviceFrame:
        pixels = torch.from_numpy(image.astype(np.float32) if image.dtype == np.uint16 else image).to(self.device)
        return DeviceFrame(enlarge_torch(pixels.float(), scale), image.dtype)

    def crops(self, frame: DeviceFrame, alignments: list[Alignment]) -> list[torch.Tensor]:
        return [crop / frame.max_value for crop in warp_faces_torch(frame.pixels, alignments)]

    def resize(self, face: torch.Tensor, side: int) -> torch.Tensor:
        return resize_face_torch(face.to(self.device, torch.float32), side)

    def to_uint8(self, face: torch.Tensor) -> np.ndarray:
        return (face * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    def mask(self, labels: np.ndarray, side: int) -> torch.Tensor:
        """The label map goes up (uint8, small); the mask is made and resized on the device."""
        return resize_face_torch(fusion_mask_torch(labels, self.device)[None], side)[0]

    def fuse(self, frame: DeviceFrame, faces: list[torch.Tensor], masks: list[torch.Tensor], alignments: list[Alignment], color_match: bool) -> np.ndarray:
        canvas = fuse_faces_torch(frame.pixels, faces, masks, alignments, color_match, frame.max_value)
        integer = torch.int32 if frame.dtype == np.uint16 else torch.uint8
        return canvas.to(integer).cpu().numpy().astype(frame.dtype)


def frame_path_for(choice: str, device: torch.device) -> FramePath:
    """auto: the device path where the models run on a GPU, OpenCV on the host otherwise
    (`choice` is one of FRAME_PATHS, as EnhanceOptions checks)."""
    if choice == "device" or (choice == "auto" and device.type == "cuda"):
        return DeviceFramePath(device)
    return HostFramePath()
