"""Test-only faults that really happen in the real worker process.

Enabled by ``FLUXSERVE_FAULT_INJECTION=1`` in the server's environment (``WorkerConfig.
fault_injection``); off, nothing here ever runs. A prompt containing a marker causes the fault:

- ``[[fault:prepare]]``: the job fails while it is prepared, before generation starts;
- at the first denoising step: ``[[fault:hang]]`` (a step that never returns), ``[[fault:slow]]``
  (a 3 s step), ``[[fault:oom]]`` (CUDA out of memory), ``[[fault:host-oom]]`` (MemoryError),
  ``[[fault:cuda-error]]`` (a fatal CUDA error: the worker restarts), ``[[fault:crash]]`` (SIGKILL).
"""

from __future__ import annotations

import os
import signal
import threading

MARKER = "[[fault:"


def maybe_inject(enabled: bool, prompt: str, step: int | None = None) -> None:
    """Cause the fault the prompt asks for, if fault injection is on. ``step``: the denoising
    step just done; None while the job is prepared."""
    if not enabled or MARKER not in prompt:
        return
    if step is None:
        if "[[fault:prepare]]" in prompt:
            raise RuntimeError("injected failure while preparing the job")
        return
    if step != 1:
        return
    if "[[fault:hang]]" in prompt:
        threading.Event().wait()  # a step that never returns
    if "[[fault:slow]]" in prompt:
        threading.Event().wait(3)  # a step that takes 3 s: time to break something while it runs
    if "[[fault:oom]]" in prompt:
        import torch

        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB (injected)")
    if "[[fault:host-oom]]" in prompt:
        raise MemoryError("injected host out of memory")
    if "[[fault:cuda-error]]" in prompt:
        raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
    if "[[fault:crash]]" in prompt:
        os.kill(os.getpid(), signal.SIGKILL)
