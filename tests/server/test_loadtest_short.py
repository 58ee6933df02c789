"""The short form of scripts/loadtest.py, as CI runs it: its own server on the tiny model, 100
creates from 5 keys in one burst against an in-flight limit of 4. Asserts correctness only (no
5xx, every accepted prediction ends, refusals are 429 with Retry-After), never timing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "loadtest.py"


def test_short_load_has_no_5xx_and_loses_no_accepted_prediction(tmp_path, tiny_model_dir):
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--creates",
            "100",
            "--keys",
            "5",
            "--burst",
            "20",
            "--max-in-flight",
            "4",
            "--model",
            str(tiny_model_dir),
            "--timeout",
            "240",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), result.stdout + result.stderr
    figures = json.loads(out.read_text())

    assert figures["creates_sent"] == 100
    assert figures["server_errors_5xx"] == 0
    assert figures["accepted_but_lost"] == 0
    assert figures["transport_errors"] == 0
    assert figures["other_statuses"] == {}
    assert figures["accepted"] + figures["refused_429"] == 100
    assert figures["accepted"] >= 20  # each key got at least its in-flight allowance in
    assert figures["refused_without_retry_after"] == 0
    assert figures["listed_mismatch_keys"] == 0  # a refused create made no prediction
    assert figures["outcomes"] == {"success": figures["accepted"]}
    assert result.returncode == 0, result.stdout + result.stderr
