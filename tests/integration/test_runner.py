"""The local Functions host against real Azurite: HTTP, queue and timer triggers through an app's registrations.

A small FunctionApp defined here is dispatched by ``LocalFunctionsHost`` with the host's semantics: HTTP routes
with route and query parameters, base64 queue messages with retries and a poison queue, batch concurrency,
NCRONTAB timers. host.json is written per test with a 1 s visibilityTimeout and 0.5 s maxPollingInterval so
retries are quick.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import logging
import os
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from devtools.runner import FunctionIndexError, HostOptions, LocalFunctionsHost, parse_timespan

pytestmark = pytest.mark.integration

BATCH_SIZE = 8
NEW_BATCH_THRESHOLD = 4
HOST_JSON = {
    "version": "2.0",
    "extensions": {
        "http": {"routePrefix": "api"},
        "queues": {
            "maxPollingInterval": "00:00:00.500",
            "visibilityTimeout": "00:00:01",
            "batchSize": BATCH_SIZE,
            "newBatchThreshold": NEW_BATCH_THRESHOLD,
            "maxDequeueCount": 5,
            "messageEncoding": "base64",
        },
    },
}


class Recorder:
    """What the test functions saw, shared with the test thread."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.calls: dict[str, list[Any]] = defaultdict(list)
        self.running = 0
        self.peak = 0

    def add(self, name: str, value: Any) -> None:
        with self._cond:
            self.calls[name].append(value)
            self._cond.notify_all()

    def get(self, name: str) -> list[Any]:
        with self._cond:
            return list(self.calls[name])

    def wait_for(self, name: str, count: int, timeout: float = 15.0) -> list[Any]:
        with self._cond:
            ok = self._cond.wait_for(lambda: len(self.calls[name]) >= count, timeout)
            assert ok, f"{name}: expected {count} call(s) within {timeout} s, saw {len(self.calls[name])}"
            return list(self.calls[name])

    def enter(self) -> None:
        with self._cond:
            self.running += 1
            self.peak = max(self.peak, self.running)

    def leave(self) -> None:
        with self._cond:
            self.running -= 1


