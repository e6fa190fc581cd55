"""Hostile and unreliable notification traffic, posted straight to the function app's webhook.

* Duplicated, reordered and replayed notifications: one account per guest, the last value wins, and a
  replay after convergence writes nothing to AD.
* Forged clientState and another tenant: refused (403), nothing queued. Malformed and oversized bodies,
  fuzzed with hypothesis: always a 2xx/4xx JSON answer, never a 5xx, never a queued message for an invalid
  item; the app keeps working afterwards.

Real Azurite, Samba AD DC and Graph simulator; the function app on the local runner.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import socket
import threading
import urllib.parse
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ldap3
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared import bootstrap
from shared.core.domain import GuestStatus, is_guid
from shared.core.notifications import CHANGE_TYPES, MAX_BODY_BYTES
from tests.plugins.stack import Stack
from tests.reliability.faults import notification, poisoned, post
from tests.reliability.invariants import admin, assert_invariants

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
NOTIFICATIONS = "/api/graph/notifications"
LIFECYCLE = "/api/graph/lifecycle"


def _unheard_guest(stack: Stack, name: str) -> str:
    """A guest invited in Entra whose notification Graph lost: guestsync knows nothing of it."""
    sim: Any = stack.sim
    sim.drop_next_notifications(1)
    return str(sim.invite_guest(f"{name}@fabrikam.com", f"Guest {name}", "Given", name)["id"])


def _quiet_update(stack: Stack, uid: str, **props: Any) -> None:
    sim: Any = stack.sim
    sim.drop_next_notifications(1)
    sim.update_user(uid, **props)


def _usn(stack: Stack, uids: list[str]) -> dict[str, int]:
    conn = admin(stack)
    conn.search(stack.guest_ou, "(objectClass=user)", ldap3.LEVEL, attributes=["cn", "uSNChanged"])
    found = {str(e.cn): int(e.uSNChanged.value) for e in conn.entries}
    return {u: found[u] for u in uids}


class _Spy:
    """Records what the webhook puts on the change queue (and still puts it there)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        queue = bootstrap.services().webhook_queue  # the change queue as the webhook sends to it
        self.sent: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        real: Callable[..., None] = queue.send

        def send(text: str, **kwargs: Any) -> None:
            with self._lock:
                self.sent.append(json.loads(text))
            real(text, **kwargs)

        monkeypatch.setattr(queue, "send", send)

    def take(self) -> list[dict[str, Any]]:
        with self._lock:
            sent, self.sent = self.sent, []
        return sent


def test_duplicated_reordered_and_replayed_notifications_converge_on_the_last_value(rstack: Stack) -> None:
    stack = rstack
    uids = [_unheard_guest(stack, f"replay{i}") for i in range(4)]
    bodies: list[dict[str, Any]] = []
    for uid in uids:
        bodies.append({"value": [notification(stack, uid, "created")]})
        for version in ("v1", "v2", "v3"):
            _quiet_update(stack, uid, givenName=version)
            bodies.append({"value": [notification(stack, uid, "updated")]})
        bodies.append({"value": [notification(stack, uid, "deleted")]})  # a stale/forged-looking 'deleted'
    # Every notification three times, shuffled, from 8 concurrent senders, plus everything in one batch.
    traffic = bodies * 3 + [{"value": [item for body in bodies for item in body["value"]]}]
    random.Random(5).shuffle(traffic)
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda body: post(stack, body)[0], traffic))
    assert set(statuses) == {202}, statuses
    stack.wait(lambda: stack.settled(uids), "the replayed guests")
    accounts = stack.ad_accounts()
    assert {u: accounts[u]["givenName"] for u in uids} == {u: ["v3"] for u in uids}

    # A newer change whose own notification is lost, then the old notifications again: the newer value wins.
    _quiet_update(stack, uids[0], givenName="v4", displayName="Newest")
    random.Random(6).shuffle(bodies)
    for body in bodies:
        assert post(stack, body)[0] == 202
    stack.wait(lambda: (r := stack.state.get(uids[0])) is not None and r.entry.given_name == "v4"
               and stack.settled(uids), "the newest value")
    stack.drain()
    accounts = stack.ad_accounts()
    assert accounts[uids[0]]["givenName"] == ["v4"] and accounts[uids[0]]["displayName"] == ["Newest"]

    # Converged: a replay of everything is read, compared and dropped; AD is not written at all.
    versions = {u: stack.state.get(u).version for u in uids}  # type: ignore[union-attr]
    usn = _usn(stack, uids)
    for body in traffic:
        assert post(stack, body)[0] == 202
    stack.drain()
    assert _usn(stack, uids) == usn
    assert {u: stack.state.get(u).version for u in uids} == versions  # type: ignore[union-attr]
    assert poisoned() == {"changes": 0, "exports": 0}
    assert_invariants(stack, uids)


