"""Errors raised by the generation core, each with a message a user or operator can act on."""

from __future__ import annotations


class ModelLoadError(RuntimeError):
    """The model could not be loaded: bad weights path, not a FLUX pipeline, corrupt file,
    an option this machine cannot run (CUDA-only features without CUDA), out of memory."""


class GenerationError(RuntimeError):
    """A prediction failed for a reason the user can read (ends the prediction in error)."""


class NSFWContentError(GenerationError):
    """Every generated image was flagged by the safety checker."""


class OutOfMemory(GenerationError):
    """The pipeline ran out of GPU or host memory; the message suggests what to change."""


class AdapterLoadError(GenerationError):
    """A LoRA adapter could not be applied: not a Flux LoRA, shapes that do not fit, a rank or a module
    the compiled model's adapter slots cannot hold, or a model that cannot take LoRA at all."""
