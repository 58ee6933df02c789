"""The real worker process with two back-to-back jobs, driven through its pipe the way the
supervisor drives it: the next job is sent when the worker says GpuFreeSoon (overlap on) or when
the previous job ends (overlap off). One run of each, shared by the tests."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import pytest

from pipelines.spec import ModelSpec
from server.workers.messages import (
    GpuFreeSoon,
    JobCancelled,
    JobFailed,
    JobStarted,
    JobSucceeded,
    RunJob,
    Shutdown,
    WorkerReady,
    WorkerWarming,
)
from server.workers.process import WorkerConfig, worker_main
from tests.pipelines.helpers import inputs

REQUESTS = {
    "lighthouse": inputs(prompt="a lighthouse at dawn", seed=11),
    "barn": inputs(prompt="a red barn in a field", seed=12),
}
ENDS = (JobSucceeded, JobFailed, JobCancelled)


def run_worker(weights: Path, overlap: bool) -> list[Any]:
    """Every message the worker sent while it ran the two jobs, in order; the next job is sent on
    GpuFreeSoon (or on the previous end when there is none), as the supervisor sends it."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    config = WorkerConfig(model=ModelSpec(weights=str(weights)).model_dump(), overlap_finishing=overlap)
    process = ctx.Process(target=worker_main, args=(child, config), daemon=True)
    process.start()
    child.close()
    to_send = [RunJob(pid, request.model_dump(), created_at=time.time()) for pid, request in REQUESTS.items()]
    received: list[Any] = []
    try:
        first = parent.recv()
        while isinstance(first, WorkerWarming):  # loaded, warming up: ready comes next
            first = parent.recv()
        assert isinstance(first, WorkerReady)
        parent.send(to_send.pop(0))
        ended = 0
        while ended < len(REQUESTS):
            if not parent.poll(120):
                raise TimeoutError(f"the worker stopped answering after {received}")
            msg = parent.recv()
            received.append(msg)
            if isinstance(msg, (GpuFreeSoon, *ENDS)) and to_send:
                parent.send(to_send.pop(0))
            ended += isinstance(msg, ENDS)
        parent.send(Shutdown())
        process.join(30)
    finally:
        if process.is_alive():
            process.kill()
    return received


@pytest.fixture(scope="module")
def runs(tiny_model_dir) -> dict[bool, list[Any]]:
    """The messages of the two jobs with overlap on (True) and off (False)."""
    return {overlap: run_worker(tiny_model_dir, overlap) for overlap in (True, False)}


def events(messages: list[Any]) -> list[tuple[str, str]]:
    kinds = (JobStarted, GpuFreeSoon, *ENDS)
    return [(type(m).__name__, m.prediction_id) for m in messages if isinstance(m, kinds)]


def images(messages: list[Any]) -> dict[str, list[bytes]]:
    return {m.prediction_id: [i.data for i in m.images] for m in messages if isinstance(m, JobSucceeded)}


def test_gpu_free_soon_comes_before_the_jobs_result_and_the_next_job_starts_before_it(runs):
    order = events(runs[True])
    assert order.index(("GpuFreeSoon", "lighthouse")) < order.index(("JobSucceeded", "lighthouse"))
    # The barn is on the GPU while the lighthouse's images are finished.
    assert order.index(("JobStarted", "barn")) < order.index(("JobSucceeded", "lighthouse"))
    assert order.index(("GpuFreeSoon", "barn")) < order.index(("JobSucceeded", "barn"))


def test_overlap_off_runs_each_job_start_to_end_without_gpu_free_soon(runs):
    assert events(runs[False]) == [
        ("JobStarted", "lighthouse"),
        ("JobSucceeded", "lighthouse"),
        ("JobStarted", "barn"),
        ("JobSucceeded", "barn"),
    ]


def test_each_prediction_gets_its_own_images_equal_to_running_it_alone(runs, generator):
    got = images(runs[True])
    for pid, request in REQUESTS.items():
        assert got[pid] == [image.data for image in generator.generate(request).images]
    assert got["lighthouse"] != got["barn"]


def test_images_are_byte_identical_with_overlap_on_and_off(runs):
    assert images(runs[True]) == images(runs[False])


def test_the_idle_gap_before_the_second_job_is_reported_and_not_before_the_first(runs):
    for messages in runs.values():
        started = {m.prediction_id: m.idle_gap_s for m in messages if isinstance(m, JobStarted)}
        assert started["lighthouse"] is None
        assert started["barn"] is not None and started["barn"] >= 0