# ------------------------------------------------------------------------------------------ forged and fuzzed

_KNOWN_KEYS = {"subscriptionId", "subscriptionExpirationDateTime", "clientState", "changeType", "resource",
               "tenantId", "resourceData", "lifecycleEvent"}
_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)
_not_guid = st.text(max_size=60).filter(lambda t: not is_guid(t.removeprefix("Users/").removeprefix("users/")))


def _defects(valid: Callable[[], dict[str, Any]]) -> st.SearchStrategy[Any]:
    """An item that is ours in every way but one or more defects (or not an object at all): never valid."""

    @st.composite
    def item(draw: st.DrawFn) -> Any:
        kind = draw(st.sampled_from(["forged", "tenant", "change_type", "resource", "not_object", "several"]))
        if kind == "not_object":
            return draw(_json.filter(lambda v: not isinstance(v, dict)))
        body = valid()
        chosen = (draw(st.lists(st.sampled_from(["forged", "tenant", "change_type", "resource"]), min_size=2,
                                max_size=4, unique=True)) if kind == "several" else [kind])
        for defect in chosen:
            if defect == "forged":
                body["clientState"] = draw(_json.filter(lambda v: v != os.environ["GRAPH_CLIENT_STATE"]))
            elif defect == "tenant":
                body["tenantId"] = draw(_json.filter(
                    lambda v: str(v).lower() != str(body.get("tenantId", "")).lower()))
            elif defect == "change_type":
                body["changeType"] = draw(_json.filter(
                    lambda v: not isinstance(v, str) or not set(v.split(",")) <= CHANGE_TYPES))
            else:
                body["resource"] = draw(_not_guid)
                body["resourceData"] = draw(st.one_of(_json.filter(lambda v: not isinstance(v, dict)),
                                                      st.fixed_dictionaries({"id": _not_guid})))
        extra = draw(st.dictionaries(st.text(max_size=12).filter(lambda k: k not in _KNOWN_KEYS), _json,
                                     max_size=3))
        return {**extra, **body}

    return item()


def _bodies(valid: Callable[[], dict[str, Any]]) -> st.SearchStrategy[bytes]:
    items = st.lists(_defects(valid), min_size=1, max_size=6)
    collections = st.builds(lambda values, extra: json.dumps({**extra, "value": values}).encode(),
                            items, st.dictionaries(st.text(max_size=8).filter(lambda k: k != "value"), _json,
                                                   max_size=2))
    not_collections = _json.filter(lambda v: not (isinstance(v, dict) and isinstance(v.get("value"), list))).map(
        lambda v: json.dumps(v).encode())
    return st.one_of(collections, collections, not_collections, st.binary(max_size=300))


def _assert_refused_answer(status: int, content_type: str, raw: bytes, *, items: bool) -> None:
    assert 200 <= status < 500, f"answered {status}: {raw[:300]!r}"
    if status == 202:
        assert not items, "a batch of invalid items was accepted"
        return
    assert status in (400, 403, 413), status  # 413: a body over MAX_BODY_BYTES
    assert content_type.startswith("application/json"), content_type
    answer = json.loads(raw)
    assert isinstance(answer, dict) and isinstance(answer.get("error"), str) and answer["error"]


def _has_items(body: bytes) -> bool:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(document, dict) and isinstance(document.get("value"), list) and bool(document["value"])


