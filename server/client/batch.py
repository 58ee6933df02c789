"""`fluxserve client batch`: run a JSONL file of flux-dev inputs through a server, resumably.

One JSON object of flux-dev inputs per line; blank lines and ``#`` comments are skipped; a line
that is not a JSON object is reported (with its number) and recorded as ``invalid``.

What lands in the output folder:

- ``NNNNNN-<slug>-i.ext``: output image ``i`` of input line ``NNNNNN``, ``<slug>`` the start of
  its prompt in lower-case ASCII words (``file_names="number"``: ``NNNNNN-i.ext``); written to a
  temporary name, then renamed, so a file that exists is complete. The manifest records each
  line's file names, so a resumed run never needs to guess them;
- ``manifest.jsonl``: one record per input line that ended, appended (and fsync'd) as each ends,
  then rewritten sorted by line with one record per line (the latest) when the run stops::

      {"line": 42, "inputs": {...}, "prediction_id": "...", "status": "success", "seed": 1234,
       "predict_time": 9.8, "files": ["000042-a-red-fox-0.webp"], "error": null, "t": 1700000000.0}

  ``status``: ``success``, ``error`` (the prediction failed, or its outputs could not be
  fetched), ``cancelled`` or ``invalid`` (not a JSON object, or refused by the server);
- ``pending.jsonl``: the submission journal. ``intent`` is written just before a create and
  ``submitted`` (with the prediction id) just after it; entries whose line has ended are dropped
  when the run stops, and the file is removed when none is left.

Running again resumes: a line whose latest manifest record is a success with the same inputs is
skipped; a line submitted but not ended is polled by its id, not created again; a line whose
create was cut off between ``intent`` and ``submitted`` (a kill in that instant) is looked up
in the key's recent predictions by its inputs before anything is created. Lines that ended in
error, cancelled or invalid are tried again.

Concurrency: ``max_in_flight`` worker threads, each carrying one line from create to written
files, so at most that many predictions are in flight. A 429 is not a failure: the worker waits
for the Retry-After and tries again. Stopping (Ctrl-C, SIGTERM, or the ``stop`` event) lets a
create in progress finish and be journaled, creates nothing more, and leaves the running
predictions to the next run. One run at a time per output folder (a lock on ``.lock``).

Step progress: while a line runs, its ``k/n steps`` are reported (``on_step``, or after the
overall bar on a terminal); its polls are then short (``STEP_POLL_S``), since a long-poll only
returns at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from server.client.api import (
    TERMINAL_STATUSES,
    FluxAPIError,
    FluxClient,
    FluxConnectionError,
    output_urls,
    parse_progress,
    parse_seed,
)

MANIFEST = "manifest.jsonl"
PENDING = "pending.jsonl"
ORPHAN_WINDOW_S = 600.0  # look this far before an unconfirmed create for the prediction it made
ORPHAN_SCAN_LIMIT = 5000  # at most this many recent predictions are scanned for them
DEFAULT_POLL_S = 5.0  # long-poll chunk; also how quickly a stop is noticed
STEP_POLL_S = 1.0  # the poll chunk while step progress is shown
SLUG_MAX_CHARS = 40
FILE_NAMES = ("prompt", "number")  # NNNNNN-<slug>-i.ext, or NNNNNN-i.ext
BUSY_NOTICE_EVERY_S = 30.0
MAX_POLL_FAILURES = 3  # consecutive unreachable polls (each already retried) before a line is left pending
# How the server echoes a prediction's input (server/api/eachlabs/render.py): a long data: URL is
# summarised. Repeated here because the client imports nothing of the server; a test checks both agree.
DATA_URL_ECHO_LIMIT = 256


@dataclass
class BatchSummary:
    """What one run did. ``unfinished`` lines are still pending and resume on the next run."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    unfinished: int = 0
    resumed: int = 0
    interrupted: bool = False
    rate_limited: int = 0

    def __str__(self) -> str:
        text = f"done {self.done}, failed {self.failed}, skipped {self.skipped}"
        if self.resumed:
            text += f" (resumed {self.resumed} submitted earlier)"
        if self.unfinished:
            text += f"; {self.unfinished} unfinished: run the same command again to resume"
        return text


