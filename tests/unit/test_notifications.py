"""Webhook parsing: clientState in constant time, tenant check, per-item rejection, reference shapes."""

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.core.notifications import (
    MalformedNotificationError,
    client_state_matches,
    parse_change_notifications,
    parse_lifecycle_notifications,
)
from shared.services.webhook import receive_changes, receive_lifecycle
from shared.settings import WebhookSettings

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "graph-examples"  # verbatim from the Graph docs
TENANT = "84bd8158-6d4d-4958-8b9f-9d6445542f95"
USER = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
SECRET = "s3cret-client-state"


def item(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "subscriptionId": "7f105c7d-2dc5-4530-97cd-4e7ae6534c07",
        "subscriptionExpirationDateTime": "2026-12-20T18:23:45.9356913Z",
        "clientState": SECRET,
        "changeType": "updated",
        "resource": f"Users/{USER}",
        "tenantId": TENANT,
        "resourceData": {
            "@odata.type": "#Microsoft.Graph.User",
            "@odata.id": f"Users/{USER}",
            "id": USER,
            "organizationId": TENANT,
        },
    }
    base.update(overrides)
    return base


def body(*items: object) -> bytes:
    return json.dumps({"value": list(items)}).encode()


def parse(raw: bytes, states: tuple[str, ...] = (SECRET,), tenant: str | None = TENANT):
    return parse_change_notifications(raw, client_states=states, tenant_id=tenant)


def test_user_notification_from_graph_docs_shape_is_accepted() -> None:
    # The Event Grid example's `data` is the Graph changeNotification for a user.
    doc = json.loads((REFERENCE / "change-notification-user-updated-eventgrid.json").read_text())
    notification = doc["data"] | {"clientState": SECRET, "tenantId": TENANT}
    notification["resourceData"] = notification["resourceData"] | {"id": USER}
    batch = parse(body(notification))
    assert [c.user_id for c in batch.accepted] == [USER]
    assert batch.accepted[0].change_type == "updated"


def test_reference_collection_keys_are_what_we_read() -> None:
    doc = json.loads((REFERENCE / "change-notification.json").read_text())
    keys = set(doc["value"][0])
    assert {"clientState", "changeType", "resource", "tenantId", "resourceData", "subscriptionId"} <= keys


def test_mail_notification_from_docs_is_refused_as_not_a_user() -> None:
    doc = json.loads((REFERENCE / "change-notification.json").read_text())
    batch = parse(json.dumps(doc).encode(), states=("secretClientValue",), tenant=None)
    assert not batch.accepted and batch.status_code() == 400


def test_forged_client_state_is_refused() -> None:
    batch = parse(body(item(clientState="guess")))
    assert not batch.accepted and batch.forged and batch.status_code() == 403


def test_previous_client_state_still_accepted_during_rotation() -> None:
    batch = parse(body(item(clientState="old-secret")), states=("new-secret", "old-secret"))
    assert len(batch.accepted) == 1


def test_other_tenant_is_refused() -> None:
    batch = parse(body(item(tenantId="00000000-0000-0000-0000-000000000000")))
    assert batch.forged and not batch.accepted


def test_malformed_items_do_not_lose_valid_ones() -> None:
    other = "605d1257-ffff-40b6-8e6f-528a53f5dc55"
    raw = body(
        item(),
        "not an object",
        item(resource="Users/x,OU=evil", resourceData={}),
        item(changeType="exploded"),
        item(resource=f"Users/{other}", resourceData={"id": other}),
    )
    batch = parse(raw)
    assert [c.user_id for c in batch.accepted] == [USER, other]
    assert len(batch.malformed) == 3 and batch.status_code() == 400


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"value": 3}', b"\xff\xfe", b'{"valeu": []}',
                                 b"[" * 100_000 + b"]" * 100_000,  # deeper than the JSON parser recurses
                                 b'{"value": [' + b"7" * 5000 + b"]}"])  # over Python's 4300-digit int limit
def test_malformed_bodies(raw: bytes) -> None:
    with pytest.raises(MalformedNotificationError):
        parse(raw)


def test_oversized_body_is_refused() -> None:
    with pytest.raises(MalformedNotificationError, match="larger"):
        parse(b'{"value": [' + b" " * 1_000_001 + b"]}")


