"""`--log-format json`: svcbus's and uvicorn's lines as one JSON object per line."""

from __future__ import annotations

import json

import pytest
from svc_process import SvcProcess
from test_edge_operations import EDGE_TESTS, _free_port


def _json_lines(output: str) -> list[dict]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_svc_run_logs_json():
    with SvcProcess("run", "ops.ops_service", "--log-format", "json") as svc:
        svc.wait_for("consuming opstest.work")
        assert svc.terminate() == 0
        records = _json_lines(svc.output)
    stopped = [r for r in records if "stopped" in r["message"]]
    assert stopped and stopped[0]["logger"] == "svcbus.runtime" and stopped[0]["level"] == "info"
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in records)


def test_svc_edge_routes_uvicorn_lines_through_the_same_format():
    pytest.importorskip("uvicorn")
    port = _free_port()
    with SvcProcess(
        "edge",
        "edge_service:cli_app",
        "--bind",
        f"127.0.0.1:{port}",
        "--log-format",
        "json",
        cwd=EDGE_TESTS,
    ) as svc:
        svc.wait_for("Application startup complete")
        assert svc.terminate() == 0
        output = svc.output
    uvicorn_lines = [line for line in output.splitlines() if "Application startup complete" in line]
    assert uvicorn_lines and all(line.startswith("{") for line in uvicorn_lines), output
    assert any(r["logger"].startswith("uvicorn") for r in _json_lines(output))