@dataclass
class InputLine:
    """One non-blank, non-comment line of the inputs file."""

    number: int
    inputs: dict[str, Any] | None
    error: str | None = None


def read_inputs(path: str | Path) -> list[InputLine]:
    """Parse the JSONL inputs file; bad lines come back with ``error`` set, not raised."""
    lines: list[InputLine] = []
    with open(path, encoding="utf-8-sig", errors="replace") as fh:
        for number, raw in enumerate(fh, start=1):
            text = raw.strip()
            if not text or text.startswith("#"):
                continue
            try:
                value = json.loads(text)
            except ValueError as exc:
                lines.append(InputLine(number, None, f"invalid JSON: {exc}"))
                continue
            if not isinstance(value, dict):
                lines.append(InputLine(number, None, "expected a JSON object of flux-dev inputs"))
                continue
            lines.append(InputLine(number, value))
    return lines


def prompt_slug(prompt: Any, max_chars: int = SLUG_MAX_CHARS) -> str:
    """The start of a prompt as a file-name part: lower-case ASCII words joined by ``-``, cut at a
    word boundary within ``max_chars``; "image" when nothing is left (no prompt, only symbols)."""
    text = unicodedata.normalize("NFKD", str(prompt or "")).encode("ascii", "ignore").decode("ascii")
    words = re.findall(r"[a-z0-9]+", text.lower())
    slug = ""
    for word in words:
        candidate = f"{slug}-{word}" if slug else word
        if len(candidate) > max_chars:
            slug = slug or word[:max_chars]
            break
        slug = candidate
    return slug or "image"


