"""`fluxserve worker`: a worker host. Its GPU workers take jobs from the PostgreSQL store that
the API replicas (`fluxserve serve --no-workers`) share; it serves no HTTP.

It claims jobs, runs them, records the ends, renews its leases and recovers other hosts' expired
ones, hears creates and cancels over LISTEN/NOTIFY, and writes a heartbeat the API replicas'
/health-check reads. On the first SIGTERM/SIGINT it takes no new job and lets the running ones
finish within ``workers.shutdown_grace_s``; a second signal stops at once. A database that cannot
be reached at start ends it with one line, ``error: ...``, and exit 1.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from server.cli.serve import StartError, prepare
from server.config import ConfigError, Settings, load_settings
from server.datalock import ServerBusy

log = logging.getLogger("fluxserve")


async def run_worker_host(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (or the first signal): then drain and stop."""
    from server.services import build_worker_host
    from server.store import open_backend

    lock, store = prepare(settings, None)
    try:
        host = build_worker_host(settings, open_backend(settings.resolved_store_url, predictions=store))
    except BaseException:
        store.close()
        lock.release()
        raise
    stop = stop or asyncio.Event()
    now = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            now.set()  # a second signal: no grace
            return
        log.warning(
            "shutting down: no new jobs; waiting up to %g s for the running ones",
            settings.workers.shutdown_grace_s,
        )
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    try:
        await host.start()
        log.info("worker host %s taking jobs from %s", host.heartbeat.host_id, settings.store_name)
        await stop.wait()
        drain = asyncio.ensure_future(host.drain(settings.workers.shutdown_grace_s))
        cut = asyncio.ensure_future(now.wait())
        await asyncio.wait([drain, cut], return_when=asyncio.FIRST_COMPLETED)
        drain.cancel()
        cut.cancel()
    finally:
        try:
            await host.stop()
        finally:
            lock.release()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)


def cmd_worker(args) -> int:
    overrides = {}
    if args.gpus:
        try:
            overrides["workers"] = {"gpus": [int(g) for g in args.gpus.split(",") if g.strip()]}
        except ValueError:
            print(f"error: --gpus {args.gpus!r}: give GPU indices separated by commas (0,1)", file=sys.stderr)
            return 2
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if not settings.shared_store:
        print(
            "error: a worker host needs a store_url that the API replicas share (postgresql://...); "
            "with SQLite, `fluxserve serve` runs the workers itself",
            file=sys.stderr,
        )
        return 1
    try:
        asyncio.run(run_worker_host(settings))
    except (StartError, ServerBusy) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
