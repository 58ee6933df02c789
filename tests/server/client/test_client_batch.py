"""`fluxserve client batch` against a live `fluxserve serve` (tiny model on CPU): images and
manifest, bad lines, 429 back-off, and resuming after a kill without creating anything twice.

The server here allows 2 predictions in flight per key, so a batch with more workers meets
429s (Retry-After: 5) and must wait them out. Each test uses its own key, so the key's
/v1/executions total counts exactly the predictions that test created.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.client import FluxClient
from server.client.batch import (
    PENDING,
    BatchLocked,
    BatchRunner,
    _folder_lock,
    _Journal,
    prompt_slug,
    read_inputs,
)
from tests.server.client.test_client import LiveServer, executions_total, start_server, stop_server

KEYS = ["batch-a", "batch-b", "batch-c", "batch-d"]
SMALL = {"megapixels": 0.25, "num_inference_steps": 2}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path):
    live = start_server(
        tmp_path_factory.mktemp("batch-server"),
        tiny_model_dir,
        KEYS,
        {"FLUXSERVE_LIMITS__MAX_IN_FLIGHT": "2"},
    )
    yield live
    stop_server(live)


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def batch_args(server: LiveServer, inputs: Path, out: Path, key: str, in_flight: int) -> list[str]:
    return [
        "client",
        "batch",
        str(inputs),
        "--out",
        str(out),
        "--url",
        server.url,
        "--key",
        key,
        "--max-in-flight",
        str(in_flight),
    ]


def batch_process(server: LiveServer, inputs: Path, out: Path, key: str, in_flight: int) -> subprocess.Popen:
    exe = Path(sys.executable).with_name("fluxserve")
    return subprocess.Popen(
        [str(exe), *batch_args(server, inputs, out, key, in_flight)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_first_image(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if list(out.glob("*.webp")):
            return
        if proc.poll() is not None:
            pytest.fail(f"the batch ended before any image:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("no image within the timeout")


def test_batch_writes_images_and_manifest_and_skips_done_lines(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from server.cli import main

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "# five prompts and a broken line\n"
        + json.dumps({"prompt": "one", **SMALL, "seed": 11})
        + "\n"
        + "\n"
        + json.dumps({"prompt": "two", **SMALL})
        + "\n"
        + '{"prompt": "broken", \n'
        + json.dumps({"prompt": "three", **SMALL, "output_format": "png"})
        + "\n"
        + json.dumps({"prompt": "four", **SMALL})
        + "\n"
        + json.dumps({"prompt": "five", **SMALL})
        + "\n"
    )
    out = tmp_path / "out"
    rc = main(batch_args(server, inputs, out, "batch-a", in_flight=4))
    captured = capsys.readouterr()
    assert rc == 1, captured.err  # the broken line counts as failed
    assert "done 5, failed 1, skipped 0" in captured.out
    assert "line 5:" in captured.err and "invalid JSON" in captured.err
    assert "429" in captured.err  # 4 workers against a limit of 2: backed off, did not fail

    records = manifest(out)
    assert [r["line"] for r in records] == [2, 4, 5, 6, 7, 8]
    bad = records[2]
    assert bad["status"] == "invalid" and bad["inputs"] is None and "invalid JSON" in bad["error"]
    good = [r for r in records if r["line"] != 5]
    assert all(r["status"] == "success" and r["error"] is None for r in good)
    assert len({r["prediction_id"] for r in good}) == 5
    assert records[0]["seed"] == 11 and all(isinstance(r["seed"], int) for r in good)
    assert all(r["predict_time"] > 0 for r in good)
    assert records[0]["inputs"] == {"prompt": "one", **SMALL, "seed": 11}
    names = sorted(p.name for p in out.iterdir() if p.suffix in (".webp", ".png"))
    assert names == [
        "000002-one-0.webp",
        "000004-two-0.webp",
        "000006-three-0.png",
        "000007-four-0.webp",
        "000008-five-0.webp",
    ]
    assert [r["files"] for r in good] == [[n] for n in names]
    assert not (out / PENDING).exists()
    assert not list(out.glob(".*.tmp"))
    assert executions_total(server, "batch-a") == 5

    # Again: the finished lines are skipped, nothing is created.
    rc = main(batch_args(server, inputs, out, "batch-a", in_flight=4))
    captured = capsys.readouterr()
    assert "done 0, failed 1, skipped 5" in captured.out
    assert executions_total(server, "batch-a") == 5
    assert [r["line"] for r in manifest(out)] == [2, 4, 5, 6, 7, 8]


@pytest.mark.slow
def test_batch_killed_mid_run_resumes_without_creating_twice(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from server.cli import main

    count = 8
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"prompt": f"line {i}", "megapixels": 0.25, "num_inference_steps": 4}) + "\n"
            for i in range(count)
        )
    )
    out = tmp_path / "out"
    proc = batch_process(server, inputs, out, "batch-b", in_flight=2)
    wait_for_first_image(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = (
        [r for r in manifest(out) if r["status"] == "success"] if (out / "manifest.jsonl").exists() else []
    )
    assert len(done_before) < count
    assert (out / PENDING).exists()  # submitted lines were journaled by id
    submitted_before = executions_total(server, "batch-b")
    assert submitted_before < count

    rc = main(batch_args(server, inputs, out, "batch-b", in_flight=2))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    records = manifest(out)
    assert [r["line"] for r in records] == list(range(1, count + 1))
    assert all(r["status"] == "success" for r in records)
    assert len({r["prediction_id"] for r in records}) == count
    assert executions_total(server, "batch-b") == count  # no line's prediction was created twice
    assert sorted(p.name for p in out.glob("*.webp")) == [
        f"{n:06d}-line-{n - 1}-0.webp" for n in range(1, count + 1)
    ]
    assert not (out / PENDING).exists()
    assert f"skipped {len(done_before)}" in captured.out
    in_flight_at_kill = submitted_before - len(done_before)
    assert in_flight_at_kill >= 1
    assert f"resumed {in_flight_at_kill} submitted earlier" in captured.out  # polled by id, not re-created


@pytest.mark.slow
def test_batch_stops_cleanly_on_sigterm_and_resumes(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from server.cli import main

    count = 5
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"prompt": f"term {i}", "megapixels": 0.25, "num_inference_steps": 4}) + "\n"
            for i in range(count)
        )
    )
    out = tmp_path / "out"
    proc = batch_process(server, inputs, out, "batch-c", in_flight=2)
    wait_for_first_image(out, proc)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the batch finished before the signal arrived")
    assert proc.returncode == 130, output
    assert "unfinished: run the same command again to resume" in output
    assert "Traceback" not in output

    rc = main(batch_args(server, inputs, out, "batch-c", in_flight=2))
    assert rc == 0, capsys.readouterr().err
    records = manifest(out)
    assert [r["line"] for r in records] == list(range(1, count + 1))
    assert all(r["status"] == "success" for r in records)
    assert executions_total(server, "batch-c") == count


def test_batch_finds_a_create_cut_off_before_its_id_was_journaled(
    server: LiveServer, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A kill between the create reaching the server and its id being written: the next run
    finds that prediction by its inputs instead of creating another."""
    from server.cli import main

    lines = [{"prompt": "cut off", **SMALL}, {"prompt": "fresh", **SMALL}]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "out"
    out.mkdir()
    (out / PENDING).write_text(
        json.dumps({"line": 1, "event": "intent", "inputs": lines[0], "t": time.time()}) + "\n"
    )
    with FluxClient(server.url, "batch-d") as client:
        orphan = client.create(lines[0])

    rc = main(batch_args(server, inputs, out, "batch-d", in_flight=2))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert f"found its interrupted create as prediction {orphan}" in captured.err
    records = manifest(out)
    assert records[0]["prediction_id"] == orphan and records[0]["status"] == "success"
    assert records[1]["status"] == "success"
    assert executions_total(server, "batch-d") == 2


