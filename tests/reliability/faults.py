"""Fault injection for the reliability suite: kill a Functions host, shorten queue leases, post notifications
straight to the webhook, read the poison queues."""

from __future__ import annotations

import json
import os
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.storage.queue import QueueClient

from devtools import runner
from devtools.runner import LocalFunctionsHost
from shared import bootstrap
from shared.functions import create_app
from shared.services import apply, export
from tests.plugins.stack import Stack

#: What the state and directory writes of a guest's apply or export are called.
STATE_WRITES = frozenset({"save", "delete", "save_meta", "put_meta"})
DIRECTORY_WRITES = frozenset({"create_guest", "update_guest", "disable_and_archive", "restore_guest", "delete_guest"})


def short_leases(monkeypatch: pytest.MonkeyPatch, seconds: int = 4) -> None:
    """Lease dequeued messages for ``seconds`` instead of the host's 10 minutes (renewed halfway, as the host
    does), so that a message of a host that died reappears within the test. Set before the host receives."""
    monkeypatch.setattr(runner, "RECEIVE_VISIBILITY_SECONDS", seconds)
    monkeypatch.setattr(runner, "RENEW_AFTER_SECONDS", seconds / 2)


class HostKilledError(RuntimeError):
    """Raised instead of a write that a host would have made after its process died."""


class _Guarded:
    """A state store or directory whose writes fail once the host that started the work is dead."""

    def __init__(self, target: Any, writes: frozenset[str], alive: Callable[[], None],
                 after: Callable[[str], None] = lambda name: None) -> None:
        self._target, self._writes, self._alive, self._after = target, writes, alive, after

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name not in self._writes:
            return value

        def guarded(*args: Any, **kwargs: Any) -> Any:
            self._alive()
            result = value(*args, **kwargs)
            self._after(name)
            return result

        return guarded


