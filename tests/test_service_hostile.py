"""The HTTP service under hostile input and overload (issue 16).

Every test here failed on the service before the hardening: chunked bodies skipped the size limit and
were read before the key was checked, malformed input gave 500s, nothing bounded the work in flight,
the API revealed server paths. Times in assertions are generous on purpose: the figures themselves are
measured by benchmarks/overload.py and benchmarks/durability.py, not asserted here.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import hypothesis
import pytest
from live_server import Server, free_port

from vistaste.serving.export import set_current
from vistaste.serving.lifecycle import Backoff, ModelLoadError, resolve_target
from vistaste.serving.settings import Settings

KEY = "test-key"


@pytest.fixture(scope="module")
def exported(served_world):
    """The session's export root (conftest.py); tests that change it work on a copy (``_copy_models``)."""
    return served_world[0]


def _settings(root: Path, tmp_path: Path, **kw) -> Settings:
    kw.setdefault("switch_delay_s", 0.0)
    return Settings(models_dir=root / "models", feedback_db=tmp_path / "fb.sqlite", api_key=KEY, reload_interval_s=0.2, **kw)


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    with Server(_settings(exported, tmp_path_factory.mktemp("fb"))) as running:
        yield running


def _raw(port: int, head: bytes, chunks=(), read_timeout: float = 30) -> tuple[int, dict, bytes, int]:
    """Send a raw HTTP/1.1 request (head, then chunks as they go); return (status, headers, body, bytes sent)
    as soon as the server answers, even while the client is still sending."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    sent = 0
    try:
        sock.sendall(head)
        sock.setblocking(False)
        received = b""
        for chunk in chunks:
            try:
                received += sock.recv(65536)
            except BlockingIOError:
                pass
            if b"\r\n\r\n" in received:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.setblocking(True)
        sock.settimeout(read_timeout)
        while b"\r\n\r\n" not in received:
            data = sock.recv(65536)
            if not data:
                break
            received += data
        head_bytes, _, body = received.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        while len(body) < int(headers.get("content-length", 0)):
            data = sock.recv(65536)
            if not data:
                break
            body += data
        return int(lines[0].split()[1]), headers, body, sent
    finally:
        sock.close()


def _chunked(total: int, size: int = 65536):
    sent = 0
    while sent < total:
        piece = b" " * min(size, total - sent)
        sent += len(piece)
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    yield b"0\r\n\r\n"


# ------------------------------------------------------------------------------- 1. body limit, auth first
def test_chunked_body_over_the_limit_is_refused_while_it_streams(server):
    head = (b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            b"X-API-Key: " + KEY.encode() + b"\r\n\r\n")
    status, headers, body, sent = _raw(server.port, head, _chunked(20_000_000))
    assert status == 413 and json.loads(body)["type"] == "too_large" and headers.get("connection") == "close"
    assert sent < 10_000_000  # refused long before the 20 MB were sent


def test_the_key_is_checked_before_any_body_byte_is_read(server):
    # Headers and one chunk of a body that never ends: the 401 must come without waiting for the rest.
    head = b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, headers, body, _ = _raw(server.port, head + b"4\r\n{\"ev\r\n", (), read_timeout=20)
    assert status == 401 and json.loads(body)["detail"] == "missing or wrong X-API-Key"
    # A declared length over the limit, without a key: still 401 (no hint about sizes to strangers).
    status, _, body, _ = _raw(server.port, b"POST /events HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n", (), read_timeout=20)
    assert status == 401


def test_bad_content_length_is_a_400_not_a_500(server):
    head = b"POST /recommendations HTTP/1.1\r\nHost: x\r\nContent-Length: 12abc\r\n\r\n"
    status, _, body, _ = _raw(server.port, head, (), read_timeout=20)
    assert status in (400, 422) or status < 500  # uvicorn's own parser may answer before the app
    assert status < 500


# ------------------------------------------------------------------------------- 2. no 500s from malformed input
@pytest.mark.parametrize("key", [b"\xc3\xa9t\xc3\xa9", b"\xff\xfe", "clé".encode("latin-1")])
def test_a_non_ascii_api_key_is_a_401(server, key):
    with server.client() as client:
        response = client.post("/events", json={"events": [{"user_id": "u", "item_id": "i0000001", "event": "click"}]},
                               headers={"X-API-Key": key})
    assert response.status_code == 401 and response.json()["type"] == "unauthorized"


HOSTILE_BODIES = [
    ("/events", '{"events": [{"user_id": "u", "item_id": "i0000001", "event": "click", "position": 9223372036854775808}]}'),
    ("/events", '{"events": [{"user_id": "u", "item_id": "i0000001", "event": "click", "position": 99999999999999999999999}]}'),
    ("/events", '{"events": [{"user_id": "\\ud800", "item_id": "i0000001", "event": "click"}]}'),
    ("/events", '{"events": [{"user_id": "u", "item_id": "i0000001", "event": "click", "request_id": "\\udfff"}]}'),
    ("/events", '{"events": [{"user_id": "u", "item_id": "i0000001", "event": "click", "position": NaN}]}'),
    ("/events", '{"events": [{"user_id": "u", "item_id": "i0000001", "event": "click", "timestamp": "0001-01-01T00:00:00"}]}'),
    ("/events", '{"events": [{"user_id": "u", "item_id": "i0000001", "event": "click", "position": true}]}'),
    ("/events", '{"events": [{"user_id": "u", "item_id": "i0000001", "event": Infinity}]}'),
    ("/recommendations", '{"user_id": "\\ud800", "k": 3}'),
    ("/recommendations", '{"history": ["i0000001", "\\ud800"], "k": 3}'),
    ("/recommendations", '{"history": [NaN], "k": 3}'),
    ("/recommendations", '{"k": NaN}'),
    ("/recommendations", '{"k": Infinity}'),
    ("/recommendations", '{"k": -Infinity, "trade_off": NaN}'),
    ("/recommendations", '{"trade_off": Infinity}'),
    ("/recommendations", '{"k": true}'),
    ("/recommendations", '{"k": 1e2}'),
    ("/recommendations", '{"k": 5.0}'),
    ("/recommendations", '{"k": "5"}'),
    ("/recommendations", '{"k": 3, "trade_off": false}'),
    ("/recommendations", '{"\\ud800": 1, "k": "x"}'),
    ("/recommendations", '[' * 100_000),
    # NUL: PostgreSQL text cannot hold it, so every store refuses it at the door (a 422, not a 500 in the store).
    ("/events", '{"events": [{"user_id": "a\\u0000b", "item_id": "i0000001", "event": "click"}]}'),
    ("/recommendations", '{"history": ["i0000001\\u0000"], "k": 3}'),
]


@pytest.mark.parametrize("path, text", HOSTILE_BODIES, ids=[f"{p}:{t[:60]}" for p, t in HOSTILE_BODIES])
def test_hostile_bodies_get_a_json_safe_4xx(server, path, text):
    with server.client() as client:
        response = client.post(path, content=text.encode("utf-8", "surrogatepass"),
                               headers={"X-API-Key": KEY, "Content-Type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    body = json.loads(response.content.decode("utf-8"), parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert isinstance(body["detail"], str) and body["type"]
    assert "Infinity" not in response.text and "NaN" not in response.text


def test_non_utf8_body_and_odd_query_values_are_4xx(server):
    with server.client() as client:
        not_utf8 = client.post("/recommendations", content=b'{"user_id": "\xff\xfe"}', headers={"Content-Type": "application/json"})
        assert not_utf8.status_code == 400 and not_utf8.json()["type"] == "bad_request"
        for params in ({"k": "true"}, {"k": "1e2"}, {"k": "0"}, {"trade_off": "nan"}, {"trade_off": "inf"}, {"method": "\x00"}):
            response = client.get("/recommendations/u000001", params=params)
            assert response.status_code == 422 and response.json()["type"] == "validation", params
        assert client.get("/recommendations/" + "%ED%A0%80").status_code == 200  # undecodable bytes arrive replaced, not as surrogates


def test_strict_positions_up_to_the_sqlite_limit_are_stored(server):
    event = {"user_id": "strict-user", "item_id": "i0000001", "event": "impression", "position": 2**63 - 1}
    with server.client() as client:
        assert client.post("/events", json={"events": [event]}, headers={"X-API-Key": KEY}).json() == {"stored": 1}


# ------------------------------------------------------------------------------- 5. no server paths
def test_the_api_returns_dataset_relative_image_paths_never_server_paths(exported, server):
    with server.client() as client:
        body = client.get("/recommendations/u000001", params={"k": 10}).json()
        anonymous = client.post("/recommendations", json={"history": ["i0000001"], "k": 5}).json()
    for item in body["items"] + anonymous["items"]:
        assert item["image_path"] is None or not (item["image_path"].startswith("/") or ".." in item["image_path"].split("/"))
    text = json.dumps([body, anonymous])
    assert str(exported) not in text and str(Path(exported).resolve()) not in text


def test_public_image_path_confines_to_the_dataset():
    from vistaste.serving.service import public_image_path

    assert public_image_path("images/a.png", None) == "images/a.png"
    assert public_image_path("/data/world/images/a.png", "/data/world") == "images/a.png"
    assert public_image_path("/etc/passwd", "/data/world") is None
    assert public_image_path("/data/world/images/a.png", None) is None
    assert public_image_path("../../etc/passwd", "/data/world") is None
    assert public_image_path(None, "/data/world") is None


# ------------------------------------------------------------------------------- 6. OpenAPI agrees
def test_openapi_documents_every_error_status_with_the_error_model(server):
    with server.client() as client:
        spec = client.get("/openapi.json").json()
        metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert list(spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    for path, method, statuses in (("/events", "post", ("400", "401", "413", "422", "429", "503")),
                                   ("/recommendations", "post", ("400", "413", "422", "429", "503")),
                                   ("/recommendations/{user_id}", "get", ("413", "422", "429", "503"))):
        responses = spec["paths"][path][method]["responses"]
        for status in statuses:
            assert responses[status]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorBody"}, (path, status)
    assert "Retry-After" in spec["paths"]["/events"]["post"]["responses"]["503"]["headers"]
    assert spec["paths"]["/events"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "/readyz" in spec["paths"] and "/healthz" in spec["paths"]


# ------------------------------------------------------------------------------- 3. overload
def _concurrently(n: int, function):
    results = [None] * n

    def run(i):
        results[i] = function(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_beyond_the_queue_requests_get_503_with_retry_after_and_probes_still_answer(exported, tmp_path):
    with Server(_settings(exported, tmp_path, max_concurrency=1, max_queue=1, request_deadline_s=60)) as running:
        calls = running.slow_down(1.0)
        with running.client() as warm:
            warm.get("/healthz")
        threads, results = _concurrently(6, lambda i: httpx.get(f"{running.base}/recommendations/u000001", params={"k": 5}, timeout=60))
        time.sleep(0.3)
        with running.client() as client:
            started = time.perf_counter()
            health, ready = client.get("/healthz"), client.get("/readyz")
            probe_seconds = time.perf_counter() - started
        for t in threads:
            t.join()
    statuses = sorted(r.status_code for r in results)
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2 and statuses.count(503) >= 1, statuses
    refused = next(r for r in results if r.status_code == 503)
    assert refused.json()["type"] == "overloaded" and int(refused.headers["retry-after"]) >= 1
    assert health.status_code == 200 and ready.status_code == 200 and ready.json()["ready"] is True
    assert probe_seconds < 0.9  # answered while a 1 s slate is running, not after it
    assert len(calls) == statuses.count(200)  # refused requests were never processed


def test_a_request_still_queued_at_its_deadline_gets_503(exported, tmp_path):
    with Server(_settings(exported, tmp_path, max_concurrency=1, max_queue=10, request_deadline_s=0.5)) as running:
        calls = running.slow_down(2.0)
        threads, results = _concurrently(3, lambda i: httpx.get(f"{running.base}/recommendations/u000001", params={"k": 5}, timeout=60))
        for t in threads:
            t.join()
    statuses = sorted(r.status_code for r in results)
    assert statuses == [200, 503, 503], statuses
    assert {r.json()["type"] for r in results if r.status_code == 503} == {"deadline"} and len(calls) == 1


def test_a_request_whose_client_left_is_not_processed(exported, tmp_path):
    with Server(_settings(exported, tmp_path, max_concurrency=1, max_queue=10, request_deadline_s=60)) as running:
        calls = running.slow_down(1.5)
        first = threading.Thread(target=lambda: httpx.get(f"{running.base}/recommendations/u000001", params={"k": 5}, timeout=60))
        first.start()
        time.sleep(0.3)
        with pytest.raises(httpx.TimeoutException):  # the client gives up while its request waits for the slot
            httpx.get(f"{running.base}/recommendations/u000002", params={"k": 5}, timeout=0.3)
        first.join()
        time.sleep(0.5)
        with running.client() as client:
            metrics = client.get("/metrics").text
    assert len(calls) == 1
    assert 'vistaste_refused_total{reason="client_gone"} 1.0' in metrics


def test_per_key_rate_limit_answers_429_with_retry_after(exported, tmp_path):
    with Server(_settings(exported, tmp_path, rate_limit_per_s=0.5, rate_limit_burst=2)) as running, running.client() as client:
        statuses = [client.get("/recommendations/u000001", params={"k": 3}, headers={"X-API-Key": "a"}).status_code for _ in range(3)]
        limited = client.get("/recommendations/u000001", params={"k": 3}, headers={"X-API-Key": "a"})
        other_key = client.get("/recommendations/u000001", params={"k": 3}, headers={"X-API-Key": "b"})
        health = client.get("/healthz")
    assert statuses == [200, 200, 429] and limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert limited.json()["type"] == "rate_limited" and other_key.status_code == 200 and health.status_code == 200


def test_optional_read_authentication(exported, tmp_path):
    with Server(_settings(exported, tmp_path, read_api_key="reader")) as running, running.client() as client:
        assert client.get("/recommendations/u000001", params={"k": 3}).status_code == 401
        assert client.get("/recommendations/u000001", params={"k": 3}, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/recommendations/u000001", params={"k": 3}, headers={"X-API-Key": "reader"}).status_code == 200
        assert client.post("/recommendations", json={"k": 3}, headers={"X-API-Key": KEY}).status_code == 200  # the write key reads too
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.post("/events", json={"events": [{"user_id": "u", "item_id": "i0000001", "event": "click"}]},
                           headers={"X-API-Key": "reader"}).status_code == 401  # the read key does not write
        spec = client.get("/openapi.json").json()
    assert spec["paths"]["/recommendations/{user_id}"]["get"]["security"] == [{"APIKeyHeader": []}]


def test_admission_hands_slots_over_in_order_and_forgets_abandoned_waiters():
    import asyncio

    from vistaste.serving.limits import Admission

    async def scenario():
        admission = Admission(concurrency=1, queue=2)
        never = asyncio.Event()
        assert await admission.enter(1, never.wait) == "ok"
        second = asyncio.ensure_future(admission.enter(5, never.wait))
        left = asyncio.Event()
        third = asyncio.ensure_future(admission.enter(5, left.wait))
        await asyncio.sleep(0.01)
        assert await admission.enter(5, never.wait) == "full" and admission.waiting == 2
        left.set()  # the third's client disconnects while waiting
        assert await third == "gone" and admission.waiting == 1
        admission.leave()
        assert await second == "ok" and admission.running == 1 and admission.waiting == 0
        assert await admission.enter(0.05, never.wait) == "timeout"
        admission.leave()
        assert admission.running == 0

    asyncio.run(scenario())


# ------------------------------------------------------------------------------- 4. model lifecycle
def _copy_models(exported: Path, tmp_path: Path) -> Path:
    models = tmp_path / "models"
    shutil.copytree(exported / "models" / "1", models / "1")
    set_current(models, "1")
    return models


def test_current_must_name_a_version_inside_the_export_root(exported, tmp_path):
    models = _copy_models(exported, tmp_path)
    shutil.copytree(models / "1", tmp_path / "elsewhere")
    for name in ("../elsewhere", str(tmp_path / "elsewhere"), "."):
        (models / "current").write_text(name + "\n")
        with pytest.raises(ModelLoadError, match="not a version directory inside the export root"):
            resolve_target(models)
    (models / "current").write_text("7\n")
    with pytest.raises(ModelLoadError, match="names version '7', but .* is missing"):
        resolve_target(models)
    (models / "current").unlink()
    with pytest.raises(FileNotFoundError, match="no 'current' pointer"):
        resolve_target(models)


def test_backoff_doubles_up_to_the_cap_and_resets_for_a_new_target():
    backoff = Backoff(base_s=2, max_s=30)
    assert [backoff.failed("v3", 0) for _ in range(6)] == [4, 8, 16, 30, 30, 30]
    assert not backoff.due("v3", 10) and backoff.due("v3", 31) and backoff.due("v4", 10)
    assert backoff.failed("v4", 0) == 4


def test_a_failed_hot_reload_backs_off_and_keeps_serving(exported, tmp_path):
    models = _copy_models(exported, tmp_path)
    shutil.copytree(models / "1", models / "2")
    (models / "2" / "saved_model" / "saved_model.pb").write_bytes(b"not a model")
    settings = Settings(models_dir=models, feedback_db=tmp_path / "fb.sqlite", api_key=KEY, reload_interval_s=0.1, reload_backoff_max_s=60,
                        switch_delay_s=0.0)
    with Server(settings) as running, running.client() as client:
        (models / "current").write_text("2\n")
        time.sleep(2.5)  # without backoff: ~25 full load attempts; with it: 0.2 + 0.4 + 0.8 + ... -> at most 4
        failures = running.state.metrics.reload_failures._value.get()
        assert 1 <= failures <= 4, failures
        assert client.get("/recommendations/u000001", params={"k": 3}).json()["version"] == "1"
        ready = client.get("/readyz").json()
        assert ready == {"ready": True, "version": "1", "current": "2", "detail": None}


def test_workers_switch_to_a_new_version_together(exported, tmp_path):
    """Two worker processes' apps (one polling 20x slower) on one export root: once either has answered from
    the new version, neither answers from the old one, and none does before the pointer's switch time."""
    from vistaste.serving.lifecycle import switch_time

    models = _copy_models(exported, tmp_path)
    shutil.copytree(models / "1", models / "2")
    # The promise holds when each worker has loaded the version by the switch time: the slow one within
    # delay - 2 s of polling. A load takes ~2 s; both load at once in this one process, on a machine that may
    # be busy (at 8 s and a 3 s poll the slow one once missed it with 3 test workers on 2 cores): 12 s.
    delay = 12.0

    def settings(interval):
        return Settings(models_dir=models, feedback_db=tmp_path / f"fb{interval}.sqlite", api_key=KEY, reload_interval_s=interval,
                        switch_delay_s=delay)

    with Server(settings(0.1)) as fast, Server(settings(2.0)) as slow, fast.client() as a, slow.client() as b:
        set_current(models, "2")
        switch_at = switch_time(models, delay)
        answers, deadline = [], time.time() + 60
        while time.time() < deadline and [v for _, v, _ in answers[-6:]] != ["2"] * 6:
            for name, client in (("fast", a), ("slow", b)):
                answers.append((name, client.get("/recommendations/u000001", params={"k": 3}).json()["version"], time.time()))
            time.sleep(0.05)
    versions = [v for _, v, _ in answers]
    assert versions[0] == "1" and versions[-1] == "2"
    first_new = versions.index("2")
    assert set(versions[first_new:]) == {"2"}, answers[first_new - 2:first_new + 6]
    assert answers[first_new][2] >= switch_at - 0.05  # not before the switch time