# -- no server needed ---------------------------------------------------------------------------


def test_read_inputs_reports_bad_lines_with_their_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('\ufeff{"prompt": "a"}\n\n  # comment\n[1, 2]\n{oops\n{"prompt": "b"}\n')
    lines = read_inputs(path)
    assert [(line.number, line.inputs, line.error is None) for line in lines] == [
        (1, {"prompt": "a"}, True),
        (4, None, False),
        (5, None, False),
        (6, {"prompt": "b"}, True),
    ]


def test_journal_survives_a_record_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "manifest.jsonl"
    path.write_text(
        json.dumps({"line": 1, "status": "success"}) + "\n" + '{"line": 2, "sta'
    )  # killed mid-write
    journal = _Journal(path)
    journal.append({"line": 3, "status": "success"})
    assert [r["line"] for r in journal.read()] == [1, 3]
    journal.rewrite([{"line": 3}])
    assert journal.read() == [{"line": 3}] and not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_one_run_at_a_time_per_output_folder(tmp_path: Path) -> None:
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("")
    out = tmp_path / "out"
    out.mkdir()
    with FluxClient("http://127.0.0.1:9", None) as client:
        with _folder_lock(out), pytest.raises(BatchLocked):
            BatchRunner(client, inputs, out).run()
        assert str(BatchRunner(client, inputs, out).run()) == "done 0, failed 0, skipped 0"


