"""A small synchronous client for the Eachlabs prediction routes of a fluxserve server.

    with FluxClient("http://127.0.0.1:8000", api_key="KEY") as client:
        prediction = client.run({"prompt": "a red fox", "megapixels": 0.25})
        image = client.download(output_urls(prediction)[0])

Retries (through tenacity):

- a 429 is retried after its ``Retry-After`` (bounded: ``rate_limit_retries`` times, each wait
  capped at ``max_retry_after``), for every call: a refused request made no prediction;
- a network failure is retried with exponential backoff (``network_retries`` times) for GETs
  only, and for any call whose connection was never opened (the server cannot have seen it);
  a POST that may have reached the server is never sent twice.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

log = logging.getLogger("fluxserve.client")

TERMINAL_STATUSES = frozenset({"success", "error", "cancelled"})
MAX_SERVER_WAIT_S = 60.0  # the server holds a GET ?wait=n at most this long
LONG_POLL_CHUNK_S = 20.0  # wait() long-polls in chunks of at most this long
PROGRESS_POLL_S = 1.0  # ...or this long when it reports progress (long-polls end only at the end)

_PROGRESS_RE = re.compile(r"^(\d+)/(\d+) steps\b", re.MULTILINE)
_SEED_RE = re.compile(r"^Using seed: (\d+)", re.MULTILINE)
_NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_RETRYABLE_GET_STATUSES = frozenset({502, 503, 504})


# -- helpers on prediction bodies --------------------------------------------------------------


def parse_progress(logs: str | None) -> tuple[int, int] | None:
    """The last ``N/M steps`` line of ``logs`` as ``(N, M)``, or None before the first step."""
    matches = _PROGRESS_RE.findall(logs or "")
    if not matches:
        return None
    done, total = matches[-1]
    return int(done), int(total)


def parse_seed(logs: str | None) -> int | None:
    """The seed from the ``Using seed: N`` log line, or None when it is not there yet."""
    match = _SEED_RE.search(logs or "")
    return int(match.group(1)) if match else None


def output_urls(prediction: dict[str, Any]) -> list[str]:
    """The output URLs of a prediction as a list (the contract gives one image as a bare string)."""
    output = prediction.get("output")
    if output is None:
        return []
    if isinstance(output, str):
        return [output]
    return [str(u) for u in output]


def prediction_base_url(prediction: dict[str, Any]) -> str | None:
    """The server base URL a prediction's links are built on (``urls.get`` is
    ``<base>/v1/prediction/<id>``), or None when the body has no such link."""
    get = (prediction.get("urls") or {}).get("get")
    suffix = f"/v1/prediction/{prediction.get('id')}"
    if isinstance(get, str) and get.endswith(suffix):
        return get[: -len(suffix)]
    return None


# -- errors -------------------------------------------------------------------------------------


class FluxAPIError(Exception):
    """An error answer from the server (``status`` is the HTTP code), or a failed connection.

    ``error`` is the server's message and ``details`` its optional details (for a 400, a dict
    naming each bad field and why). ``retry_after`` holds a 429's Retry-After in seconds.
    """

    def __init__(
        self, status: int, error: str, details: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.details = details
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = f"{self.status} {self.error}" if self.status else self.error
        if self.details:
            if isinstance(self.details, dict):
                text += " (" + "; ".join(f"{k}: {v}" for k, v in self.details.items()) + ")"
            else:
                text += f" ({self.details})"
        return text


class FluxConnectionError(FluxAPIError):
    """The server could not be reached or the connection broke (``status`` is 0).

    The httpx exception is the ``__cause__``.
    """

    def __init__(self, error: str) -> None:
        super().__init__(0, error)


class WaitTimeout(TimeoutError):
    """``wait``/``run`` gave up before the prediction ended; ``prediction`` is its last state."""

    def __init__(self, prediction: dict[str, Any], timeout: float) -> None:
        super().__init__(
            f"prediction {prediction.get('id')} still {prediction.get('status')} after {timeout:g} s"
        )
        self.prediction = prediction


def _parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _error_from(response: httpx.Response) -> FluxAPIError:
    error, details = f"HTTP {response.status_code}", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = str(body.get("error") or body.get("detail") or body.get("message") or error)
        details = body.get("details")
    elif response.text:
        error = response.text.strip()[:500]
    retry_after = _parse_retry_after(response.headers.get("retry-after"))
    return FluxAPIError(response.status_code, error, details, retry_after)


# -- the client ---------------------------------------------------------------------------------


class FluxClient:
    """A client of one fluxserve server, for one API key. Thread-safe; use as a context manager.

    Args:
        base_url: the server's address, e.g. ``http://127.0.0.1:8000``.
        api_key: sent as ``X-API-Key`` (None for a server run without keys).
        timeout: seconds for one request (a long-poll adds its wait to it).
        model: the model slug sent on create.
        rate_limit_retries: how many times a 429 is retried before FluxAPIError(429) is raised.
        network_retries: how many times a failed connection is retried (GETs, or never-sent requests).
        max_retry_after: the longest wait honoured from one Retry-After header, in seconds.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        timeout: float = 30,
        model: str = "flux-dev",
        *,
        rate_limit_retries: int = 5,
        network_retries: int = 3,
        max_retry_after: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = float(timeout)
        self.model = model
        self.rate_limit_retries = rate_limit_retries
        self.network_retries = network_retries
        self.max_retry_after = max_retry_after
        self._backoff = wait_exponential_jitter(initial=0.5, max=8.0, jitter=0.5)
        self._sleep: Callable[[float], None] = time.sleep
        headers = {"User-Agent": "fluxserve-client/0.1", "Accept": "application/json"}
        self._http = httpx.Client(
            base_url=self.base_url, timeout=self.timeout, headers=headers, transport=transport
        )

    # -- lifecycle --------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> FluxClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FluxClient({self.base_url!r}, model={self.model!r})"

    # -- the routes -------------------------------------------------------------------------

    def create(
        self, input: dict[str, Any], webhook_url: str | None = None, webhook_secret: str | None = None
    ) -> str:
        """Create a prediction from flux-dev ``input``; returns its id at once (it is queued)."""
        body: dict[str, Any] = {"model": self.model, "input": input}
        if webhook_url is not None:
            body["webhook_url"] = webhook_url
        if webhook_secret is not None:
            body["webhook_secret"] = webhook_secret
        data = self._request("POST", "/v1/prediction", json=body, idempotent=False).json()
        prediction_id = data.get("predictionID") if isinstance(data, dict) else None
        if not prediction_id:
            raise FluxAPIError(200, "create answered without a predictionID", data)
        return str(prediction_id)

    def get(self, id: str, wait: float = 0) -> dict[str, Any]:
        """The prediction ``id``. With ``wait`` > 0 the server holds the request until the
        prediction ends or ``wait`` seconds pass (at most 60)."""
        params: dict[str, Any] = {}
        timeout = self.timeout
        if wait > 0:
            wait = min(float(wait), MAX_SERVER_WAIT_S)
            params["wait"] = f"{wait:g}"
            timeout += wait
        return self._request("GET", f"/v1/prediction/{_segment(id)}", params=params, timeout=timeout).json()

    def wait(
        self,
        id: str,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Long-poll until the prediction ends and return it (success, error or cancelled).

        ``on_progress`` is called with the latest prediction each time its logs change (see
        :func:`parse_progress` for the step count); with it the polls are ~1 s long, since a
        long-poll only returns early at the end. Raises :class:`WaitTimeout` after ``timeout``
        seconds (None: no limit).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        chunk = PROGRESS_POLL_S if on_progress is not None else LONG_POLL_CHUNK_S
        last_logs: str | None = None
        prediction = self.get(id)
        while True:
            if on_progress is not None and prediction.get("logs") != last_logs:
                last_logs = prediction.get("logs")
                on_progress(prediction)
            if prediction.get("status") in TERMINAL_STATUSES:
                return prediction
            wait = chunk
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WaitTimeout(prediction, timeout or 0)
                wait = max(0.1, min(chunk, remaining))
            prediction = self.get(id, wait=wait)

    def cancel(self, id: str) -> dict[str, Any]:
        """Ask the server to cancel ``id``. A finished prediction raises FluxAPIError(409)."""
        return self._request("POST", f"/v1/prediction/{_segment(id)}/cancel", idempotent=False).json()

    def run(
        self,
        input: dict[str, Any],
        webhook_url: str | None = None,
        webhook_secret: str | None = None,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        """Create a prediction and wait for its end (see :meth:`create` and :meth:`wait`)."""
        prediction_id = self.create(input, webhook_url=webhook_url, webhook_secret=webhook_secret)
        return self.wait(prediction_id, on_progress=on_progress, timeout=timeout)

    def list(
        self,
        limit: int = 20,
        offset: int = 0,
        status: str | None = None,
        created_from: str | float | None = None,
        created_to: str | float | None = None,
    ) -> dict[str, Any]:
        """This key's predictions, newest first: ``{"executions": [...], "total", "limit", "offset"}``.

        ``created_from``/``created_to`` take unix seconds or ISO 8601 (inclusive).
        """
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        if created_from is not None:
            params["from"] = created_from
        if created_to is not None:
            params["to"] = created_to
        return self._request("GET", "/v1/executions", params=params).json()

    def download(self, url: str) -> bytes:
        """The bytes of an output URL (absolute, or relative to the server). The API key is sent
        only to the server's own origin."""
        absolute = urljoin(self.base_url + "/", url)
        send_key = _origin(absolute) == _origin(self.base_url)
        return self._request("GET", absolute, auth=send_key, accept="*/*").content

    def share_url(self, prediction: dict[str, Any]) -> str | None:
        """The prediction's share page, ``<base>/p/<id>``, when the server serves it (share pages
        on: ``outputs.share_pages``), else None. ``<base>`` is the one the prediction's own links
        use (the server's public URL); the page is asked of this client's address."""
        prediction_id = prediction.get("id")
        if not prediction_id:
            return None
        try:
            self._request("GET", f"/p/{_segment(prediction_id)}", auth=False, accept="text/html")
        except FluxAPIError:  # 404: share pages are off (or the connection failed: no link to give)
            return None
        return f"{prediction_base_url(prediction) or self.base_url}/p/{prediction_id}"

    # -- plumbing ---------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        timeout: float | None = None,
        idempotent: bool | None = None,
        auth: bool = True,
        accept: str | None = None,
    ) -> httpx.Response:
        """One call with the retry policy; raises FluxAPIError for any answer >= 400."""
        if idempotent is None:
            idempotent = method in ("GET", "HEAD")
        headers: dict[str, str] = {}
        if auth and self.api_key:
            headers["X-API-Key"] = self.api_key
        if accept:
            headers["Accept"] = accept

        def send() -> httpx.Response:
            try:
                response = self._http.request(
                    method, url, params=params, json=json, headers=headers, timeout=timeout or self.timeout
                )
            except httpx.TransportError as exc:
                raise FluxConnectionError(
                    f"{method} {url}: {type(exc).__name__}: {exc or 'connection failed'}"
                ) from exc
            if response.status_code >= 400:
                raise _error_from(response)
            return response

        def should_retry(exc: BaseException) -> bool:
            if isinstance(exc, FluxConnectionError):
                return idempotent or isinstance(exc.__cause__, _NEVER_SENT)
            if isinstance(exc, FluxAPIError):
                return exc.status == 429 or (idempotent and exc.status in _RETRYABLE_GET_STATUSES)
            return False

        retrying = Retrying(
            retry=retry_if_exception(should_retry),
            stop=self._stop,
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        return retrying(send)

    def _stop(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        limit = self.rate_limit_retries if _is_429(exc) else self.network_retries
        return state.attempt_number > limit

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if _is_429(exc):
            after = exc.retry_after if exc.retry_after is not None else 1.0  # type: ignore[union-attr]
            return min(after, self.max_retry_after)
        return self._backoff(state)

    @staticmethod
    def _log_retry(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        log.info("retrying in %.1f s after: %s", wait, exc)


def _is_429(exc: BaseException | None) -> bool:
    return isinstance(exc, FluxAPIError) and exc.status == 429


def _segment(value: str) -> str:
    return quote(str(value), safe="")


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()
