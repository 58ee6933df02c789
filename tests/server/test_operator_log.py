"""What an operator reads in the server's log: a start-up summary, a line per prediction's
create, start and end (logger ``fluxserve.predictions``), and no library chatter."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from pipelines.encoding import read_parameters
from tests.server.helpers import STATIC_KEYS, LiveServer

KEY = STATIC_KEYS[0]  # named config-1 by the key ring


def prediction_lines(caplog: pytest.LogCaptureFixture, pid: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "fluxserve.predictions" and r.levelno == logging.INFO and pid in r.getMessage()
    ]


def test_a_prediction_logs_its_create_start_and_end_with_the_key_name(live_server, caplog):
    caplog.set_level(logging.INFO, logger="fluxserve.predictions")
    pid = live_server.create(KEY, {"prompt": "a lighthouse", "seed": 5})
    live_server.wait_for_end(KEY, pid)
    created, started, ended = prediction_lines(caplog, pid)
    fields = "key=config-1 model=flux-dev size=512x512 steps=2"
    assert created == f"prediction {pid} created {fields} outputs=1"
    assert re.fullmatch(rf"prediction {pid} started {fields} worker=0 queued_s=\d+\.\d\d", started)
    assert re.fullmatch(rf"prediction {pid} ended {fields} outcome=success seconds=\d+\.\d\d", ended)


def test_the_log_never_holds_the_key_itself(live_server, caplog):
    caplog.set_level(logging.INFO, logger="fluxserve.predictions")
    key = live_server.new_key()
    pid = live_server.create(key)
    live_server.wait_for_end(key, pid)
    lines = prediction_lines(caplog, pid)
    assert len(lines) == 3 and all(re.search(r" key=test-\d+ ", line) for line in lines)
    assert not any(key in line for line in lines)


def test_a_queued_prediction_cancelled_logs_its_end(queued_server, caplog):
    caplog.set_level(logging.INFO, logger="fluxserve.predictions")
    pid = queued_server.create(KEY)
    r = queued_server.http.post(f"/v1/prediction/{pid}/cancel", headers=queued_server.headers(KEY))
    assert r.status_code == 200, r.text
    created, ended = prediction_lines(caplog, pid)
    assert " created key=config-1 " in created
    assert ended.endswith("outcome=cancelled seconds=0.00")


def test_a_failed_prediction_logs_its_error(make_server, caplog):
    caplog.set_level(logging.INFO, logger="fluxserve.predictions")
    with make_server(outputs={"backend": "local"}) as server:
        pid = server.create(KEY, {"image": "http://127.0.0.1:9/none.png"})
        assert server.wait_for_end(KEY, pid)["status"] == "error"
    ended = prediction_lines(caplog, pid)[-1]
    assert " outcome=error seconds=" in ended and " error='Invalid input image" in ended


def test_a_live_server_logs_a_summary_writes_parameters_and_no_library_chatter(
    tmp_path: Path, tiny_model_dir: Path
):
    with LiveServer(tmp_path / "data", tiny_model_dir) as server:
        server.start()
        body = server.run(KEY, {"prompt": "a red fox", "seed": 42, "output_format": "png"})
        image = server.http.get(server.output_path(body["output"])).content
        server.stop()
        log = server.log_text()
    text, document = read_parameters(image)
    assert text == (
        "a red fox\nSteps: 2, Sampler: Euler, CFG scale: 1, Guidance: 3.5, Seed: 42, Size: 512x512, "
        "Model: flux-dev"
    )
    assert json.loads(document or "")["inputs"]["seed"] == 42
    for item in ("API", "playground", "docs", "data folder", "store", "outputs", "keys", "model", "workers"):
        assert re.search(rf"INFO   {item} +\S", log), item
    assert f"docs         {server.url}/docs" in log
    assert "keys         2 in the config, 0 stored" in log
    assert "worker 0: model flux-dev, weights " in log and "(tiny), device cpu, dtype float32" in log
    assert "ready: 1 worker(s) loaded" in log
    # The worker warms up before it says it is ready: health is STARTING until then.
    assert log.index("worker 0 loaded the model; warming up") < log.index("worker 0 warmed up in ")
    assert log.index("worker 0 warmed up in ") < log.index("ready: 1 worker(s) loaded")
    assert re.search(r"fluxserve\.predictions INFO prediction \S+ ended key=config-1 .* outcome=success", log)
    for chatter in ("[transformers]", "it/s]", "FutureWarning", "UserWarning", "torchvision"):
        assert chatter not in log, chatter


def test_embed_parameters_off_writes_files_without_metadata(make_server):
    with make_server(outputs={"embed_parameters": False}) as server:
        body = server.run(KEY, {"output_format": "jpg"})
        image = server.http.get(server.path(body["output"])).content
    assert read_parameters(image) == (None, None)
