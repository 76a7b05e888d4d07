"""Stage 4: the GAN super-resolution model on aligned face crops (N x N in, 4N x 4N out)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

from rtfacesr.models.registry import DEFAULT_MODEL, get_spec


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, not '{device}'")
    return torch.device(device)


class SuperResolver:
    """Runs one built-in SR model on an engine; crops of the same size go through in one batch."""

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", backend: str = "auto", precision: str = "fp32", max_batch: int = 8):
        from rtfacesr.backends import create_engine

        self.spec = get_spec(model)
        self.device = resolve_device(device)
        self.engine = create_engine(model, backend, self.device, precision, max_batch)
        self.scale = self.spec.scale

    @property
    def backend(self) -> str:
        return self.engine.name

    @torch.inference_mode()
    def __call__(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """3 x N x N float crops in [0, 1] (any device) -> 3 x sN x sN in [0, 1] on the engine's
        device; crops of one size go through the model as one batch."""
        by_size: dict[tuple, list[int]] = defaultdict(list)
        for index, crop in enumerate(crops):
            by_size[tuple(crop.shape)].append(index)
        results: list[torch.Tensor] = [None] * len(crops)  # type: ignore[list-item]
        for indices in by_size.values():
            batch = torch.stack([crops[i].to(self.device) for i in indices])
            for i, image in zip(indices, self.engine(batch).clamp_(0, 1)):
                results[i] = image
        return results

    def images(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """The same for H x W x 3 float32 numpy images."""
        outputs = self([torch.from_numpy(image).permute(2, 0, 1) for image in images])
        return [output.permute(1, 2, 0).float().cpu().numpy() for output in outputs]