# The runner's pollers use the random module in their threads while hypothesis generates an example.
@pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies")
def test_forged_foreign_malformed_and_oversized_notifications_are_refused(
        rstack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stack = rstack
    victim = _unheard_guest(stack, "victim")  # exists in Entra, unknown to guestsync: must stay unknown
    legit = _unheard_guest(stack, "legit")
    spy = _Spy(monkeypatch)

    forged = {"value": [notification(stack, victim, clientState="guessed")]}
    foreign = {"value": [notification(stack, victim, tenantId=str(uuid.uuid4()))]}
    for refused in (forged, foreign):
        for path in (NOTIFICATIONS, LIFECYCLE):
            status, content_type, raw = post(stack, refused, path)
            _assert_refused_answer(status, content_type, raw, items=True)
            assert status == 403
    assert spy.take() == []

    # A batch with one good item among forged ones: the good one is queued, only that one.
    mixed = {"value": [forged["value"][0], notification(stack, legit), foreign["value"][0]]}
    assert post(stack, mixed)[0] == 202
    assert [m["user_id"] for m in spy.take()] == [legit]

    explicit = [
        b"", b"null", b"[]", b"{}", b'{"value": {}}', b"\xff\xfe\x00", b"\x00" * 64,
        json.dumps({"value": []}).encode("utf-32"),
        b"[" * 100_000 + b"]" * 100_000,  # deeper than any JSON parser recurses
        b'{"value": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}",
        b'{"value": [' + b"7" * 5000 + b"]}",  # an integer longer than Python converts (4300 digits)
        json.dumps({"value": [notification(stack, victim, clientState="x")], "pad": "x" * MAX_BODY_BYTES}).encode(),
    ]
    for body in explicit:
        for path in (NOTIFICATIONS, LIFECYCLE):
            status, content_type, raw = post(stack, body, path)
            _assert_refused_answer(status, content_type, raw, items=_has_items(body))
            assert (status == 413) is (len(body) > MAX_BODY_BYTES), (status, len(body))
    assert spy.take() == []

    # 100,000 junk items in one body: refused with a bounded answer and a bounded number of log lines.
    junk = json.dumps({"value": [{}] * 100_000}).encode()
    for path in (NOTIFICATIONS, LIFECYCLE):
        logged = len(caplog.records)
        status, content_type, raw = post(stack, junk, path)
        _assert_refused_answer(status, content_type, raw, items=True)
        webhook_lines = [r for r in caplog.records[logged:] if r.name == "guestsync.webhook"]
        assert len(raw) < 10_000 and len(webhook_lines) <= 25, (len(raw), len(webhook_lines))
    assert spy.take() == []

    @settings(max_examples=100, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(body=_bodies(lambda: notification(stack, victim)), path=st.sampled_from([NOTIFICATIONS, LIFECYCLE]))
    def fuzz(body: bytes, path: str) -> None:
        status, content_type, raw = post(stack, body, path)
        _assert_refused_answer(status, content_type, raw, items=_has_items(body))
        assert spy.take() == [], f"an invalid item was queued: {body[:300]!r}"

    fuzz()

    # The app still works: a real notification for a new guest is handled end to end.
    after = _unheard_guest(stack, "afterfuzz")
    assert post(stack, {"value": [notification(stack, after)]})[0] == 202
    stack.wait(lambda: stack.settled([legit, after]), "the legitimate guests")
    stack.drain()
    assert stack.state.get(victim) is None
    assert victim not in stack.ad_accounts()
    assert stack.state.get(legit).status is GuestStatus.PROVISIONED  # type: ignore[union-attr]
    assert poisoned() == {"changes": 0, "exports": 0}
    assert_invariants(stack, [legit, after])


# ------------------------------------------------------------------------------ Functions key and headers first

def _raw_post(stack: Stack, path: str, headers: dict[str, str], body: bytes = b"",
              timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    """A POST whose headers may promise more body than is sent: the answer must come without the rest."""
    split = urllib.parse.urlsplit(stack.host.base_url)
    conn = http.client.HTTPConnection(split.hostname or "127.0.0.1", split.port, timeout=timeout)
    try:
        conn.putrequest("POST", path)
        if body and not any(name.lower() == "content-length" for name in headers):
            headers = {**headers, "Content-Length": str(len(body))}
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders(body or None)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def _keyed(path: str) -> str:
    return f"{path}?{urllib.parse.urlencode({'code': os.environ['GUESTSYNC_WEBHOOK_KEY']})}"


def test_webhook_endpoints_need_the_functions_key(rstack: Stack, monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    stack = rstack
    key = os.environ["GUESTSYNC_WEBHOOK_KEY"]
    sim: Any = stack.sim
    guest = _unheard_guest(stack, "keyed")
    spy = _Spy(monkeypatch)
    good = {"value": [notification(stack, guest)]}
    for path in (NOTIFICATIONS, LIFECYCLE):
        assert post(stack, good, path, key="")[0] == 401  # no key: the host refuses before our code runs
        assert post(stack, good, path, key=key[:-1] + ("x" if key[-1] != "x" else "y"))[0] == 401
        assert post(stack, {"value": []}, f"{path}?validationToken=abc", key="")[0] == 401
        # 401 without reading the body: the answer comes although the promised body never does.
        status, _, _ = _raw_post(stack, path, {"Content-Type": "application/json", "Content-Length": "50000"})
        assert status == 401
    assert spy.take() == []
    # The key as the x-functions-key header works like ?code=.
    status, _, _ = _raw_post(stack, NOTIFICATIONS, {"Content-Type": "application/json", "x-functions-key": key},
                             json.dumps(good).encode())
    assert status == 202 and [m["user_id"] for m in spy.take()] == [guest]
    # guestsync subscribed with keyed URLs, and Graph's handshake and deliveries go through them.
    (subscription,) = sim.subscriptions.values()
    for url in (subscription.notification_url, subscription.lifecycle_url):
        assert urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["code"] == [key]
    sim.update_user(guest, givenName="Keyed")
    stack.wait(lambda: (r := stack.state.get(guest)) is not None and r.entry.given_name == "Keyed"
               and stack.settled([guest]), "the keyed delivery")
    assert key not in caplog.text and urllib.parse.quote(key) not in caplog.text
    assert "code=[REDACTED]" in caplog.text  # the runner's request lines were logged, masked


def test_headers_are_checked_before_the_body(rstack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = rstack
    spy = _Spy(monkeypatch)
    guest = _unheard_guest(stack, "typed")
    good = json.dumps({"value": [notification(stack, guest)]}).encode()
    for path in (NOTIFICATIONS, LIFECYCLE):
        # A declared body over 1 MB is refused at once: the 2 MB are never sent, and never waited for.
        status, headers, raw = _raw_post(stack, _keyed(path), {"Content-Type": "application/json",
                                                               "Content-Length": str(2 * MAX_BODY_BYTES)})
        assert status == 413 and json.loads(raw)["error"]
        assert headers["x-content-type-options"] == "nosniff"
        # Notifications are JSON: any other type is 415, whatever the body holds.
        for content_type in ("text/plain", "application/x-www-form-urlencoded", "text/html; charset=utf-8"):
            status, _, raw = post(stack, good, path, content_type=content_type)
            assert status == 415 and "application/json" in json.loads(raw)["error"], content_type
    assert spy.take() == []
    status, _, _ = post(stack, good, NOTIFICATIONS, content_type="application/json; charset=utf-8")
    assert status == 202 and [m["user_id"] for m in spy.take()] == [guest]
    # The validation echo: text/plain, nosniff, the token exactly; an overlong token is refused.
    token = "Validation: <b>bold</b> & more"
    status, headers, raw = _raw_post(stack, _keyed(NOTIFICATIONS) + "&" + urllib.parse.urlencode(
        {"validationToken": token}), {"Content-Type": "text/plain; charset=utf-8", "Content-Length": "0"})
    assert (status, raw.decode()) == (200, token)
    assert headers["content-type"].startswith("text/plain") and headers["x-content-type-options"] == "nosniff"
    status, _, _ = post(stack, b"", f"{LIFECYCLE}?validationToken={'x' * 5000}", content_type="text/plain")
    assert status == 400


def test_lifecycle_events_of_another_subscription_are_dropped_not_poisoned(
        rstack: Stack, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    stack = rstack
    spy = _Spy(monkeypatch)
    stranger = str(uuid.uuid4())
    events = [{"subscriptionId": stranger, "subscriptionExpirationDateTime": "2099-01-01T00:00:00Z",
               "clientState": os.environ["GRAPH_CLIENT_STATE"], "tenantId": stack.sim.tenant_id,  # type: ignore[attr-defined]
               "lifecycleEvent": event} for event in ("missed", "subscriptionRemoved", "reauthorizationRequired")]
    assert post(stack, {"value": events}, LIFECYCLE)[0] == 202
    stack.drain()
    assert spy.take() == []
    assert f"for subscription {stranger} dropped: it is not ours" in caplog.text
    assert poisoned() == {"changes": 0, "exports": 0}
    assert len(stack.sim.subscriptions) == 1  # type: ignore[attr-defined]


def test_a_body_sent_after_its_413_is_drained_not_reset(rstack: Stack) -> None:
    """A client that sends the whole body of a request refused on its declared size (as urllib and most HTTP
    clients do) gets the 413, not a connection reset half-way through its body (a broken pipe)."""
    split = urllib.parse.urlsplit(rstack.host.base_url)
    size = 2 * MAX_BODY_BYTES
    with socket.create_connection((split.hostname or "127.0.0.1", split.port or 80), timeout=10) as sock:
        sock.sendall(f"POST {_keyed(LIFECYCLE)} HTTP/1.1\r\nHost: guestsync\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {size}\r\n\r\n".encode())
        answer = sock.recv(65536)  # the 413 comes before any byte of the body was sent
        assert b" 413 " in answer.split(b"\r\n", 1)[0], answer[:200]
        sock.sendall(b"x" * size)  # the body all the same: read and dropped by the server, not reset
        sock.shutdown(socket.SHUT_WR)
