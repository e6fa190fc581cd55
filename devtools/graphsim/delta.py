"""``GET /users/delta``: the change log of users and Graph's delta query over it.

Every change to a user gets a sequence number. A deltaLink carries ``<epoch>.<seq>`` (the log position it was
issued at); a nextLink carries the page state as JSON in ``$skiptoken``. Expiring the tokens (a new epoch) makes
every earlier deltaLink answer 410 ``syncStateNotFound``, as Graph does when a sync state is too old.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass
from typing import Any

from devtools.graphsim.state import DEFAULT_SELECT, GraphHttpError, Tenant, context, select


@dataclass
class Change:
    seq: int
    user_id: str
    removed: str | None  # None = changed/created; "changed" = soft delete; "deleted" = hard delete


class Delta:
    """The change log (``record``) and the delta query (``page``) that reads it."""

    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant
        self._changes: list[Change] = []
        self._seq = 0
        self._epoch = 0

    def record(self, user_id: str, removed: str | None) -> None:
        """Log a change to the user (``removed``: see ``Change``). Call with the lock held."""
        self._seq += 1
        self._changes.append(Change(self._seq, user_id, removed))

    def expire_tokens(self) -> None:
        with self._tenant.lock:
            self._epoch += 1

    def reset(self) -> None:
        """Forget the log; deltaLinks issued before stop working (410)."""
        with self._tenant.lock:
            self._changes.clear()
            self._epoch += 1

    def page(self, params: dict[str, str]) -> dict[str, Any]:
        tenant = self._tenant
        if "$filter" in params:
            raise GraphHttpError(400, "Request_UnsupportedQuery", "Unsupported query: $filter on delta for users")
        state: dict[str, Any]
        with tenant.lock:
            if "$deltatoken" in params:
                epoch, _, since = params["$deltatoken"].partition(".")
                if not since.isdigit() or epoch != str(self._epoch):
                    raise GraphHttpError(410, "syncStateNotFound",
                                         "The sync state generation is invalid or has expired.")
                selected = tuple(params.get("$select", ",".join(DEFAULT_SELECT)).split(","))
                state = {"mode": "changes", "since": int(since), "select": selected, "offset": 0}
            elif "$skiptoken" in params:
                try:
                    state = json.loads(urllib.parse.unquote(params["$skiptoken"]))
                except json.JSONDecodeError:
                    raise GraphHttpError(400, "Request_BadRequest", "Invalid skip token") from None
                selected = tuple(state["select"])
            else:
                selected = select(params)
                state = {"mode": "initial", "since": self._seq, "select": selected, "offset": 0}
            items: list[dict[str, Any]]
            if state["mode"] == "initial":
                items = [tenant.project(u, selected) for u in tenant.users.values()]
                end_seq = state["since"]
            else:
                latest: dict[str, Change] = {}
                for change in self._changes:
                    if change.seq > state["since"]:
                        latest[change.user_id] = change
                items = []
                for change in latest.values():
                    if change.removed:
                        items.append({"id": tenant.out_id(change.user_id), "@removed": {"reason": change.removed}})
                    elif change.user_id in tenant.users:
                        items.append(tenant.project(tenant.users[change.user_id], selected))
                end_seq = self._seq
            offset = int(state["offset"])
            page = items[offset : offset + tenant.page_size]
            body: dict[str, Any] = {"@odata.context": context(selected)}
            if offset + tenant.page_size < len(items):
                nxt = dict(state, offset=offset + tenant.page_size, since=state["since"])
                token = urllib.parse.quote(json.dumps(nxt, separators=(",", ":")))
                body["@odata.nextLink"] = f"{tenant.graph_url}/users/delta?$skiptoken={token}"
            else:
                body["@odata.deltaLink"] = (
                    f"{tenant.graph_url}/users/delta?$deltatoken={self._epoch}.{end_seq}"
                    f"&$select={','.join(selected)}"
                )
            body["value"] = page
            return body
