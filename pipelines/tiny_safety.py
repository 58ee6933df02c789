"""A tiny random safety checker for tests and demos: diffusers' StableDiffusionSafetyChecker with
a tiny CLIP vision tower, saved with its CLIPImageProcessor in one folder that
:meth:`pipelines.safety.SafetyChecker.load` reads.

The checker flags an image when, for some concept, ``cosine(image, concept) - weight > 0``.
Cosines lie in [-1, 1], so the thresholds decide everything regardless of the random weights:

- ``flag_everything=True``: every threshold is a large negative number, every image is flagged;
- ``flag_everything=False``: every threshold is a large positive number, nothing is flagged.
"""

from __future__ import annotations

from pathlib import Path

TINY_SAFETY_MARKER = "fluxserve-tiny-random-safety-checker"
_THRESHOLD = 1000.0  # far outside cosine similarity's [-1, 1]


def build_tiny_safety_checker(flag_everything: bool = False, seed: int = 0):
    """The tiny checker (float32, CPU) and its image processor, in memory."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "vocab_size": 64,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "image_size": 32,
            "patch_size": 4,
            "num_channels": 3,
        },
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = StableDiffusionSafetyChecker(config).eval()
    threshold = -_THRESHOLD if flag_everything else _THRESHOLD
    with torch.no_grad():
        # Random concept directions (the real ones are CLIP embeddings of NSFW concepts).
        model.concept_embeds.copy_(torch.randn_like(model.concept_embeds))
        model.special_care_embeds.copy_(torch.randn_like(model.special_care_embeds))
        model.concept_embeds_weights.fill_(threshold)
        model.special_care_embeds_weights.fill_(threshold)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        do_resize=True,
        do_center_crop=True,
        do_normalize=True,
        do_convert_rgb=True,
    )
    return model, processor


def write_tiny_safety_checker(out_dir: str | Path, flag_everything: bool = False, seed: int = 0) -> Path:
    """Write the tiny checker and its image processor into ``out_dir`` (one folder)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, processor = build_tiny_safety_checker(flag_everything=flag_everything, seed=seed)
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    kind = "flags every image" if flag_everything else "flags nothing"
    (out / "README.md").write_text(
        f"# {TINY_SAFETY_MARKER}\n\nA tiny StableDiffusionSafetyChecker with random weights that {kind}.\n"
        "For tests and demos only: it does not detect anything.\n"
    )
    return out