class Killer:
    """Emulates ``kill -9`` of the process that runs a LocalFunctionsHost, in this process.

    A dead process writes nothing more: the exports and applies it had started make no AD, state or queue
    write after the kill (each write checks that the host that started the work is alive), and it never
    settles (deletes, retries, poisons) or renews the lease of a message it had received: those messages
    reappear when their lease expires. ``arm(host, after_creates=n)`` kills the host right after its n-th AD
    account creation, before that export could save the account's join in state: the worst moment.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.generation = 0
        self.refused: list[str] = []
        self.killed = threading.Event()
        self._lock = threading.Lock()
        self._armed: tuple[LocalFunctionsHost, int] | None = None
        self._creates = 0
        self._stopping: threading.Thread | None = None
        real_export, real_apply = export.export_guest, apply.apply_change

        def export_guest(message: Any, state: Any, directory: Any, *args: Any, **kwargs: Any) -> Any:
            alive = self._alive_check(f"export of {message.uid}")
            guarded_state: Any = _Guarded(state, STATE_WRITES, alive)
            guarded_directory: Any = _Guarded(directory, DIRECTORY_WRITES, alive, self._after_write)
            return real_export(message, guarded_state, guarded_directory, *args, **kwargs)

        async def apply_change(message: Any, graph: Any, state: Any, send_export: Callable[[str], None],
                               *args: Any, **kwargs: Any) -> Any:
            alive = self._alive_check(f"apply of {message.user_id}")

            def send(text: str) -> None:
                alive()
                send_export(text)

            guarded_state: Any = _Guarded(state, STATE_WRITES, alive)
            return await real_apply(message, graph, guarded_state, send, *args, **kwargs)

        monkeypatch.setattr(export, "export_guest", export_guest)
        monkeypatch.setattr(apply, "apply_change", apply_change)

    def _alive_check(self, what: str) -> Callable[[], None]:
        born = self.generation

        def alive() -> None:
            if self.generation != born:
                with self._lock:
                    self.refused.append(what)
                raise HostKilledError(f"{what}: the host that ran it was killed")

        return alive

    def _after_write(self, name: str) -> None:
        with self._lock:
            if name != "create_guest" or self._armed is None:
                return
            self._creates += 1
            host, after = self._armed
            if self._creates < after:
                return
            self._armed = None
        self._die(host)
        # stop() waits for this very thread's invocation: let another thread do it.
        self._stopping = threading.Thread(target=host.stop, kwargs={"timeout": 0}, name="kill", daemon=True)
        self._stopping.start()
        self.killed.set()

    def wait_dead(self, timeout: float) -> bool:
        """Wait until an armed kill happened and the host is stopped."""
        if not self.killed.wait(timeout):
            return False
        if self._stopping is not None:
            self._stopping.join(timeout)
        return True

    def arm(self, host: LocalFunctionsHost, *, after_creates: int) -> None:
        self._armed, self._creates = (host, after_creates), 0

    def _die(self, host: LocalFunctionsHost) -> None:
        def dead(*args: Any, **kwargs: Any) -> Any:
            raise HostKilledError("the host was killed before it could settle this message")

        for listener in host._listeners.values():
            listener._settle = dead  # type: ignore[method-assign]
            listener.renew_due = lambda: None  # type: ignore[method-assign]
        self.generation += 1


def new_host(stack: Stack, tmp_path: Path, port: int) -> LocalFunctionsHost:
    """A new host process for the same app, settings, queues and webhook port (the stack fixture's host.json)."""
    host = LocalFunctionsHost(create_app("function"), env=os.environ, host_json=tmp_path / "host.json",
                              http_port=port)
    host.start()
    stack.host = host
    return host


def port_of(host: LocalFunctionsHost) -> int:
    return int(host.base_url.rsplit(":", 1)[1])


def poison_count(queue: str) -> int:
    """Messages in the poison queue of ``queue``."""
    settings = bootstrap.services().settings
    client = QueueClient.from_connection_string(str(settings.storage.connection_string), f"{queue}-poison")
    try:
        return int(client.get_queue_properties().approximate_message_count or 0)
    except ResourceNotFoundError:
        return 0
    finally:
        client.close()


def poisoned() -> dict[str, int]:
    """Messages in the poison queues, by role: ``{"changes": n, "exports": m}``."""
    settings = bootstrap.services().settings
    return {"changes": poison_count(settings.change_queue), "exports": poison_count(settings.export_queue)}


def notification(stack: Stack, uid: str, change_type: str = "updated", **overrides: Any) -> dict[str, Any]:
    """One change notification item as Graph sends it for our subscription."""
    sim: Any = stack.sim
    (subscription_id,) = sim.subscriptions
    item: dict[str, Any] = {
        "subscriptionId": subscription_id,
        "subscriptionExpirationDateTime": "2099-01-01T00:00:00Z",
        "clientState": os.environ["GRAPH_CLIENT_STATE"],
        "changeType": change_type,
        "resource": f"Users/{uid}",
        "tenantId": sim.tenant_id,
        "resourceData": {"@odata.type": "#Microsoft.Graph.User", "@odata.id": f"Users/{uid}", "id": uid,
                         "organizationId": sim.tenant_id},
    }
    item.update(overrides)
    return item


def post(stack: Stack, body: bytes | dict[str, Any], path: str = "/api/graph/notifications",
         content_type: str = "application/json", timeout: float = 30.0, key: str | None = None,
         ) -> tuple[int, str, bytes]:
    """POST to the function app's webhook with its Functions key (``key`` overrides it; "" sends none);
    (status, content type, body), whatever the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    key = os.environ["GUESTSYNC_WEBHOOK_KEY"] if key is None else key
    if key:
        path += ("&" if "?" in path else "?") + urllib.parse.urlencode({"code": key})
    request = urllib.request.Request(stack.host.base_url + path, data=data, method="POST",  # noqa: S310 (http://)
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (our own http://)
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()
