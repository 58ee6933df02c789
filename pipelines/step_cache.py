"""Step caching: diffusers' cache hooks on a transformer, switched on and off per request.

A cache reuses transformer work from earlier denoising steps (first-block, TaylorSeer, MagCache):
fewer block passes, slightly different pixels. ``StepCache.use`` adds or removes the hooks only
when the wanted state changes, so a run of requests in one mode pays nothing; with the hooks off
the transformer is exactly the uncached one (byte-identical images).
"""

from __future__ import annotations

import logging
from typing import Any

from pipelines.spec import StepCacheSpec

log = logging.getLogger(__name__)

# MagCache's configuration depends on the step count (its ratios are interpolated to it and its
# retention window is a fraction of it); the other methods work for any count.
_STEP_COUNT_DEPENDENT = ("mag",)


def cache_config(spec: StepCacheSpec, steps: int) -> Any:
    """The diffusers cache config for ``spec``, for a run of ``steps`` transformer calls."""
    import torch
    from diffusers.hooks import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig

    if spec.method == "first_block":
        return FirstBlockCacheConfig(threshold=spec.knob("threshold"))
    if spec.method == "taylorseer":
        return TaylorSeerCacheConfig(
            cache_interval=spec.knob("interval"),
            disable_cache_before_step=spec.knob("warmup_steps"),
            max_order=spec.knob("order"),
            # None: keep the factors in the model's dtype (diffusers' bfloat16 default would
            # round a float32 model's predictions).
            taylor_factors_dtype=None,
        )
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    ratios = torch.tensor(spec.mag_ratios) if spec.mag_ratios is not None else FLUX_MAG_RATIOS
    return MagCacheConfig(
        threshold=spec.knob("threshold"),
        max_skip_steps=spec.knob("max_skip_steps"),
        retention_ratio=spec.knob("retention_ratio"),
        num_inference_steps=steps,
        mag_ratios=ratios,
    )


class StepCache:
    """One transformer's step cache. ``use(active)`` before each run: hooks on or off."""

    def __init__(self, transformer: Any, spec: StepCacheSpec) -> None:
        self.transformer = transformer
        self.spec = spec
        self._steps: int | None = None  # the step count the hooks were built for (mag)

    @property
    def active(self) -> bool:
        return self.transformer.is_cache_enabled

    def wanted(self, go_fast: bool) -> bool:
        """Whether a request with this go_fast setting runs with the cache."""
        return self.spec.applies_to == "all" or go_fast

    def use(self, active: bool, *, steps: int = 28) -> None:
        """Hooks on (``active``) or off; changed only when the state (or, for mag, the step count
        the hooks were built for) differs from the current one."""
        rebuild = self.spec.method in _STEP_COUNT_DEPENDENT and steps != self._steps
        if self.active and (not active or rebuild):
            self.transformer.disable_cache()
        if active and not self.active:
            self.transformer.enable_cache(cache_config(self.spec, steps))
            self._steps = steps
            log.debug("step cache %s on (%d steps)", self.spec.method, steps)
        if active:
            # The pipeline clears the hooks' state at the end of a run, which a cancelled run
            # (an exception from the step callback) never reaches: clear it before every run.
            self.transformer._reset_stateful_cache()
