"""Queue message schema versions, pure: what is written, what an older reader refuses and remembers.
The reader leaving a newer message on a real queue is tested in tests/integration/test_message_schema.py."""

from __future__ import annotations

import json

import pytest

from shared.core import messages as queues
from shared.core.messages import SCHEMA_VERSION, ChangeMessage, ExportMessage, NewerSchemaError

UID = "6ea91a8d-e32e-41a1-b7bd-d2d185eed0e0"
MESSAGES = [ExportMessage(UID, 3, "new guest", "c0ffee"), ChangeMessage(UID, "updated", "2026-01-01T00:00:00+00:00")]


@pytest.fixture(autouse=True)
def nothing_seen_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queues, "_newest_seen", None)


@pytest.mark.parametrize("message", MESSAGES, ids=["export", "change"])
def test_messages_carry_the_schema_version(message: ExportMessage | ChangeMessage) -> None:
    data = json.loads(message.to_json())
    assert data["v"] == SCHEMA_VERSION == 1
    assert type(message).from_json(message.to_json()) == message


@pytest.mark.parametrize("message", MESSAGES, ids=["export", "change"])
def test_messages_from_before_the_version_field_are_schema_1(message: ExportMessage | ChangeMessage) -> None:
    data = json.loads(message.to_json())
    del data["v"]
    assert type(message).from_json(json.dumps(data)) == message
    assert queues.newer_versions_seen() is None


@pytest.mark.parametrize("bad", ["1", 0, -1, True, 1.5, None])
def test_a_bad_schema_version_is_a_bad_message(bad: object) -> None:
    data = {**json.loads(MESSAGES[0].to_json()), "v": bad}
    with pytest.raises(ValueError, match="schema version v must be a positive integer"):
        ExportMessage.from_json(json.dumps(data))


def test_a_newer_export_is_refused_by_name_and_remembered() -> None:
    newer = {**json.loads(MESSAGES[0].to_json()), "v": SCHEMA_VERSION + 2, "field_of_the_future": {"x": 1}}
    with pytest.raises(NewerSchemaError) as refused:
        ExportMessage.from_json(json.dumps(newer))
    assert str(refused.value) == (f"message schema v{SCHEMA_VERSION + 2} is newer than this agent "
                                  f"(v{SCHEMA_VERSION}): upgrade the agent")
    assert refused.value.version == SCHEMA_VERSION + 2
    assert queues.newer_versions_seen() == SCHEMA_VERSION + 2
    older_but_still_newer = {**newer, "v": SCHEMA_VERSION + 1}
    with pytest.raises(NewerSchemaError):
        ExportMessage.from_json(json.dumps(older_but_still_newer))
    assert queues.newer_versions_seen() == SCHEMA_VERSION + 2  # the highest seen


def test_a_newer_change_names_the_app() -> None:
    newer = {**json.loads(MESSAGES[1].to_json()), "v": SCHEMA_VERSION + 1}
    with pytest.raises(NewerSchemaError, match=r"newer than this app \(v1\): upgrade the app"):
        ChangeMessage.from_json(json.dumps(newer))
    assert queues.newer_versions_seen() == SCHEMA_VERSION + 1