def test_client_state_comparison_handles_non_strings() -> None:
    assert not client_state_matches(None, (SECRET,))
    assert not client_state_matches(123, (SECRET,))
    assert not client_state_matches(SECRET, ())
    assert client_state_matches(SECRET, ("other", SECRET))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_crash_and_never_accept_unsigned(raw: bytes) -> None:
    try:
        batch = parse(raw)
    except MalformedNotificationError:
        return
    assert not batch.accepted  # random bytes never carry our clientState


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                    max_leaves=20))
def test_arbitrary_json_values_are_refused_cleanly(value: object) -> None:
    try:
        batch = parse(json.dumps({"value": [value]}).encode())
    except MalformedNotificationError:
        return
    assert not batch.accepted


def test_lifecycle_reference_examples_parse() -> None:
    for name, event in [
        ("lifecycle-reauthorization.json", "reauthorizationRequired"),
        ("lifecycle-subscription-removed.json", "subscriptionRemoved"),
        ("lifecycle-missed.json", "missed"),
    ]:
        doc = json.loads((REFERENCE / name).read_text())
        state = doc["value"][0]["clientState"]
        batch = parse_lifecycle_notifications(json.dumps(doc).encode(), client_states=(state,), tenant_id=None)
        assert [e.event for e in batch.accepted] == [event]


def test_webhook_validation_handshake_echoes_token_as_text() -> None:
    reply = receive_changes(b"", {"validationToken": "Validation: token <x>"}, WebhookSettings((SECRET,)), print)
    assert (reply.status, reply.body, reply.mimetype) == (200, "Validation: token <x>", "text/plain")
    reply = receive_lifecycle(b"", {"validationToken": "abc"}, WebhookSettings((SECRET,)), print)
    assert (reply.status, reply.body) == (200, "abc")


def test_webhook_enqueues_each_user_once_and_answers_202() -> None:
    sent: list[str] = []
    raw = body(item(), item(), item(changeType="deleted"))
    reply = receive_changes(raw, {}, WebhookSettings((SECRET,), tenant_id=TENANT), sent.append)
    assert reply.status == 202
    assert len(sent) == 1 and json.loads(sent[0])["user_id"] == USER


def test_webhook_unconfigured_client_state_refuses_everything() -> None:
    sent: list[str] = []
    reply = receive_changes(body(item()), {}, WebhookSettings(()), sent.append)
    assert reply.status == 503 and not sent


def test_webhook_mixed_batch_enqueues_valid_and_answers_400() -> None:
    sent: list[str] = []
    raw = body(item(), {"clientState": SECRET, "bogus": 1})
    reply = receive_changes(raw, {}, WebhookSettings((SECRET,)), sent.append)
    assert reply.status == 400 and len(sent) == 1
    assert "item 1" in reply.body


def test_webhook_reports_a_bounded_number_of_refused_items(caplog: pytest.LogCaptureFixture) -> None:
    sent: list[str] = []
    with caplog.at_level("WARNING", logger="guestsync.webhook"):
        reply = receive_changes(body(*[{}] * 5000), {}, WebhookSettings((SECRET,)), sent.append)
    assert reply.status == 403 and not sent
    details = json.loads(reply.body)["details"]
    assert len(details) == 21 and details[-1] == "... and 4980 more refused items"
    assert len(caplog.records) == 21 and "4980 more" in caplog.records[-1].getMessage()