@pytest.mark.parametrize(
    "raw",
    [
        {"prompt": "a"},
        {"prompt": "a", "image": "https://example.com/cat.png"},
        {"prompt": "a", "image": "data:image/png;base64," + "A" * 10},
        {"prompt": "a", "image": "data:image/png;base64," + "A" * 235},  # 257 characters: just over
        {"prompt": "a", "image": "data:image/png;base64," + "A" * 5000},
    ],
)
def test_the_batch_runner_echoes_inputs_as_the_server_does(raw: dict) -> None:
    # The runner matches interrupted creates to predictions by their echoed input.
    from server.api.eachlabs.render import echo_input as server_echo
    from server.client.batch import echo_input as client_echo

    assert client_echo(raw) == server_echo(raw)


def test_batch_names_files_by_number_when_asked(server: LiveServer, tmp_path: Path, capsys) -> None:
    from server.cli import main

    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(json.dumps({"prompt": "numbered", **SMALL}) + "\n")
    out = tmp_path / "out"
    rc = main([*batch_args(server, inputs, out, "batch-a", in_flight=1), "--file-names", "number"])
    assert rc == 0, capsys.readouterr().err
    assert [p.name for p in out.glob("*.webp")] == ["000001-0.webp"]
    assert manifest(out)[0]["files"] == ["000001-0.webp"]


def test_batch_reports_each_running_lines_steps(server: LiveServer, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "".join(
            json.dumps({"prompt": f"steps {i}", **SMALL, "num_inference_steps": 3}) + "\n" for i in range(2)
        )
    )
    seen: list[tuple[int, int, int]] = []
    with FluxClient(server.url, "batch-a") as client:
        summary = BatchRunner(
            client,
            inputs,
            tmp_path / "out",
            max_in_flight=2,
            echo=lambda _: None,
            on_step=lambda *s: seen.append(s),
        ).run()
    assert summary.done == 2
    assert {(line, total) for line, _, total in seen} == {(1, 3), (2, 3)}
    for line in (1, 2):
        steps = [step for n, step, _ in seen if n == line]
        assert steps == sorted(steps) and steps[-1] == 3  # counted up to the last step


@pytest.mark.parametrize(
    "prompt, slug",
    [
        ("A red fox, in the SNOW!", "a-red-fox-in-the-snow"),
        ("Crème brûlée — 4k", "creme-brulee-4k"),
        ("", "image"),
        (None, "image"),
        ("!!! ???", "image"),
        ("一只狐狸", "image"),
        ("word " * 30, "-".join(["word"] * 8)),  # cut at a word boundary within 40 characters
        ("x" * 60, "x" * 40),  # one long word: cut
    ],
)
def test_prompt_slug(prompt, slug) -> None:
    assert prompt_slug(prompt) == slug