def build_app(rec: Recorder) -> func.FunctionApp:
    """The test app. A factory: FunctionApp.get_functions() works once per app object, so once per host."""
    app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)

    @app.route(route="hello/{name}", methods=["GET", "POST"])
    def hello(req: func.HttpRequest) -> func.HttpResponse:
        payload = {
            "method": req.method,
            "name": req.route_params.get("name"),
            "params": dict(req.params),
            "body": req.get_body().decode(),
            "header": req.headers.get("x-test"),
            "url": req.url,
        }
        return func.HttpResponse(json.dumps(payload), status_code=201 if req.method == "POST" else 200,
                                 headers={"X-Reply": "yes"}, mimetype="application/json")

    @app.route(route="hello/world", methods=["GET"])
    def hello_world(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse("literal route wins")

    @app.route(route="files/{*path}", methods=["GET"])
    def files(req: func.HttpRequest) -> func.HttpResponse:
        return func.HttpResponse(req.route_params.get("path", "<none>"))

    @app.route(route="text", methods=["GET"])
    def text(req: func.HttpRequest) -> str:
        return "plain words"

    @app.route(route="boom")
    def boom(req: func.HttpRequest) -> func.HttpResponse:
        raise RuntimeError("kaboom")

    @app.function_name("async_items")
    @app.route(route="items/{id:int}", methods=["GET"])
    async def items(req: func.HttpRequest) -> func.HttpResponse:
        await asyncio.sleep(0)
        rec.add("loops", asyncio.get_running_loop())
        return func.HttpResponse(f"item {req.route_params['id']}")

    @app.route(route="slow", methods=["GET"])
    def slow(req: func.HttpRequest) -> func.HttpResponse:
        rec.add("slow_started", time.monotonic())
        time.sleep(1.0)
        return func.HttpResponse("done")

    @app.queue_trigger(arg_name="msg", queue_name="%Q_OK%", connection="AzureWebJobsStorage")
    def echo(msg: func.QueueMessage) -> None:
        rec.add("echo", {"body": msg.get_body(), "dequeue_count": msg.dequeue_count, "id": msg.id,
                         "inserted": msg.insertion_time, "pop_receipt": msg.pop_receipt})

    @app.queue_trigger(arg_name="msg", queue_name="%Q_FAIL%", connection="AzureWebJobsStorage")
    def always_fail(msg: func.QueueMessage) -> None:
        rec.add("always_fail", msg.dequeue_count)
        raise RuntimeError("always fails")

    @app.queue_trigger(arg_name="msg", queue_name="%Q_FLAKY%", connection="AzureWebJobsStorage")
    def flaky(msg: func.QueueMessage) -> None:
        rec.add("flaky", msg.dequeue_count)
        if (msg.dequeue_count or 0) < 3:
            raise RuntimeError("not yet")

    @app.queue_trigger(arg_name="msg", queue_name="%Q_SLOW%", connection="AzureWebJobsStorage")
    async def slow_async(msg: func.QueueMessage) -> None:
        rec.enter()
        try:
            await asyncio.sleep(0.5)
        finally:
            rec.leave()
        rec.add("slow_async", msg.get_body())

    @app.timer_trigger(arg_name="timer", schedule="*/1 * * * * *")
    def tick(timer: func.TimerRequest) -> None:
        rec.add("tick", (time.monotonic(), timer))

    @app.timer_trigger(arg_name="timer", schedule="%YEARLY%", run_on_startup=True)
    async def yearly(timer: func.TimerRequest) -> None:
        rec.add("yearly", timer)

    return app


@pytest.fixture
def env(azurite, storage_names: dict[str, str]) -> dict[str, str]:
    base = storage_names["GUESTSYNC_CHANGE_QUEUE"]
    return {
        "AzureWebJobsStorage": azurite.connection_string,
        "Q_OK": f"{base}-ok",
        "Q_FAIL": f"{base}-fail",
        "Q_FLAKY": f"{base}-flaky",
        "Q_SLOW": f"{base}-slow",
        "YEARLY": "0 0 0 1 1 *",
        "PYTHON_THREADPOOL_THREAD_COUNT": "8",
    }


@pytest.fixture
def host_json(tmp_path: Path) -> Path:
    path = tmp_path / "host.json"
    path.write_text(json.dumps(HOST_JSON))
    return path


@pytest.fixture
def make_host(env: dict[str, str], host_json: Path) -> Iterator[Callable[..., tuple[LocalFunctionsHost, Recorder]]]:
    hosts: list[LocalFunctionsHost] = []

    def make(**start: bool) -> tuple[LocalFunctionsHost, Recorder]:
        rec = Recorder()
        host = LocalFunctionsHost(build_app(rec), env=env, host_json=host_json)
        hosts.append(host)
        host.start(**start)
        return host, rec

    yield make
    for host in hosts:
        host.stop(timeout=10)


def send(env: dict[str, str], name: str, *texts: str, encode: bool = True) -> None:
    """Send like a producer would: base64 (TextBase64EncodePolicy) unless ``encode`` is False."""
    policy = TextBase64EncodePolicy() if encode else None
    with QueueClient.from_connection_string(env["AzureWebJobsStorage"], name, message_encode_policy=policy) as client:
        with contextlib.suppress(ResourceExistsError):
            client.create_queue()
        for text in texts:
            client.send_message(text)


def raw_messages(env: dict[str, str], name: str) -> list[str]:
    """Contents as stored (still base64), without dequeuing; [] if the queue does not exist."""
    with QueueClient.from_connection_string(env["AzureWebJobsStorage"], name) as client:
        try:
            return [str(m.content) for m in client.peek_messages(max_messages=32)]
        except ResourceNotFoundError:
            return []


def message_count(env: dict[str, str], name: str) -> int:
    with QueueClient.from_connection_string(env["AzureWebJobsStorage"], name) as client:
        return int(client.get_queue_properties().approximate_message_count or 0)


def call(host: LocalFunctionsHost, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(host.base_url.removeprefix("http://"), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------------------ HTTP


def test_http_dispatch_builds_the_request_and_writes_the_response(make_host) -> None:
    host, _ = make_host(queues=False, timers=False)
    path = "/api/hello/J%C3%BCrgen%20X?a=1&b=two&a=3"
    status, headers, body = call(host, "GET", path, headers={"X-Test": "t1"})
    assert status == 200
    assert headers["x-reply"] == "yes"
    assert headers["content-type"] == "application/json"
    assert headers["content-length"] == str(len(body))
    payload = json.loads(body)
    assert payload["method"] == "GET"
    assert payload["name"] == "Jürgen X"  # route parameters are URL-decoded
    assert payload["params"] == {"a": "1,3", "b": "two"}  # repeated query keys joined like the host
    assert payload["header"] == "t1"
    assert payload["url"] == f"{host.base_url}{path}"

    status, _, body = call(host, "POST", "/api/hello/x", body=b'{"k": 1}', headers={"Content-Type": "application/json"})
    assert status == 201
    assert json.loads(body)["body"] == '{"k": 1}'

    status, headers, body = call(host, "GET", "/api/text")
    assert (status, body) == (200, b"plain words")
    assert headers["content-type"] == "text/plain; charset=utf-8"

    assert call(host, "GET", "/api/hello/world")[2] == b"literal route wins"  # ASP.NET route precedence
    assert call(host, "GET", "/api/files/a/b%20c.txt")[2] == b"a/b c.txt"  # catch-all parameter
    assert call(host, "GET", "/api/hello/x/")[0] == 200  # trailing slash
    assert call(host, "GET", "/API/HELLO/x")[0] == 200  # literals are case-insensitive, as in ASP.NET routing


def test_http_unknown_route_wrong_method_and_failure(make_host, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="guestsync.runner")
    host, _ = make_host(queues=False, timers=False)
    assert call(host, "GET", "/api/nope")[0] == 404
    assert call(host, "GET", "/hello/x")[0] == 404  # no route prefix
    assert call(host, "GET", "/api/items/abc")[0] == 404  # {id:int} constraint
    status, headers, _ = call(host, "DELETE", "/api/hello/x")
    assert status == 405
    assert headers["allow"] == "GET, POST"
    status, _, body = call(host, "GET", "/api/boom")
    assert (status, body) == (500, b"")
    assert "Executed 'Functions.boom' (Failed, Id=" in caplog.text
    assert "kaboom" in caplog.text


def test_async_functions_run_on_one_long_lived_loop(make_host) -> None:
    host, rec = make_host(queues=False, timers=False)
    assert call(host, "GET", "/api/items/1")[2] == b"item 1"
    assert call(host, "GET", "/api/items/2")[2] == b"item 2"
    first, second = rec.get("loops")
    assert first is second
    assert first.is_running()


def test_admin_api_status_and_invoke(make_host) -> None:
    host, rec = make_host(queues=False, timers=False)
    status, _, body = call(host, "GET", "/admin/host/status")
    assert status == 200 and json.loads(body)["state"] == "Running"
    assert call(host, "POST", "/admin/functions/yearly", body=b'{"input": ""}')[0] == 202
    timer = rec.wait_for("yearly", 1)[0]
    assert isinstance(timer, func.TimerRequest) and timer.past_due is False
    assert call(host, "POST", "/admin/functions/nope", body=b"{}")[0] == 404


def test_stop_lets_in_flight_invocations_finish(make_host) -> None:
    host, rec = make_host(queues=False, timers=False)
    replies: list[tuple[int, dict[str, str], bytes]] = []
    client = threading.Thread(target=lambda: replies.append(call(host, "GET", "/api/slow")))
    client.start()
    rec.wait_for("slow_started", 1, timeout=5)
    base_url = host.base_url
    host.stop(timeout=10)
    client.join(5)
    assert replies and replies[0][0] == 200 and replies[0][2] == b"done"
    with pytest.raises(OSError):
        conn = http.client.HTTPConnection(base_url.removeprefix("http://"), timeout=2)
        conn.request("GET", "/api/text")
        conn.getresponse()


def test_run_forever_stops_gracefully_on_sigterm(env, host_json) -> None:
    rec = Recorder()
    host = LocalFunctionsHost(build_app(rec), env=env, host_json=host_json)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    previous = signal.getsignal(signal.SIGTERM)
    host.run_forever()  # starts the host, blocks until the signal, then stops
    assert len(rec.get("yearly")) == 1  # it did run: run_on_startup fired
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored
    with pytest.raises(RuntimeError, match="stopped"):
        host.start()


# ----------------------------------------------------------------------------------------------------- queues


def test_base64_message_reaches_the_function_decoded(make_host, env, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="guestsync.runner")
    host, rec = make_host(timers=False)
    secret_text = '{"hello": "wörld", "token": "do-not-log-me"}'
    send(env, env["Q_OK"], secret_text)
    seen = rec.wait_for("echo", 1)[0]
    assert seen["body"] == secret_text.encode("utf-8")
    assert seen["dequeue_count"] == 1
    assert seen["id"] and seen["pop_receipt"]
    assert seen["inserted"] is not None
    host.drain(timeout=10)
    assert message_count(env, env["Q_OK"]) == 0  # deleted after success
    assert f"Executing 'Functions.echo' (Reason='New queue message detected on '{env['Q_OK']}'.', Id=" in caplog.text
    assert "Executed 'Functions.echo' (Succeeded, Id=" in caplog.text
    assert "do-not-log-me" not in caplog.text
    assert base64.b64encode(secret_text.encode()).decode() not in caplog.text


def test_always_failing_message_is_poisoned_after_five_attempts(make_host, env) -> None:
    host, rec = make_host(timers=False)
    send(env, env["Q_FAIL"], "poison me")
    host.drain(timeout=30)
    assert rec.get("always_fail") == [1, 2, 3, 4, 5]
    poisoned = raw_messages(env, f"{env['Q_FAIL']}-poison")
    assert [base64.b64decode(m) for m in poisoned] == [b"poison me"]  # original content, base64 like the host
    assert message_count(env, env["Q_FAIL"]) == 0
    time.sleep(1.5)  # longer than visibilityTimeout: there is no sixth attempt
    assert len(rec.get("always_fail")) == 5


def test_message_failing_twice_then_succeeding_is_not_poisoned(make_host, env) -> None:
    host, rec = make_host(timers=False)
    send(env, env["Q_FLAKY"], "third time lucky")
    host.drain(timeout=20)
    assert rec.get("flaky") == [1, 2, 3]
    assert message_count(env, env["Q_FLAKY"]) == 0
    assert raw_messages(env, f"{env['Q_FLAKY']}-poison") == []


def test_message_that_is_not_base64_is_poisoned_without_invoking(make_host, env) -> None:
    host, rec = make_host(timers=False)
    send(env, env["Q_OK"], "not base64 at all!", encode=False)
    host.drain(timeout=10)
    assert rec.get("echo") == []
    poisoned = raw_messages(env, f"{env['Q_OK']}-poison")
    assert [base64.b64decode(m) for m in poisoned] == [b"not base64 at all!"]


def test_messages_are_processed_concurrently_in_batches(make_host, env) -> None:
    send(env, env["Q_SLOW"], *(f"m{i}" for i in range(3 * BATCH_SIZE)))
    started = time.monotonic()
    host, rec = make_host(timers=False)
    host.drain(timeout=30)
    elapsed = time.monotonic() - started
    assert sorted(rec.get("slow_async")) == sorted(f"m{i}".encode() for i in range(3 * BATCH_SIZE))
    # A batch is processed at once; the next is fetched when in-flight work drops to newBatchThreshold.
    assert BATCH_SIZE <= rec.peak <= BATCH_SIZE + NEW_BATCH_THRESHOLD
    assert elapsed < 3 * BATCH_SIZE * 0.5 / 2  # far from one at a time


def test_invoke_queue_once_and_drain_without_pollers(make_host, env) -> None:
    host, rec = make_host(queues=False, timers=False)
    send(env, env["Q_FLAKY"], "step by step")
    outcomes = []
    for _ in range(3):
        result = host.invoke_queue_once("flaky", timeout=5)
        assert result is not None
        outcomes.append((result.dequeue_count, result.outcome))
    assert outcomes == [(1, "retried"), (2, "retried"), (3, "succeeded")]
    assert host.invoke_queue_once("flaky", timeout=0.3) is None

    send(env, env["Q_OK"], *(f"pumped {i}" for i in range(3)))
    host.drain(timeout=10)  # no pollers: drain() polls itself
    assert sorted(c["body"] for c in rec.get("echo")) == [b"pumped 0", b"pumped 1", b"pumped 2"]


# ----------------------------------------------------------------------------------------------------- timers


def test_timers_fire_on_schedule_on_startup_and_on_demand(make_host) -> None:
    host, rec = make_host(http=False, queues=False)
    ticks = rec.wait_for("tick", 2, timeout=5)
    (t1, first), (t2, _) = ticks[:2]
    assert isinstance(first, func.TimerRequest)
    assert first.past_due is False
    assert 0.5 < t2 - t1 < 1.8  # once per second
    assert len(rec.wait_for("yearly", 1, timeout=5)) == 1  # run_on_startup
    result = host.trigger_timer("yearly")
    assert result.succeeded
    assert len(rec.get("yearly")) == 2
    with pytest.raises(KeyError, match="nope"):
        host.trigger_timer("nope")


# ------------------------------------------------------------------------------------------------- indexing


def test_get_functions_is_called_exactly_once(env, host_json) -> None:
    app = build_app(Recorder())
    calls: list[int] = []
    original = app.get_functions

    def counting() -> list[Any]:
        calls.append(1)
        return original()

    app.get_functions = counting  # type: ignore[method-assign]
    with LocalFunctionsHost(app, env=env, host_json=host_json, http_port=None) as host:
        assert set(host.functions) == {"hello", "hello_world", "files", "text", "boom", "async_items", "slow",
                                       "echo", "always_fail", "flaky", "slow_async", "tick", "yearly"}
        assert host.functions["async_items"].detail == "[GET] /api/items/{id:int}"
        assert host.queue_name("echo") == env["Q_OK"]
        with pytest.raises(RuntimeError, match="HTTP listener"):
            _ = host.base_url
    assert calls == [1]
    # Why only once: the app registers the names on the first call and refuses them the second time.
    with pytest.raises(ValueError, match="unique"):
        original()


def test_index_errors_name_the_problem(env, host_json) -> None:
    without = {k: v for k, v in env.items() if k != "Q_OK"}
    with pytest.raises(FunctionIndexError, match="Q_OK"):
        LocalFunctionsHost(build_app(Recorder()), env=without, host_json=host_json)
    without = {k: v for k, v in env.items() if k != "AzureWebJobsStorage"}
    with pytest.raises(FunctionIndexError, match="AzureWebJobsStorage"):
        LocalFunctionsHost(build_app(Recorder()), env=without, host_json=host_json)

    bad_schedule = func.FunctionApp()

    @bad_schedule.timer_trigger(arg_name="timer", schedule="0 0 25 * * *")
    def hourly(timer: func.TimerRequest) -> None: ...

    with pytest.raises(FunctionIndexError, match=r"hourly.*hour field"):
        LocalFunctionsHost(bad_schedule, env=env, host_json=host_json)

    output_binding = func.FunctionApp()

    @output_binding.queue_trigger(arg_name="msg", queue_name="in", connection="AzureWebJobsStorage")
    @output_binding.queue_output(arg_name="out", queue_name="out", connection="AzureWebJobsStorage")
    def relay(msg: func.QueueMessage, out: func.Out[str]) -> None: ...

    with pytest.raises(FunctionIndexError, match=r"relay.*queue.*not supported"):
        LocalFunctionsHost(output_binding, env=env, host_json=host_json)


def test_host_json_settings_and_disabled_functions(tmp_path: Path) -> None:
    """No storage needed: nothing touches a queue while the queue listeners are off."""
    assert parse_timespan("00:00:01") == 1.0
    assert parse_timespan("00:00:00.500") == 0.5
    assert parse_timespan("1.02:03:04") == 93784.0
    assert parse_timespan("2") == 2 * 86400.0  # .NET reads a bare number as days
    for bad in ("00:61:00", "soon", 5):
        with pytest.raises(FunctionIndexError):
            parse_timespan(bad)
    assert HostOptions().queues.batch_size == 16 and HostOptions().queues.new_batch_threshold == 8

    path = tmp_path / "host.json"
    path.write_text(json.dumps({"Extensions": {"Queues": {"BatchSize": 4}, "http": {"routePrefix": ""}},
                                "functions": ["hello", "text", "echo"]}))
    options = HostOptions.load(path)
    assert (options.route_prefix, options.queues.batch_size, options.queues.new_batch_threshold) == ("", 4, 2)
    assert options.queues.max_polling_interval == 60.0 and options.queues.visibility_timeout == 0.0

    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "Q_OK": "offline-ok",
           "AzureWebJobs.text.Disabled": "true"}
    host = LocalFunctionsHost(build_app(Recorder()), env=env, host_json=path)
    assert set(host.functions) == {"hello", "text", "echo"}  # host.json "functions" allow-list
    assert host.functions["text"].disabled
    with host.start(queues=False, timers=False):
        assert call(host, "GET", "/hello/x")[0] == 200  # empty routePrefix
        assert call(host, "GET", "/text")[0] == 404  # disabled, as in the host

    path.write_text(json.dumps({"extensions": {"queues": {"batchSize": 33}}}))
    with pytest.raises(FunctionIndexError, match="batchSize"):
        HostOptions.load(path)