def _user(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def test_webhook_queues_a_burst_as_messages_of_at_most_15_users_per_change_type() -> None:
    from shared.core.messages import ChangeMessage

    sent: list[str] = []
    users = [_user(n) for n in range(40)]
    items = [item(resource=f"Users/{u}", resourceData={"id": u}) for u in users]
    items += [item(resource=f"Users/{users[0]}", resourceData={"id": users[0]}, changeType="deleted")]  # again
    items += [item(resource=f"Users/{u}", resourceData={"id": u}, changeType="deleted")
              for u in (_user(100), _user(101))]
    reply = receive_changes(body(*items), {}, WebhookSettings((SECRET,)), sent.append)
    assert reply.status == 202
    messages = [ChangeMessage.from_json(m) for m in sent]
    assert [len(m.user_ids) for m in messages] == [15, 15, 10, 2]
    assert [u for m in messages[:3] for u in m.user_ids] == users  # each user once, in notification order
    assert {m.change_type for m in messages[:3]} == {"updated"} and messages[3].change_type == "deleted"
    assert messages[3].user_ids == (_user(100), _user(101))
    assert len({m.correlation_id for m in messages}) == 4


def test_change_message_round_trip_keeps_the_batch_and_the_deferrals() -> None:
    from shared.core.messages import ChangeMessage

    message = ChangeMessage(_user(1), "updated", "2026-11-23T00:00:00+00:00", correlation_id="c",
                            more_user_ids=(_user(2), _user(3)), deferrals=2)
    assert ChangeMessage.from_json(message.to_json()) == message
    single = ChangeMessage(_user(1), "updated", "")
    assert "more_user_ids" not in single.to_json() and "deferrals" not in single.to_json()
    assert ChangeMessage.from_json(single.to_json()).user_ids == (_user(1),)
    hostile = json.dumps({"user_id": _user(1), "more_user_ids": [1, None, _user(2)], "deferrals": "9"})
    parsed = ChangeMessage.from_json(hostile)
    assert parsed.user_ids == (_user(1), _user(2)) and parsed.deferrals == 0


# --- headers first, nosniff, lifecycle events of other subscriptions --------------------------------------------

def test_screen_refuses_on_headers_before_the_body() -> None:
    from shared.core.notifications import MAX_BODY_BYTES
    from shared.services.webhook import screen

    too_big = screen({}, {"content-length": str(MAX_BODY_BYTES + 1), "Content-Type": "application/json"})
    assert too_big is not None and too_big.status == 413
    for bad_length in ("12x", "-1", "\u00b2"):
        refused = screen({}, {"Content-Length": bad_length, "Content-Type": "application/json"})
        assert refused is not None and refused.status == 400, bad_length
    for refused in ("text/plain", "application/x-www-form-urlencoded", "", "application/jsonp"):
        reply = screen({}, {"Content-Length": "10", "Content-Type": refused})
        assert reply is not None and reply.status == 415, refused
    for accepted in ("application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8"):
        assert screen({}, {"Content-Length": "10", "Content-Type": accepted}) is None, accepted
    # Graph's validation request is a text/plain POST without a body: it goes on to the echo.
    assert screen({"validationToken": "t"}, {"Content-Length": "0", "Content-Type": "text/plain"}) is None


def test_validation_echo_is_text_with_nosniff_and_length_limited() -> None:
    from shared.core.notifications import MAX_VALIDATION_TOKEN_LENGTH

    reply = receive_changes(b"", {"validationToken": "<script>x</script>"}, WebhookSettings((SECRET,)), print)
    assert reply.mimetype == "text/plain" and reply.headers["X-Content-Type-Options"] == "nosniff"
    long = receive_changes(b"", {"validationToken": "x" * (MAX_VALIDATION_TOKEN_LENGTH + 1)},
                           WebhookSettings((SECRET,)), print)
    assert long.status == 400 and long.mimetype == "application/json"


def test_lifecycle_events_for_other_subscriptions_are_acknowledged_and_dropped(
        caplog: pytest.LogCaptureFixture) -> None:
    ours, theirs = "7f105c7d-2dc5-4530-97cd-4e7ae6534c07", "0c2c6b5e-3a1d-4f7e-9b1a-2d3e4f5a6b7c"

    def event(subscription_id: str, name: str) -> dict[str, object]:
        return {"subscriptionId": subscription_id, "clientState": SECRET, "lifecycleEvent": name,
                "subscriptionExpirationDateTime": "2026-12-20T18:23:45Z", "tenantId": TENANT}

    handled: list[list[tuple[str, str]]] = []
    raw = body(*[event(ours, "missed")] * 100, *[event(ours, "subscriptionRemoved")] * 50,
               *[event(theirs, "missed")] * 30)
    with caplog.at_level("WARNING", logger="guestsync.webhook"):
        reply = receive_lifecycle(raw, {}, WebhookSettings((SECRET,)),
                                  lambda batch: handled.append([(e.subscription_id, e.event) for e in batch.accepted]),
                                  lambda: frozenset({ours}))
    assert reply.status == 202
    # Each (subscription, event) of ours once; the foreign subscription's events never reach the handler.
    assert handled == [[(ours, "missed"), (ours, "subscriptionRemoved")]]
    assert [r.getMessage() for r in caplog.records] == [f"30 lifecycle event(s) for subscription {theirs} dropped: "
                                                        "it is not ours"]
    only_theirs: list[object] = []
    assert receive_lifecycle(body(event(theirs, "reauthorizationRequired")), {}, WebhookSettings((SECRET,)),
                             only_theirs.append, lambda: frozenset({ours})).status == 202
    assert only_theirs == []