@pytest.mark.e2e
@pytest.mark.parametrize("workers", [1, 2])
def test_start_up_with_a_corrupt_version_exits_with_one_line(exported, tmp_path, workers):
    models = _copy_models(exported, tmp_path)
    (models / "1" / "items.npz").write_bytes(b"garbage")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "VISTASTE_API_KEY": KEY, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    command = [sys.executable, "-m", "vistaste.apps.cli", "serve", "--models", str(models), "--feedback-db", str(tmp_path / "fb.sqlite"),
               "--port", str(free_port()), "--workers", str(workers)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 3, (result.returncode, result.stderr)  # uvicorn's STARTUP_FAILURE, with one worker or several
    if workers > 1:
        assert "workers failed to start (the reason is above); not serving" in result.stdout, result.stdout
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    reason = [line for line in result.stderr.splitlines() if "refusing to start" in line]
    # One line per worker that got as far as loading it (with --workers the supervisor then stops the rest).
    assert 1 <= len(reason) <= workers and len(set(reason)) == 1 and str(models / "1") in reason[0], result.stderr


def test_metrics_aggregate_across_processes_in_multiprocess_mode(tmp_path):
    directory = tmp_path / "prom"
    directory.mkdir()
    script = ("from vistaste.serving.metrics import Metrics\n"
              "m = Metrics(); m.requests.labels('/healthz', '200').inc(); m.serving('3')\n"
              "import sys; sys.stdout.write(m.exposition().decode() if len(sys.argv) > 1 else '')\n")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "TF_USE_LEGACY_KERAS": "1"}
    for _ in range(2):  # two "workers"
        subprocess.run([sys.executable, "-c", script], check=True, env=env)
    text = subprocess.run([sys.executable, "-c", script, "show"], check=True, env=env, capture_output=True, text=True).stdout
    assert 'vistaste_requests_total{endpoint="/healthz",status="200"} 3.0' in text


