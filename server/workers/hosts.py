"""Worker hosts' heartbeats: each host writes its report to the store; an API replica with no
workers of its own answers /health-check (and refuses creates) from the reports of live hosts.

A host is live while its last heartbeat is at most LIVE_WITHIN_S old (a few heartbeats): one that
was killed drops out of the answer within seconds. Its jobs are recovered separately, when their
leases expire (``jobs.py``). Each report lists the slugs its workers serve: a configured model
that no live host reports is refused (503) rather than queued for nobody.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from server.predictions.errors import ModelNotServed, ModelUnavailable, NotAccepting, ShuttingDown
from server.predictions.models import ModelEntry, ModelRegistry
from server.predictions.service import Readiness
from server.store.base import PredictionStore
from server.store.health import StoreHealth
from server.store.hosts import HostReport
from server.workers.slot import W_BUSY, W_FAILED, W_READY
from server.workers.supervisor import (
    BUSY,
    READY,
    SETUP_FAILED,
    SHUTTING_DOWN,
    STARTING,
    UNAVAILABLE,
    UNHEALTHY,
    Supervisor,
    model_line,
)

log = logging.getLogger("fluxserve.hosts")

HOST_HEARTBEAT_S = 1.0  # how often a worker host writes its report
LIVE_WITHIN_S = 5.0  # a host whose last report is older is left out of the health answer
REFRESH_S = 1.0  # how often an API replica re-reads the reports


class HostHeartbeat:
    """Writes this worker host's report every HOST_HEARTBEAT_S; removes it at a clean stop."""

    def __init__(self, store: PredictionStore, supervisor: Supervisor) -> None:
        self.store = store
        self.supervisor = supervisor
        self._task: asyncio.Task | None = None

    @property
    def host_id(self) -> str:
        return self.supervisor.jobs.host_id

    @property
    def models(self) -> list[str]:
        """The slugs this host's worker slots serve, in the order they are configured."""
        slots = self.supervisor.slots
        return [
            entry.slug
            for entry in self.supervisor.models.entries
            if any(slot.spec is None or slot.spec.name == entry.spec_name for slot in slots)
        ]

    def report(self) -> HostReport:
        return HostReport(
            host_id=self.host_id,
            slots=[self.supervisor.slot_info(s) for s in self.supervisor.slots],
            models=list(self.models),
            accepting=self.supervisor.accepting,
        )

    async def beat(self) -> None:
        await asyncio.to_thread(self.store.record_host, self.report())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="host-heartbeat")

    async def _run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; health says why
                self.supervisor.store_failed(exc)
            await asyncio.sleep(HOST_HEARTBEAT_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        with contextlib.suppress(Exception):  # left behind, it drops out within LIVE_WITHIN_S
            await asyncio.to_thread(self.store.forget_host, self.host_id)


def host_info(host: HostReport) -> dict[str, Any]:
    """One host in /health-check's ``hosts`` list."""
    return {
        "host_id": host.host_id,
        "seen_s_ago": round(host.seen_s_ago, 1),
        "accepting": host.accepting,
        "models": host.models,
        "workers": host.slots,
    }


def hosts_health(
    hosts: list[HostReport] | None, model: str | Sequence[str], accepting: bool, store: StoreHealth
) -> tuple[str, dict[str, Any]]:
    """/health-check's status from the live hosts' reports (None: not read yet): READY when a
    live host has a ready worker for ``model`` (one slug, or any of several)."""
    details: dict[str, Any] = {"hosts": [host_info(h) for h in hosts or []], "store": store.info()}
    if not accepting:
        return SHUTTING_DOWN, details
    if store.failing:
        details["reason"] = f"the prediction store is failing: {store.error}"
        return UNHEALTHY, details
    wanted = [model] if isinstance(model, str) else list(model)
    serving = [h for h in hosts or [] if h.accepting and any(m in h.models for m in wanted)]
    states = [slot.get("state") for h in serving for slot in h.slots]
    if W_READY in states:
        return READY, details
    if W_BUSY in states:
        return BUSY, details
    if states and all(state == W_FAILED for state in states):
        errors = {slot.get("error") or "unknown" for h in serving for slot in h.slots}
        details["reason"] = "; ".join(sorted(errors))
        return SETUP_FAILED, details
    if hosts is None:
        details["reason"] = "reading the worker hosts' reports"
    elif not hosts:
        details["reason"] = f"no worker host has reported in the last {LIVE_WITHIN_S:g} s"
    elif not serving:
        what = f"the model {wanted[0]}" if len(wanted) == 1 else f"the models {', '.join(wanted)}"
        details["reason"] = f"no live worker host takes jobs for {what}"
    else:
        details["reason"] = "the worker hosts are loading the model"
    return STARTING, details


def model_health(hosts: list[HostReport] | None, entry: ModelEntry) -> dict[str, Any]:
    """One model's line in /health-check's ``models``: its state on the live hosts that take its
    jobs, and how many workers serve it there."""
    serving = [h for h in hosts or [] if h.accepting and entry.slug in h.models]
    slots = [
        slot for h in serving for slot in h.slots if slot.get("model", entry.spec_name) == entry.spec_name
    ]
    return model_line([slot.get("state") for slot in slots])


class HostsReadiness(Readiness):
    """Readiness of an API replica with no workers: what the worker hosts report in the store.
    Creates are taken (and queue) unless every live host failed to load the model, or this
    replica is shutting down; a model that live hosts are reporting but none of them serves (or
    whose workers all failed to load) is refused."""

    def __init__(self, store: PredictionStore, models: ModelRegistry, accepting: Callable[[], bool]) -> None:
        self.store = store
        self.models = models
        # The configured models by their own slug (a LoRA face runs on its model's workers).
        self.spec_names = list(dict.fromkeys(entry.spec_name for entry in models.entries))
        self._accepting = accepting
        self.store_health = StoreHealth()
        self.hosts: list[HostReport] | None = None
        self._task: asyncio.Task | None = None

    async def refresh(self) -> None:
        try:
            self.hosts = await asyncio.to_thread(self.store.hosts, LIVE_WITHIN_S)
        except Exception as exc:  # noqa: BLE001 - kept as the store's state until a read works
            self.store_failed(exc)
        else:
            self.store_working()

    async def start(self) -> None:
        await self.refresh()

        async def run() -> None:
            while True:
                await asyncio.sleep(REFRESH_S)
                await self.refresh()

        self._task = asyncio.create_task(run(), name="hosts-readiness")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def health(self) -> tuple[str, dict[str, Any]]:
        status, details = hosts_health(self.hosts, self.spec_names, self._accepting(), self.store_health)
        details["models"] = {entry.slug: model_health(self.hosts, entry) for entry in self.models.entries}
        return status, details

    def refusal(self, model: ModelEntry | None = None) -> NotAccepting | None:
        status, details = self.health()
        if status == SETUP_FAILED:
            return ModelUnavailable(details.get("reason"))
        if status == SHUTTING_DOWN:
            return ShuttingDown()
        if model is None or not self.hosts:  # not read yet, or no host at all: jobs queue, as ever
            return None
        line = model_health(self.hosts, model)
        if line["status"] == UNAVAILABLE:
            hosts = ", ".join(h.host_id for h in self.hosts)
            return ModelNotServed(model.slug, f"no live worker host serves it (live hosts: {hosts})")
        if line["status"] == SETUP_FAILED:
            errors = {
                slot.get("error") or "unknown"
                for h in self.hosts
                if h.accepting and model.slug in h.models
                for slot in h.slots
                if slot.get("model", model.spec_name) == model.spec_name
            }
            return ModelUnavailable("; ".join(sorted(errors)), model.slug)
        return None

    @property
    def serving_tiny_model(self) -> bool:
        return any(slot.get("tiny_model") for h in self.hosts or [] for slot in h.slots)

    def store_failed(self, exc: BaseException) -> None:
        self.store_health.failed(exc, unexpected=not self.store.is_outage(exc))

    def store_working(self) -> None:
        self.store_health.working()
