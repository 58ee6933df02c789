"""Where a prediction that has not ended stands: its place in the queue, or its steps, time
spent, time left and newest preview.

The steps come from the progress lines the worker writes into the logs ("3/28 steps (10%)");
the time left assumes the steps still to run go at the rate measured so far (the time since the
start, the prompt's encoding included, over the steps done): a slight overestimate early on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from server.predictions.model import PROCESSING, STARTING, Prediction

STEP_LINE = re.compile(r"^(\d+)/(\d+) steps \(\d+%\)$", re.MULTILINE)
RUN_START = "Using seed: "  # the first line of each attempt: older attempts' steps are not this one's


@dataclass(frozen=True)
class Progress:
    queue_position: int | None = None  # queued only: predictions of its model ahead of it (0: next)
    step: int | None = None
    total_steps: int | None = None
    percent: int | None = None
    elapsed_s: float | None = None  # since it started
    eta_s: float | None = None  # time left, at the rate measured so far
    preview_step: int | None = None  # the step of its newest preview; None: no preview yet


def last_step(logs: str) -> tuple[int, int] | None:
    """(steps done, total steps) of the last progress line of the current attempt, or None."""
    start = logs.rfind(RUN_START)
    matches = STEP_LINE.findall(logs, max(start, 0))
    if not matches:
        return None
    done, total = matches[-1]
    return int(done), int(total)


def progress_of(
    pred: Prediction, now: float, *, queue_position: int | None = None, preview_step: int | None = None
) -> Progress | None:
    """The prediction's progress at ``now`` (unix seconds); None once it has ended."""
    if pred.terminal:
        return None
    if pred.status == STARTING:
        return Progress(queue_position=queue_position)
    elapsed = max(0.0, now - pred.started_at) if pred.started_at is not None else None
    steps = last_step(pred.logs) if pred.status == PROCESSING else None
    if steps is None:
        return Progress(elapsed_s=_round(elapsed), preview_step=preview_step)
    done, total = steps
    eta = None
    if elapsed is not None and done > 0:
        eta = elapsed / done * max(0, total - done)
    return Progress(
        step=done,
        total_steps=total,
        percent=100 * done // total if total else None,
        elapsed_s=_round(elapsed),
        eta_s=_round(eta),
        preview_step=preview_step,
    )


def _round(seconds: float | None) -> float | None:
    return round(seconds, 2) if seconds is not None else None