def output_name(line: InputLine, index: int, ext: str, file_names: str = "prompt") -> str:
    """The file name of output ``index`` of ``line`` (see the module docstring)."""
    if file_names == "number":
        return f"{line.number:06d}-{index}.{ext}"
    return f"{line.number:06d}-{prompt_slug((line.inputs or {}).get('prompt'))}-{index}.{ext}"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class _Journal:
    """An append-only JSONL file of records keyed by ``line``; each append is fsync'd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records = []
        for raw in self.path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(raw)
            except ValueError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and isinstance(record.get("line"), int):
                records.append(record)
        return records

    def latest(self) -> dict[int, dict[str, Any]]:
        """The last record of each line, in file (= time) order."""
        out: dict[int, dict[str, Any]] = {}
        for record in self.read():
            out[record["line"]] = record
        return out

    def append(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock, open(self.path, "a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() > 0:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")  # the previous writer was killed mid-line
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        with self._lock:
            if records:
                text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
                _atomic_write(self.path, text.encode("utf-8"))
            elif self.path.exists():
                self.path.unlink()


class BatchLocked(RuntimeError):
    """Another batch run is using this output folder."""


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``folder/.lock`` (two runs would create lines twice)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(folder / ".lock", "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BatchLocked(f"another batch run is using {folder}") from None
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@dataclass
class _Item:
    line: InputLine
    resume_id: str | None = None
    intent_written: bool = field(default=False)


def echo_input(raw: dict[str, Any]) -> dict[str, Any]:
    """The input as the server echoes it: an inline image summarised instead of repeated."""
    out = dict(raw)
    image = out.get("image")
    if isinstance(image, str) and image.startswith("data:") and len(image) > DATA_URL_ECHO_LIMIT:
        head = image.split(",", 1)[0]
        out["image"] = f"{head},... ({len(image)} characters)"
    return out


def _same_inputs(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


class BatchRunner:
    """Runs one inputs file into one output folder (see the module docstring); use it once.

    Args:
        client: the server to use. Its own 429 retries may be left at any value; the runner
            waits out further 429s itself.
        inputs_path: the JSONL file.
        out_dir: where images, ``manifest.jsonl`` and ``pending.jsonl`` go (created).
        max_in_flight: predictions in flight at once (worker threads).
        stop: set it to stop (the CLI sets it on Ctrl-C/SIGTERM).
        echo: where progress messages go (default: print to stderr).
        poll_s: the long-poll chunk in seconds.
        show_progress: a tqdm bar on stderr (when it is a terminal), followed by the steps of
            the lines running.
        on_step: called with (line number, step, total steps) each time a running line's step
            count changes (polls are then short, as while the bar shows steps).
        file_names: "prompt" (``NNNNNN-<slug>-i.ext``) or "number" (``NNNNNN-i.ext``).
    """

    def __init__(
        self,
        client: FluxClient,
        inputs_path: str | Path,
        out_dir: str | Path,
        max_in_flight: int = 10,
        stop: threading.Event | None = None,
        echo: Callable[[str], None] | None = None,
        poll_s: float = DEFAULT_POLL_S,
        show_progress: bool = True,
        on_step: Callable[[int, int, int], None] | None = None,
        file_names: str = "prompt",
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if file_names not in FILE_NAMES:
            raise ValueError(f"file_names must be one of {', '.join(FILE_NAMES)}")
        self.client = client
        self.inputs_path = Path(inputs_path)
        self.out_dir = Path(out_dir)
        self.max_in_flight = max_in_flight
        self.stop = stop or threading.Event()
        self.poll_s = poll_s
        self.show_progress = show_progress
        self.on_step = on_step
        self.file_names = file_names
        self._steps: dict[int, tuple[int, int]] = {}  # line -> (step, total) of the lines running
        self._echo_fn = echo
        self.manifest = _Journal(self.out_dir / MANIFEST)
        self.pending = _Journal(self.out_dir / PENDING)
        self.summary = BatchSummary()
        self._cond = threading.Condition()
        self._critical = 0
        self._closing = False
        self._remaining = 0
        self._queued: list[int] = []  # lines handed to the workers
        self._ended: set[int] = set()  # lines that got their manifest record in this run
        self._queue: queue.Queue[_Item] = queue.Queue()
        self._bar: Any = None
        self._last_busy_notice = 0.0

    # -- output -----------------------------------------------------------------------------

    def _echo(self, message: str) -> None:
        if self._echo_fn is not None:
            self._echo_fn(message)
        elif self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)

    def _count(self, what: str) -> None:
        with self._cond:
            setattr(self.summary, what, getattr(self.summary, what) + 1)
        if what in ("done", "failed") and self._bar is not None:
            self._bar.update(1)

    # -- critical sections (a create and its journal entry; a manifest append) -------------

    def _enter(self, gated: bool) -> bool:
        """Start a section the stop waits for; False when stopping (``gated``) or closing."""
        with self._cond:
            if self._closing or (gated and self.stop.is_set()):
                return False
            self._critical += 1
            return True

    def _leave(self) -> None:
        with self._cond:
            self._critical -= 1
            self._cond.notify_all()

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> BatchSummary:
        """Process the file; returns the summary (also when stopped).

        Raises BatchLocked when another run holds the output folder.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with _folder_lock(self.out_dir):
            return self._run()

    def _run(self) -> BatchSummary:
        lines = read_inputs(self.inputs_path)
        finished = self.manifest.latest()
        pending = self.pending.latest()
        resume: list[_Item] = []
        new: list[_Item] = []
        orphans: list[tuple[_Item, dict[str, Any]]] = []

        for line in lines:
            if line.inputs is None:
                self._echo(f"line {line.number}: {line.error}; skipped")
                self._record(line, None, "invalid", error=line.error)
                self._count("failed")
                continue
            prev = finished.get(line.number)
            if prev and prev.get("status") == "success" and _same_inputs(prev.get("inputs"), line.inputs):
                self.summary.skipped += 1
                continue
            entry = pending.get(line.number)
            if (
                entry
                and _same_inputs(entry.get("inputs"), line.inputs)
                and (prev is None or float(prev.get("t", 0)) < float(entry.get("t", 0)))
            ):
                if entry.get("event") == "submitted" and entry.get("id"):
                    resume.append(_Item(line, resume_id=str(entry["id"])))
                    continue
                if entry.get("event") == "intent":
                    orphans.append((_Item(line), entry))
                    continue
            new.append(_Item(line))

        if orphans:
            known = {str(r["id"]) for r in self.pending.read() if r.get("id")}
            known |= {str(r["prediction_id"]) for r in self.manifest.read() if r.get("prediction_id")}
            found, not_found = self._recover_orphans(orphans, known)
            resume.extend(found)
            new = sorted(new + not_found, key=lambda item: item.line.number)

        self.summary.resumed = len(resume)
        items = resume + new
        self._queued = [item.line.number for item in items]
        self._remaining = len(items)
        for item in items:
            self._queue.put(item)

        try:
            if items:
                self._run_workers(len(items))
        finally:
            self._compact()
        return self.summary

    def _run_workers(self, total: int) -> None:
        if self.show_progress and self._echo_fn is None:
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="line", desc="batch", file=sys.stderr, disable=None)
            if self._bar.disable:  # not a terminal: no bar, no step line
                self._bar = None
        threads = [
            threading.Thread(target=self._worker, name=f"batch-{i}", daemon=True)
            for i in range(min(self.max_in_flight, total))
        ]
        for t in threads:
            t.start()
        try:
            with self._cond:
                while self._remaining > 0 and not self.stop.is_set():
                    self._cond.wait(0.25)
        except KeyboardInterrupt:
            self.stop.set()
        if self.stop.is_set():
            self.summary.interrupted = True
            self._echo("stopping: waiting for the creates in progress to be recorded...")
        # Stop writing once nothing is mid-create or mid-record; pollers are left behind (daemons).
        with self._cond:
            while self._critical > 0:
                self._cond.wait(0.25)
            self._closing = True
        if not self.stop.is_set():
            for t in threads:
                t.join(timeout=5)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _worker(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if self.stop.is_set():
                return
            try:
                outcome = self._process(item)
            except Exception as exc:  # noqa: BLE001 - one line's trouble must not stop the others
                self._echo(
                    f"line {item.line.number}: unexpected error: {type(exc).__name__}: {exc}; left pending"
                )
                outcome = "unfinished"
            with self._cond:
                if outcome != "stopped":
                    self._remaining -= 1
                self._cond.notify_all()

    # -- one line ---------------------------------------------------------------------------

    def _process(self, item: _Item) -> str:
        """Returns "done", "failed", "unfinished" (left pending) or "stopped"."""
        prediction_id = item.resume_id
        if prediction_id is None:
            prediction_id, outcome = self._submit(item)
            if prediction_id is None:
                return outcome
        prediction = self._poll(item, prediction_id)
        if isinstance(prediction, str):
            return prediction
        return self._finish(item, prediction_id, prediction)

    def _submit(self, item: _Item) -> tuple[str | None, str]:
        line = item.line
        while True:
            if not self._enter(gated=True):
                return None, "stopped"
            retry_after: float | None = None
            try:
                if not item.intent_written:
                    self.pending.append(
                        {"line": line.number, "event": "intent", "inputs": line.inputs, "t": time.time()}
                    )
                    item.intent_written = True
                try:
                    prediction_id = self.client.create(line.inputs or {})
                except FluxConnectionError as exc:
                    # It may have reached the server: the intent stays, the next run looks for it.
                    self._echo(f"line {line.number}: create failed: {exc}; left pending")
                    return None, "unfinished"
                except FluxAPIError as exc:
                    if exc.status == 429:
                        retry_after = exc.retry_after if exc.retry_after is not None else 5.0
                    else:
                        status = "invalid" if exc.status in (400, 413, 422) else "error"
                        self._echo(f"line {line.number}: refused: {exc}")
                        self._record_locked(line, None, status, error=str(exc))
                        self._count("failed")
                        return None, "failed"
                else:
                    self.pending.append(
                        {
                            "line": line.number,
                            "event": "submitted",
                            "id": prediction_id,
                            "inputs": line.inputs,
                            "t": time.time(),
                        }
                    )
                    return prediction_id, "submitted"
            finally:
                self._leave()
            self._busy(line, retry_after)
            if self.stop.wait(retry_after):
                return None, "stopped"

    def _busy(self, line: InputLine, retry_after: float) -> None:
        with self._cond:
            self.summary.rate_limited += 1
            now = time.monotonic()
            notify = now - self._last_busy_notice >= BUSY_NOTICE_EVERY_S
            if notify:
                self._last_busy_notice = now
        if notify:
            self._echo(f"line {line.number}: server busy (429); backing off {retry_after:g} s as asked")

    def _poll(self, item: _Item, prediction_id: str) -> dict[str, Any] | str:
        failures = 0
        while True:
            if self.stop.is_set():
                return "stopped"
            try:
                prediction = self.client.get(prediction_id, wait=self._poll_chunk())
            except FluxConnectionError as exc:
                failures += 1
                if failures >= MAX_POLL_FAILURES:
                    self._echo(f"line {item.line.number}: server unreachable ({exc}); left pending")
                    return "unfinished"
                if self.stop.wait(5.0 * failures):
                    return "stopped"
                continue
            except FluxAPIError as exc:
                if exc.status == 429:
                    if self.stop.wait(exc.retry_after or 5.0):
                        return "stopped"
                    continue
                if exc.status == 404:
                    self._echo(f"line {item.line.number}: prediction {prediction_id} not found on the server")
                    self._record(
                        item.line, prediction_id, "error", error=f"prediction {prediction_id} not found"
                    )
                    self._count("failed")
                    return "failed"
                self._echo(f"line {item.line.number}: polling failed: {exc}; left pending")
                return "unfinished"
            failures = 0
            self._report_steps(item.line.number, prediction)
            if prediction.get("status") in TERMINAL_STATUSES:
                self._forget_steps(item.line.number)
                return prediction

    def _finish(self, item: _Item, prediction_id: str, prediction: dict[str, Any]) -> str:
        line = item.line
        status = prediction.get("status")
        files: list[str] = []
        error = prediction.get("error")
        if status == "success":
            urls = output_urls(prediction)
            if not urls:
                status, error = "error", "the prediction succeeded but its outputs are gone (retention?)"
            for index, url in enumerate(urls):
                ext = Path(urlsplit(url).path).suffix.lstrip(".") or "webp"
                name = output_name(line, index, ext, self.file_names)
                try:
                    data = self.client.download(url)
                except FluxConnectionError as exc:
                    self._echo(f"line {line.number}: download failed ({exc}); left pending")
                    return "unfinished"
                except FluxAPIError as exc:
                    status, error = "error", f"downloading {url}: {exc}"
                    break
                _atomic_write(self.out_dir / name, data)
                files.append(name)
        if not self._record(
            line, prediction_id, str(status), prediction=prediction, files=files, error=error
        ):
            return "stopped"
        if status == "success":
            self._count("done")
            self._echo(
                f"line {line.number}: success -> {', '.join(files)} "
                f"(seed {parse_seed(prediction.get('logs'))}, "
                f"{(prediction.get('metrics') or {}).get('predict_time')} s)"
            )
            return "done"
        self._count("failed")
        self._echo(f"line {line.number}: {status}: {error}")
        return "failed"

    # -- step progress ----------------------------------------------------------------------

    def _shows_steps(self) -> bool:
        return self.on_step is not None or self._bar is not None

    def _poll_chunk(self) -> float:
        return min(self.poll_s, STEP_POLL_S) if self._shows_steps() else self.poll_s

    def _report_steps(self, number: int, prediction: dict[str, Any]) -> None:
        """Tell ``on_step`` and the bar a line's new step count (from the ``k/n steps`` log line)."""
        if not self._shows_steps():
            return
        steps = parse_progress(prediction.get("logs"))
        if steps is None:
            return
        with self._cond:
            if self._steps.get(number) == steps:
                return
            self._steps[number] = steps
        if self.on_step is not None:
            self.on_step(number, *steps)
        self._show_steps()

    def _forget_steps(self, number: int) -> None:
        with self._cond:
            if self._steps.pop(number, None) is None:
                return
        self._show_steps()

    def _show_steps(self) -> None:
        bar = self._bar
        if bar is None:
            return
        with self._cond:
            running = sorted(self._steps.items())
        shown = [f"line {n} {step}/{total} steps" for n, (step, total) in running[:4]]
        if len(running) > 4:
            shown.append(f"+{len(running) - 4} more")
        bar.set_postfix_str(", ".join(shown))

    def _record(self, line: InputLine, prediction_id: str | None, status: str, **kwargs: Any) -> bool:
        if not self._enter(gated=False):
            return False
        try:
            self._record_locked(line, prediction_id, status, **kwargs)
        finally:
            self._leave()
        return True

    def _record_locked(
        self,
        line: InputLine,
        prediction_id: str | None,
        status: str,
        prediction: dict[str, Any] | None = None,
        files: list[str] | None = None,
        error: str | None = None,
    ) -> None:
        prediction = prediction or {}
        self.manifest.append(
            {
                "line": line.number,
                "inputs": line.inputs,
                "prediction_id": prediction_id,
                "status": status,
                "seed": parse_seed(prediction.get("logs")),
                "predict_time": (prediction.get("metrics") or {}).get("predict_time"),
                "files": files or [],
                "error": error,
                "t": time.time(),
            }
        )
        with self._cond:
            self._ended.add(line.number)

    # -- resuming ---------------------------------------------------------------------------

    def _recover_orphans(
        self, orphans: list[tuple[_Item, dict[str, Any]]], known_ids: set[str]
    ) -> tuple[list[_Item], list[_Item]]:
        """Match creates cut off before their id was journaled to this key's recent predictions
        with the same inputs. Returns (items to poll by id, items to create)."""
        since = min(float(entry.get("t", 0)) for _, entry in orphans) - ORPHAN_WINDOW_S
        candidates: list[dict[str, Any]] = []
        offset = 0
        try:
            while offset < ORPHAN_SCAN_LIMIT:
                page = self.client.list(limit=100, offset=offset, created_from=since)
                executions = page.get("executions") or []
                candidates.extend(executions)
                offset += len(executions)
                if not executions or offset >= int(page.get("total") or 0):
                    break
        except FluxAPIError as exc:
            self._echo(
                f"could not check for predictions of interrupted creates ({exc}); "
                "those lines wait for the next run"
            )
            with self._cond:
                self.summary.unfinished += len(orphans)
            return [], []
        candidates.sort(key=lambda p: str(p.get("created_at") or ""))
        claimed = set(known_ids)
        found: list[_Item] = []
        not_found: list[_Item] = []
        for item, _entry in sorted(orphans, key=lambda pair: float(pair[1].get("t", 0))):
            expected = echo_input(item.line.inputs or {})
            match = next(
                (
                    p
                    for p in candidates
                    if str(p.get("id")) not in claimed
                    and p.get("model", self.client.model) == self.client.model
                    and _same_inputs(p.get("input"), expected)
                ),
                None,
            )
            if match is None:
                item.intent_written = True  # the old intent still covers the next create
                not_found.append(item)
                continue
            claimed.add(str(match["id"]))
            self.pending.append(
                {
                    "line": item.line.number,
                    "event": "submitted",
                    "id": str(match["id"]),
                    "inputs": item.line.inputs,
                    "t": time.time(),
                    "recovered": True,
                }
            )
            self._echo(f"line {item.line.number}: found its interrupted create as prediction {match['id']}")
            item.resume_id = str(match["id"])
            found.append(item)
        return found, not_found

    def _compact(self) -> None:
        """One manifest record per line (the latest), sorted; drop pending entries that ended."""
        with self._cond:
            self._closing = True
            while self._critical > 0:
                self._cond.wait(0.25)
        self.summary.unfinished += sum(1 for n in self._queued if n not in self._ended)
        finished = self.manifest.latest()
        if finished:
            self.manifest.rewrite([finished[n] for n in sorted(finished)])
        keep = []
        for number, entry in sorted(self.pending.latest().items()):
            record = finished.get(number)
            if record is not None and float(record.get("t", 0)) >= float(entry.get("t", 0)):
                continue
            keep.append(entry)
        self.pending.rewrite(keep)


def run_batch(
    client: FluxClient,
    inputs_path: str | Path,
    out_dir: str | Path,
    max_in_flight: int = 10,
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> BatchSummary:
    """Run ``inputs_path`` into ``out_dir`` (see :class:`BatchRunner`)."""
    return BatchRunner(client, inputs_path, out_dir, max_in_flight=max_in_flight, stop=stop, **kwargs).run()
