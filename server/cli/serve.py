"""`fluxserve serve`: run the API (and its workers) under uvicorn, with a graceful SIGTERM.

On the first SIGTERM/SIGINT the server stops accepting predictions (creates get 503) while
polls keep working, lets the running prediction finish within ``workers.shutdown_grace_s``,
then exits; queued predictions stay in the store for the next start. A second signal exits
at once.

What an operator must fix before the server can run (another server on the same database or
data folder, a damaged database, a bad config, a port in use) ends `serve` with one line,
``error: ...``, and a non-zero exit, before anything starts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import socket
import sys

import uvicorn

from server.api.middleware.hostguard import is_loopback_name as is_loopback_host  # one rule for bind and Host
from server.config import ConfigError, Settings, load_settings
from server.datalock import ServerBusy, ServerLock
from server.outputs import OutputStorageError, open_output_storage
from server.services import server_lock
from server.store import PredictionStore, open_store
from server.store.carryover import carry_over_keys
from server.store.sqlite.db import DatabaseUnusable

log = logging.getLogger("fluxserve")


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app) -> None:
        super().__init__(config)
        self._app = app
        self._draining = False

    def handle_exit(self, sig, frame) -> None:
        if self._draining:
            super().handle_exit(sig, frame)  # second signal: exit now
            self.force_exit = True
            return
        self._draining = True
        state = self._app.state.fluxserve
        state.supervisor.accepting = False  # an API replica's readiness follows it too
        grace = state.settings.workers.shutdown_grace_s
        log.warning("shutting down: no new predictions; waiting up to %g s for the running one", grace)
        loop = asyncio.get_event_loop()

        def start_drain() -> None:
            async def drain_then_exit() -> None:
                await state.supervisor.drain(grace)
                self.should_exit = True

            loop.create_task(drain_then_exit())

        loop.call_soon_threadsafe(start_drain)


class StartError(RuntimeError):
    """Something the operator must fix before the server can start; the message says what."""


def _check_port(host: str, port: int) -> None:
    """Fail now, in one line, rather than after the workers loaded the model (uvicorn binds last)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise StartError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


def _open_checked_store(settings: Settings) -> PredictionStore:
    """Open the store. A SQLite file is read once in full (PRAGMA quick_check, about a second per
    GB): a damaged file stops the start here, not half-way through restart recovery. A
    PostgreSQL database that cannot be reached stops it in one line naming it."""
    if settings.shared_store:
        _reach_database(settings)
    try:
        store = open_store(settings.resolved_store_url)
    except ValueError as exc:
        raise StartError(f"store_url: {exc}") from None
    except Exception as exc:
        if settings.shared_store and is_database_unreachable(exc):
            raise StartError(unreachable_message(settings, exc)) from None
        raise
    if settings.shared_store:
        return store  # PostgreSQL keeps its own pages whole; pg_amcheck is its check
    try:
        store.check_integrity(quick=True)
    except BaseException:
        store.close()
        raise
    return store


def _reach_database(settings: Settings) -> None:
    """One connection first, so a database that cannot be reached is named with its reason in one
    line (the pool would retry for its whole timeout, then say less)."""
    import psycopg  # only with a postgresql:// store_url

    try:
        psycopg.connect(settings.resolved_store_url, connect_timeout=5).close()
    except psycopg.Error as exc:
        raise StartError(unreachable_message(settings, exc)) from None


def is_database_unreachable(exc: BaseException) -> bool:
    from server.store.postgres.db import is_outage  # psycopg: only with a postgresql:// store_url

    return is_outage(exc)


def unreachable_message(settings: Settings, exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    first = "; ".join(lines[:2]) or type(exc).__name__
    return f"cannot reach the database {settings.store_name}: {first}"


def _check_output_storage(settings: Settings) -> None:
    """A bucket that is missing or refuses these credentials stops the start, in one line."""
    try:
        open_output_storage(settings).check()
    except OutputStorageError as exc:
        raise StartError(f"outputs.backend {settings.outputs.backend}: {exc}") from None


def prepare(
    settings: Settings, host: str | None, *, runs_workers: bool = True
) -> tuple[ServerLock, PredictionStore]:
    """Take the server's locks, check the port (``host`` None: no HTTP), open the checked store
    and carry stored keys over (SQLite); StartError, ServerBusy or DatabaseUnusable otherwise
    (nothing held). On a shared store only the data folder is locked (see ``server_lock``), and
    only by a process that runs workers: API replicas settle no jobs and may share a folder."""
    if not settings.shared_store:
        try:
            settings.db_path  # noqa: B018 - raises for a store_url that names no file
        except ValueError as exc:
            raise StartError(f"store_url: {exc}") from None
    lock = server_lock(settings)
    if runs_workers:
        lock.acquire()  # first: a second server must not even open the first one's database
    store: PredictionStore | None = None
    try:
        if host is not None:
            _check_port(host, settings.port)
        store = _open_checked_store(settings)
        _check_output_storage(settings)
        if not settings.shared_store:  # keys of older versions' data folder files (SQLite only)
            carried = carry_over_keys(settings)
            if carried:
                log.warning("%s", carried)
        return lock, store
    except BaseException:
        if store is not None:
            store.close()
        lock.release()
        raise


def run_server(settings: Settings, *, workers: bool = True) -> int:
    """``workers`` False: an API replica only (`serve --no-workers`), on a shared store."""
    from server.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        if not workers and not settings.shared_store:
            raise StartError(
                "--no-workers needs a store that worker hosts share (store_url: postgresql://...); "
                "with SQLite set workers.count: 0 for a server that runs nothing"
            )
        lock, store = prepare(settings, settings.host, runs_workers=workers)
        app = create_app(settings, store=store, lock=lock, start_workers=workers)
    except (StartError, ServerBusy, DatabaseUnusable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    state = app.state.fluxserve
    host = settings.host
    if state.keyring.open:
        if not is_loopback_host(host):
            log.warning(
                "no API key is configured: binding to 127.0.0.1 instead of %s (set FLUXSERVE_API_KEYS)", host
            )
            host = "127.0.0.1"
        log.warning("no API key is configured: the server is open, reachable from this machine only")
    config = uvicorn.Config(
        app,
        host=host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=int(settings.workers.shutdown_grace_s) + 10,
        proxy_headers=True,
        ssl_certfile=settings.tls.certfile,
        ssl_keyfile=settings.tls.keyfile,
        ssl_keyfile_password=settings.tls.password,
    )
    server = GracefulServer(config, app)
    # What imports and set-up made lives as long as the process: move it out of the collector's
    # reach, so a full collection scans only what requests allocate (it took ~20 ms otherwise,
    # and every request in flight waited for it).
    gc.collect()
    gc.freeze()
    scheme = "https" if settings.tls.enabled else "http"
    log.info("fluxserve on %s://%s:%d (public URL %s)", scheme, host, settings.port, settings.base_url)
    server.run()
    return 0 if server.started else 1  # a start-up that failed (its error is logged) is a failure


def cmd_serve(args) -> int:
    overrides = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    tls = {"certfile": args.ssl_certfile, "keyfile": args.ssl_keyfile}
    if any(tls.values()):
        overrides["tls"] = {k: v for k, v in tls.items() if v}
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return run_server(settings, workers=not getattr(args, "no_workers", False))
