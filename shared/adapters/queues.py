"""Queue Storage messages between the webhook, the apply step and the AD worker.

Messages are JSON, base64-encoded on the wire because that is what the Functions queue trigger expects
by default (``messageEncoding: base64`` in host.json).

Every message carries its schema version (``"v"``). A reader that meets a newer schema than it knows leaves the
message for a newer reader (``leave_for_newer_reader``: sent back unchanged, invisible for a while) instead of
guessing at it or sending it to the poison queue; ``newer_versions_seen()`` tells the agent's heartbeat so.
Upgrade the agents first, then the app: a newer agent reads every older schema.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
from typing import Any

from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import ExponentialRetry, QueueClient, TextBase64DecodePolicy, TextBase64EncodePolicy

from shared.adapters.storage import queue_client
from shared.core.messages import NEWER_SCHEMA_DELAY_SECONDS, NewerSchemaError
from shared.core.ports import PoisonMessage
from shared.settings import StorageSettings

log = logging.getLogger("guestsync.queues")


def leave_for_newer_reader(queue: MessageQueue, body: str | bytes, error: NewerSchemaError, *,
                           delay_seconds: int | None = None) -> None:
    """Send a message this reader cannot read back to its queue, byte for byte and invisible for
    ``delay_seconds`` (default NEWER_SCHEMA_DELAY_SECONDS), so that the caller can complete the one it
    received. Not poison: the copy starts with no dequeues, so an old agent never uses up a new message's
    retries however long the upgrade takes."""
    if delay_seconds is None:
        delay_seconds = NEWER_SCHEMA_DELAY_SECONDS
    queue.send(body.decode("utf-8") if isinstance(body, bytes) else body, delay_seconds=delay_seconds)
    log.warning("%s; left on queue %s for a newer %s (back in %d s)", error, queue.name, error.reader, delay_seconds)


class MessageQueue:
    """A storage queue that sends text messages base64-encoded (the Functions host's default)."""

    def __init__(self, client: QueueClient, *, read_only: bool = False) -> None:
        self._client = client
        self._created = read_only  # a reader (guestsync status) never creates the queue

    @classmethod
    def from_connection_string(cls, connection_string: str, name: str) -> MessageQueue:
        return cls.from_settings(StorageSettings(connection_string=connection_string), name)

    @classmethod
    def from_settings(cls, storage: StorageSettings, name: str, *, fail_fast: bool = False,
                      **options: Any) -> MessageQueue:
        """``fail_fast``: at most ~2 s per send (no retry, 1 s timeouts), for the webhook, which must
        answer Graph within 3 s and rather answers 503 (Graph redelivers) than hangs on storage retries.
        Other ``options`` (retry policy, timeouts) go to the queue client."""
        if fail_fast:
            options = {"retry_policy": ExponentialRetry(retry_total=0), "connection_timeout": 1, "read_timeout": 1}
        read_only = bool(options.pop("read_only", False))
        return cls(queue_client(storage, name, message_encode_policy=TextBase64EncodePolicy(),
                                message_decode_policy=TextBase64DecodePolicy(), **options), read_only=read_only)

    @property
    def name(self) -> str:
        return str(self._client.queue_name)

    def ensure(self) -> None:
        if not self._created:
            with contextlib.suppress(ResourceExistsError):
                self._client.create_queue()
            self._created = True

    def send(self, text: str, *, delay_seconds: int | None = None) -> None:
        self.ensure()
        self._client.send_message(text, visibility_timeout=delay_seconds)

    def approximate_count(self) -> int:
        self.ensure()
        try:
            return int(self._client.get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:  # a reader's queue that nothing created yet holds nothing
            return 0

    def peek(self, max_messages: int = 32) -> list[str]:
        self.ensure()
        try:
            return [str(m.content) for m in self._client.peek_messages(max_messages=max_messages)]
        except ResourceNotFoundError:
            return []


class StoragePoisonQueues:
    """Peeks (never receives, never deletes) poison queues in the storage account."""

    def __init__(self, storage: Any) -> None:
        self._storage = storage  # shared.settings.StorageSettings

    def peek(self, queue: str, max_messages: int = 32) -> list[PoisonMessage]:
        from azure.core.exceptions import ResourceNotFoundError

        from shared.adapters.storage import queue_client

        client = queue_client(self._storage, queue)
        try:
            messages = client.peek_messages(max_messages=max_messages)
        except ResourceNotFoundError:  # no poison queue yet: nothing was ever poisoned
            return []
        finally:
            client.close()
        return [PoisonMessage(queue, str(m.id), m.inserted_on, _decode(str(m.content or ""))) for m in messages]


def _decode(content: str) -> bytes:
    """Poison messages keep the trigger's base64 encoding; one that was not valid base64 is kept as it was."""
    try:
        return base64.b64decode("".join(content.split()), validate=True)
    except (ValueError, binascii.Error):
        return content.encode("utf-8")
