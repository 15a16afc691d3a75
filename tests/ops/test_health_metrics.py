"""`svc run --health-port`: /healthz, /readyz through a broker outage, /metrics that move."""

from __future__ import annotations

import re
import time

import httpx
import pytest
from svc_process import SvcProcess

from svcbus import connect_blocking
from svcbus.errors import SvcbusError

pytestmark = pytest.mark.redis


def _poll(url: str, status: int, timeout: float = 15.0) -> httpx.Response:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(url, timeout=2)
            if last.status_code == status:
                return last
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.1)
    raise AssertionError(f"{url} never answered {status}; last: {last!r}")


def _port(svc: SvcProcess) -> int:
    return int(svc.wait_for(r"health on http://127\.0\.0\.1:(\d+)/healthz").group(1))


def test_readiness_follows_a_redis_outage(redis_server):
    with SvcProcess(
        "run", "ops.ops_service", "--layer", redis_server.url, "--health-port", "0"
    ) as svc:
        base = f"http://127.0.0.1:{_port(svc)}"
        svc.wait_for("consuming opstest.work")
        assert _poll(f"{base}/readyz", 200).text == "ready\n"
        assert httpx.get(f"{base}/healthz").text == "ok\n"

        redis_server.stop()
        down = _poll(f"{base}/readyz", 503)
        assert "redis" in down.text and "unreachable" in down.text
        assert httpx.get(f"{base}/healthz").status_code == 200  # alive all along

        redis_server.start()
        _poll(f"{base}/readyz", 200)
        assert svc.terminate() == 0, svc.output


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text exposition (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        sample_name, _, rest = key.partition("{")
        found = dict(re.findall(r'(\w+)="([^"]*)"', rest))
        if sample_name == name and found == labels:
            return float(value)
    return 0.0


def test_metrics_count_processed_failed_refused_and_dead_lettered(redis_url, uniq):
    pytest.importorskip("prometheus_client")
    dead = uniq("dead")
    with SvcProcess(
        "run", "ops.ops_service", "--layer", redis_url, "--health-port", "0", "--dead-letter", dead
    ) as svc:
        metrics_url = f"http://127.0.0.1:{_port(svc)}/metrics"
        svc.wait_for("consuming opstest.work")
        before = httpx.get(metrics_url)
        assert before.status_code == 200
        assert before.headers["content-type"].startswith("text/plain")
        labels = {"service": "opstest", "channel": "opstest.work"}
        assert _sample(before.text, "svcbus_messages_processed_total", **labels) == 0

        with connect_blocking(redis_url) as bus:
            assert bus.request("opstest.work", {"text": "hi"}, timeout=5) == {"text": "HI"}
            assert bus.request("opstest.work", {"text": "ho"}, timeout=5) == {"text": "HO"}
            with pytest.raises(SvcbusError, match="asked to fail"):
                bus.request("opstest.work", {"text": "boom"}, timeout=5)
            bus.send("opstest.work", {"wrong": 1})  # refused: does not fit the contract
            letter = bus.receive(dead, timeout=5)
            assert letter.b["channel"] == "opstest.work" and '"wrong"' in letter.b["payload"]

        deadline = time.monotonic() + 10
        while True:
            text = httpx.get(metrics_url).text
            if (
                _sample(text, "svcbus_messages_refused_total", **labels) == 1
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.1)
        assert _sample(text, "svcbus_messages_processed_total", **labels) == 2
        assert _sample(text, "svcbus_messages_failed_total", **labels) == 1
        assert _sample(text, "svcbus_messages_refused_total", **labels) == 1
        assert _sample(text, "svcbus_messages_dead_lettered_total", **labels) == 1
        assert _sample(text, "svcbus_handler_duration_seconds_count", **labels) == 3
        assert _sample(text, "svcbus_handler_in_flight", **labels) == 0
        assert _sample(text, "svcbus_layer_reconnects_total", system="redis") == 0
        assert "process_cpu_seconds_total" in text
        assert svc.terminate() == 0, svc.output
