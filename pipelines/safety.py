"""The NSFW safety-checker stage: diffusers' StableDiffusionSafetyChecker with its CLIP image processor.

Loaded from a local folder only. Flagged images are dropped by the caller; the checker's own
habit of blacking them out is not relied on.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from pipelines.errors import ModelLoadError

ALL_FLAGGED_MESSAGE = (
    "All generated images contained NSFW content. Try running it again with a different prompt."
)


def _component_dirs(folder: Path) -> tuple[Path, Path]:
    """Accept either one folder holding both parts, or the SD layout with safety_checker/ and
    feature_extractor/ subfolders."""
    if (folder / "safety_checker").is_dir():
        return folder / "safety_checker", folder / "feature_extractor"
    return folder, folder


class SafetyChecker:
    def __init__(self, model, processor, device: str, dtype) -> None:
        self._model = model
        self._processor = processor
        self._device = device
        self._dtype = dtype

    @classmethod
    def load(cls, folder: str | Path, device: str, dtype) -> SafetyChecker:
        from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
        from transformers import CLIPImageProcessor

        root = Path(folder).expanduser()
        if not root.is_dir():
            raise ModelLoadError(f"safety_checker folder {root} does not exist")
        model_dir, processor_dir = _component_dirs(root)
        try:
            model = StableDiffusionSafetyChecker.from_pretrained(
                model_dir, local_files_only=True, torch_dtype=dtype
            )
            processor = CLIPImageProcessor.from_pretrained(processor_dir, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any failure here is a configuration problem
            raise ModelLoadError(f"could not load the safety checker from {root}: {exc}") from exc
        model.to(device).eval()
        return cls(model, processor, device, dtype)

    def flags(self, images: list[Image.Image]) -> list[bool]:
        """One boolean per image: True where the image is flagged as NSFW."""
        import numpy as np
        import torch

        if not images:
            return []
        clip_input = self._processor(images, return_tensors="pt").pixel_values.to(self._device, self._dtype)
        arrays = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])
        with torch.no_grad():
            _, has_nsfw = self._model(images=arrays, clip_input=clip_input)
        return [bool(x) for x in has_nsfw]
