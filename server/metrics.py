"""Prometheus metrics at /metrics: queue depth, predictions by status, predict time, worker states,
workers' idle gaps between queued jobs.

Counts come from the store at scrape time (the store is the truth, also across API hosts);
the predict-time histogram is observed by the supervisor as jobs finish.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

PREDICT_TIME_BUCKETS = (0.5, 1, 2, 4, 6, 8, 10, 15, 20, 30, 45, 60, 90, 120, 300)
IDLE_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class _StateCollector(Collector):
    def __init__(self, metrics: ServerMetrics) -> None:
        self._metrics = metrics

    def collect(self):
        store, supervisor = self._metrics.store, self._metrics.supervisor
        if store is not None:
            counts = store.counts_by_status()
            by_status = GaugeMetricFamily(
                "fluxserve_predictions", "Predictions in the store by status", labels=["status"]
            )
            for status, n in counts.items():
                by_status.add_metric([status], n)
            yield by_status
            yield GaugeMetricFamily(
                "fluxserve_queue_depth", "Predictions waiting for a worker", value=counts.get("starting", 0)
            )
        if supervisor is not None:
            workers = GaugeMetricFamily("fluxserve_workers", "Worker processes by state", labels=["state"])
            for state, n in supervisor.worker_state_counts().items():
                workers.add_metric([state], n)
            yield workers
            yield GaugeMetricFamily(
                "fluxserve_store_failing",
                "1 while the prediction store refuses writes",
                value=int(supervisor.store_health.failing),
            )
            yield GaugeMetricFamily(
                "fluxserve_unrecorded_ends",
                "Prediction ends kept until the store takes them",
                value=supervisor.pending_ends,
            )


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.store = None
        self.supervisor = None
        self.predict_time = Histogram(
            "fluxserve_predict_time_seconds",
            "Seconds of model work per successful prediction",
            buckets=PREDICT_TIME_BUCKETS,
            registry=self.registry,
        )
        self.idle_gap = Histogram(
            "fluxserve_worker_idle_gap_seconds",
            "Seconds a worker's GPU sat without work while a job was queued (before each job)",
            buckets=IDLE_GAP_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))

    def bind(self, store, supervisor) -> None:
        self.store, self.supervisor = store, supervisor

    def render(self) -> bytes:
        return generate_latest(self.registry)