# ------------------------------------------------------------------------------- slow: overload, durability
REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_overload_at_three_times_the_sustainable_rate(exported, tmp_path):
    """benchmarks/overload.py at small scale. The figures (healthz p99, recovery time) are measured there;
    here only what no slow machine excuses: every request answered 200 or 503, none past its deadline
    plus a second, probes never queued behind requests, and the service recovers."""
    out = tmp_path / "overload.json"
    subprocess.run([sys.executable, "benchmarks/overload.py", "--models", str(exported / "models"), "--seconds", "15", "--out", str(out)],
                   check=True, timeout=900, cwd=REPO, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    figures = json.loads(out.read_text())
    assert set(figures["statuses"]) <= {"200", "503"} and figures["timeouts_or_errors"] == 0 and figures["answered_200_or_503"] == 1.0
    assert "503" in figures["statuses"]  # 3x the sustainable rate was really offered
    assert figures["healthz_failed"] == 0 and figures["healthz_p99_ms"] < 1000 * figures["deadline_s"]
    assert figures["recovery_s"] < 30


@pytest.mark.slow
def test_kill_9_during_concurrent_writes_loses_no_acknowledged_event(tmp_path):
    out = tmp_path / "durability.json"
    subprocess.run([sys.executable, "benchmarks/durability.py", "--runs", "2", "--seconds", "2", "--out", str(out)],
                   check=True, timeout=900, cwd=REPO, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    figures = json.loads(out.read_text())
    assert figures["acknowledged"] > 0 and figures["lost"] == 0


@pytest.mark.slow
def test_kill_9_of_service_and_postgres_loses_no_acknowledged_event(tmp_path):
    """The same with the PostgreSQL store (several replicas' store): the database server is SIGKILLed with the
    service and restarted, recovering from its WAL; every acknowledged event must be there."""
    for module in ("pgserver", "psycopg", "psycopg_pool"):
        pytest.importorskip(module, reason=f"the PostgreSQL store needs {module} (pip install -e '.[test]')")
    out = tmp_path / "durability_postgres.json"
    subprocess.run([sys.executable, "benchmarks/durability.py", "--store", "postgres", "--runs", "2", "--seconds", "2", "--out", str(out)],
                   check=True, timeout=900, cwd=REPO, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"})
    figures = json.loads(out.read_text())
    assert figures["acknowledged"] > 0 and figures["lost"] == 0 and figures["runs"] == 2
    assert all(run["db_processes_killed"] > 0 for run in figures["per_run"])  # the database really died each time


# ------------------------------------------------------------------------------- 7. schemathesis
# The live server's own OpenAPI document drives generation: schema-valid cases must be accepted and
# answered as documented, schema-invalid ones rejected with a documented 4xx, never a 5xx. Driven
# through hypothesis directly (schemathesis' pytest plugin does not run under this pytest version).
schemathesis = pytest.importorskip("schemathesis")
OPERATIONS = ["GET /recommendations/{user_id}", "POST /recommendations", "POST /events", "GET /healthz", "GET /readyz", "GET /metrics"]


@pytest.fixture(scope="module")
def api_schema(server):
    return schemathesis.openapi.from_url(f"{server.base}/openapi.json")


def _all_checks():
    """Every built-in check (`--checks all`), positive_data_acceptance replaced by the variant below."""
    from schemathesis.checks import CHECKS, is_check_class, load_all_checks

    load_all_checks()
    return [check for check in CHECKS.get_all() if not is_check_class(check) and check.__name__ != "positive_data_acceptance"]


def _value_at(body, loc):
    for part in loc:
        try:
            body = body[part]
        except (KeyError, IndexError, TypeError):
            return None
    return body


def domain_rejection_is_not_a_schema_violation(ctx, response, case):
    """positive_data_acceptance, except for the rejections JSON Schema cannot express: item ids not in
    the catalog ('unknown_items'), k beyond the exported index ('limit'), timestamps outside what the
    store can hold, lone surrogates, and integral floats such as 100.0 (or 1e2) where an integer literal
    is required (JSON Schema counts them as integers; this API is strict on purpose, issue 16)."""
    from schemathesis.checks import CHECKS

    if response.status_code == 422:
        body = response.json()
        if body.get("type") in ("unknown_items", "limit"):
            return None
        if body.get("type") == "validation" and all(
                e["type"] in ("timestamp_range", "lone_surrogate")
                or (e["type"] == "int_type" and e["loc"][:1] == ["body"] and isinstance(_value_at(case.body, e["loc"][1:]), float))
                for e in body["errors"]):
            return None
    return CHECKS.get_one("positive_data_acceptance")(ctx, response, case)


@pytest.mark.parametrize("label, mode", [(label, "positive") for label in OPERATIONS] + [(label, "negative") for label in OPERATIONS[:3]])
def test_schemathesis_finds_no_failure(api_schema, server, label, mode):
    from schemathesis.generation import GenerationMode

    operation = next(result.ok() for result in api_schema.get_all_operations() if result.ok().label == label)
    try:
        strategy = operation.as_strategy(generation_mode=GenerationMode(mode))
    except Exception as exc:  # e.g. nothing to negate in an operation without parameters
        pytest.skip(f"no {mode} cases for {label}: {exc}")
    checks = _all_checks()

    @hypothesis.settings(max_examples=25, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(case=strategy)
    def run(case):
        case.call_and_validate(base_url=server.base, headers={"X-API-Key": KEY}, checks=checks,
                               additional_checks=[domain_rejection_is_not_a_schema_violation])

    run()
