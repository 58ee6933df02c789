"""Worker hosts as the store knows them: each host's last heartbeat, for API replicas' health.

A worker host (``fluxserve worker``, or ``fluxserve serve`` on a shared store) writes its report
every few seconds (``PredictionStore.record_host``): its slots and their states, the models it
serves, whether it takes jobs. An API replica with no workers of its own reads the reports of
the hosts seen lately (``PredictionStore.hosts``) to answer /health-check. ``seen_s_ago`` is
measured on the store's clock (PostgreSQL's ``now``), so hosts with skewed clocks agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class HostReport:
    host_id: str
    slots: list[dict[str, Any]] = field(default_factory=list)  # index, state, gpu, error, tiny_model
    models: list[str] = field(default_factory=list)  # slugs of the models its workers serve
    accepting: bool = True  # False while it drains (SIGTERM)
    seen_s_ago: float = 0.0  # filled in when read

    def to_json(self) -> dict[str, Any]:
        """What the store keeps (``seen_s_ago`` is the store's own column)."""
        data = asdict(self)
        data.pop("host_id")
        data.pop("seen_s_ago")
        return data

    @classmethod
    def from_json(cls, host_id: str, data: dict[str, Any], seen_s_ago: float) -> HostReport:
        return cls(
            host_id=host_id,
            slots=list(data.get("slots", [])),
            models=list(data.get("models", [])),
            accepting=bool(data.get("accepting", True)),
            seen_s_ago=max(0.0, float(seen_s_ago)),
        )
