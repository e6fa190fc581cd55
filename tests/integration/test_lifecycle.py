"""Guest lifecycle end to end: deprovisioning and restore, reconcile, the breaker, plan/status/approve.

Real Azurite, Samba AD DC (LDAPS, delegated service account) and the msgraph-sdk against the Graph
simulator, through the function app's registrations on the local runner.
"""

from __future__ import annotations

import json
from typing import Any

import ldap3
import pytest

from shared import cli
from shared.core.ad_rules import format_sid
from shared.core.domain import UAC_ACCOUNTDISABLE, GuestStatus
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration


def _account(stack: Stack, uid: str) -> tuple[str, int, dict[str, Any]] | None:
    """(dn, userAccountControl, attributes) of CN=<uid> anywhere in the domain, or None."""
    base = stack.guest_ou.split(",", 1)[1]
    stack.admin.search(base, f"(&(objectClass=user)(cn={uid}))", ldap3.SUBTREE,
                       attributes=["userAccountControl", "givenName", "displayName", "objectSid"])
    if not stack.admin.entries:
        return None
    entry = stack.admin.entries[0]
    return entry.entry_dn, int(entry.userAccountControl.value), entry.entry_attributes_as_dict


def _sid_of(attrs: dict[str, Any]) -> str:
    value = attrs["objectSid"][0]
    return format_sid(value) if isinstance(value, bytes) else str(value)


def _provision(stack: Stack, count: int = 1, prefix: str = "g") -> list[str]:
    guests = [stack.sim.invite_guest(f"{prefix}{i}@fabrikam.com", f"Guest {prefix}{i}",  # type: ignore[attr-defined]
                                     "Given", "Sur") for i in range(count)]
    uids = [g["id"] for g in guests]
    stack.wait(lambda: stack.settled(uids), f"{count} account(s)")
    return uids


def _status(stack: Stack, uid: str) -> GuestStatus | None:
    record = stack.state.get(uid)
    return record.status if record else None


def _assert_archived(stack: Stack, uid: str, sid: str | None) -> None:
    stack.wait(lambda: _status(stack, uid) is GuestStatus.ARCHIVED, f"{uid} archived")
    found = _account(stack, uid)
    assert found is not None
    dn, uac, attrs = found
    assert dn.lower().endswith(stack.archive_ou.lower()), dn
    assert uac & UAC_ACCOUNTDISABLE
    assert _sid_of(attrs) == sid


def _assert_restored(stack: Stack, uid: str, sid: str | None) -> None:
    stack.wait(lambda: _status(stack, uid) is GuestStatus.PROVISIONED, f"{uid} restored")
    found = _account(stack, uid)
    assert found is not None
    dn, uac, attrs = found
    assert dn.lower().endswith(stack.guest_ou.lower()), dn
    assert not uac & UAC_ACCOUNTDISABLE
    assert uac == 262656
    assert _sid_of(attrs) == sid


def _sid(stack: Stack, uid: str) -> str | None:
    record = stack.state.get(uid)
    return record.object_sid if record else None


@pytest.mark.parametrize(("leave", "come_back"), [
    ("delete", "restore"),
    ("disable", "enable"),
    ("member", "guest"),
])
def test_leaving_scope_archives_and_returning_restores(stack: Stack, leave: str, come_back: str) -> None:
    sim: Any = stack.sim
    (uid,) = _provision(stack)
    sid = _sid(stack, uid)
    if leave == "delete":
        sim.delete_user(uid)
    elif leave == "disable":
        sim.update_user(uid, accountEnabled=False)
    else:
        sim.update_user(uid, userType="Member")
    _assert_archived(stack, uid, sid)
    record = stack.state.get(uid)
    assert record is not None and record.archived_at is not None and record.reason

    if come_back == "restore":
        sim.restore_user(uid)
    elif come_back == "enable":
        sim.update_user(uid, accountEnabled=True)
    else:
        sim.update_user(uid, userType="Guest")
    _assert_restored(stack, uid, sid)


def test_hard_delete_archives_then_grace_period_deletes(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    sim: Any = stack.sim
    (uid,) = _provision(stack)
    sid = _sid(stack, uid)
    sim.hard_delete_user(uid)
    _assert_archived(stack, uid, sid)
    # The grace period is over (0 days): the next reconcile deletes the account and forgets the guest.
    stack.configure(GUESTSYNC_DELETE_AFTER_DAYS="0")
    stack.reconcile()
    stack.wait(lambda: stack.state.get(uid) is None, "the record dropped with the account")
    assert _account(stack, uid) is None


@pytest.mark.parametrize("stack", [{"GUESTSYNC_DEPROVISION": "none"}], indirect=True)
def test_policy_none_leaves_the_account_alone(stack: Stack) -> None:
    sim: Any = stack.sim
    (uid,) = _provision(stack)
    sim.delete_user(uid)
    stack.wait(lambda: _status(stack, uid) is GuestStatus.OUT_OF_SCOPE, "out of scope")
    stack.drain()
    found = _account(stack, uid)
    assert found is not None and found[0].lower().endswith(stack.guest_ou.lower()) and found[1] == 262656


def test_dropped_notification_is_caught_by_the_next_reconcile(stack: Stack) -> None:
    sim: Any = stack.sim
    _provision(stack, 2)
    stack.reconcile()  # first run: full pass, stores the deltaLink
    sim.drop_next_notifications(1)
    missed = sim.invite_guest("missed@fabrikam.com", "Missed Guest", "Mis", "Sed")
    _provision(stack, 1, "later")  # the pipeline works: only that one notification was lost
    assert stack.state.get(missed["id"]) is None
    report = stack.reconcile()
    assert report["deltaMode"] == "incremental"
    stack.wait(lambda: stack.settled([missed["id"]]), "the missed guest's account")
    assert _account(stack, missed["id"]) is not None


def test_manual_ad_edits_persistent_repaired_initial_only_kept(stack: Stack) -> None:
    (uid,) = _provision(stack)
    record = stack.state.get(uid)
    assert record is not None and record.dn
    assert stack.admin.modify(record.dn, {"givenName": [(ldap3.MODIFY_REPLACE, ["Tampered"])],
                                          "userAccountControl": [(ldap3.MODIFY_REPLACE, ["512"])]})
    report = stack.reconcile()
    assert report["actions"].get("update") == 1
    stack.drain()
    found = _account(stack, uid)
    assert found is not None
    assert found[2]["givenName"] == ["Given"]  # persistent: repaired
    assert found[1] == 512  # initial-only: left as the admin set it


def test_foreign_object_is_reported_and_untouched_and_deleted_account_recreated(stack: Stack) -> None:
    (uid,) = _provision(stack)
    foreign_dn = f"CN=Someone Else,{stack.guest_ou}"
    assert stack.admin.add(foreign_dn, ["top", "person", "organizationalPerson", "user"],
                           {"sAMAccountName": "someone.else", "givenName": "Someone"}), stack.admin.result
    record = stack.state.get(uid)
    assert record is not None and record.dn
    assert stack.admin.delete(record.dn)  # an admin deletes the guest's account by hand

    report = stack.reconcile()
    actions = {f["action"]: f for f in report["findings"]}
    assert actions["foreign"]["dn"].lower() == foreign_dn.lower()
    assert actions["create"]["uid"] == uid
    stack.wait(lambda: (r := stack.state.get(uid)) is not None and r.status is GuestStatus.PROVISIONED
               and r.object_sid != record.object_sid, "the recreated account")
    stack.admin.search(foreign_dn, "(objectClass=*)", ldap3.BASE, attributes=["givenName", "whenChanged"])
    assert stack.admin.entries and stack.admin.entries[0].givenName.value == "Someone"


@pytest.mark.parametrize("stack", [{"GUESTSYNC_BREAKER_THRESHOLD": "10", "GUESTSYNC_BREAKER_WINDOW_MINUTES": "60"}],
                         indirect=True)
def test_breaker_holds_mass_removals_until_approved(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    sim: Any = stack.sim
    uids = _provision(stack, 50, "mass")
    for uid in uids:
        sim.delete_user(uid)
    stack.wait(lambda: all(_status(stack, u) in (GuestStatus.ARCHIVED, GuestStatus.HELD) for u in uids),
               "every removal archived or held", 120)
    stack.drain()
    archived = [u for u in uids if _status(stack, u) is GuestStatus.ARCHIVED]
    held = [u for u in uids if _status(stack, u) is GuestStatus.HELD]
    assert len(archived) == 10 and len(held) == 40
    disabled = [u for u in uids if (a := _account(stack, u)) and a[1] & UAC_ACCOUNTDISABLE]
    assert sorted(disabled) == sorted(archived)

    # The operator sees why, in status and in approve's listing.
    status = stack.cli_json("status", "--json")
    assert status["guests"]["held"] == 40
    assert "GUESTSYNC_BREAKER_THRESHOLD=10" in status["held"][0]["held"]
    listing = stack.cli_json("approve", "--json")
    assert len(listing["held"]) == 40

    # A reconcile does not release them either.
    stack.reconcile()
    stack.drain()
    assert sum(_status(stack, u) is GuestStatus.HELD for u in uids) == 40

    reject, approve = held[:5], held[5:]
    assert cli.main(["approve", "--reject", *reject]) == 0
    assert cli.main(["approve", "--all"]) == 0
    stack.wait(lambda: all(_status(stack, u) is GuestStatus.ARCHIVED for u in approve), "approved removals", 120)
    for uid in reject:
        assert _status(stack, uid) is GuestStatus.OUT_OF_SCOPE
        found = _account(stack, uid)
        assert found is not None and not found[1] & UAC_ACCOUNTDISABLE  # kept, as the operator decided
    assert all(stack.state.get(u) is not None for u in uids)  # nothing lost


def test_plan_lists_what_reconcile_would_do_and_changes_nothing(stack: Stack) -> None:
    sim: Any = stack.sim
    uids = _provision(stack, 3, "plan")
    stack.reconcile()
    drifted, gone, disabled = uids
    record = stack.state.get(drifted)
    assert record is not None and record.dn
    assert stack.admin.modify(record.dn, {"displayName": [(ldap3.MODIFY_REPLACE, ["Drifted"])]})
    gone_record = stack.state.get(gone)
    assert gone_record is not None and gone_record.dn and stack.admin.delete(gone_record.dn)
    sim.drop_next_notifications(2)
    new = sim.invite_guest("new@fabrikam.com", "New Guest", "New", "Guest")
    sim.update_user(disabled, accountEnabled=False)
    before = {u: stack.state.get(u) for u in uids}

    plan = stack.cli_json("plan", "--json")
    by_uid = {(f["uid"], f["action"]): f for f in plan["findings"]}
    assert (new["id"], "create") in by_uid
    assert (disabled, "disable") in by_uid and "accountEnabled" in by_uid[(disabled, "disable")]["reason"]
    assert (drifted, "update") in by_uid and "displayName" in by_uid[(drifted, "update")]["reason"]
    assert (gone, "create") in by_uid and "deleted outside guestsync" in by_uid[(gone, "create")]["reason"]
    assert plan["dryRun"] is True
    # Nothing was written: no new guest, no queued export, no AD change.
    assert stack.state.get(new["id"]) is None
    assert {u: stack.state.get(u) for u in uids} == before
    assert stack.host_queue_count() == 0
    found = _account(stack, drifted)
    assert found is not None and found[2]["displayName"] == ["Drifted"]

    human = stack.cli_text("plan")
    assert "would do:" in human and new["id"] in human

    stack.reconcile()  # the real run does what the plan said
    stack.wait(lambda: stack.settled([new["id"], drifted, gone]) and _status(stack, disabled)
               is GuestStatus.ARCHIVED, "the planned changes")


def test_status_reports_counts_errors_subscription_and_last_reconcile(stack: Stack) -> None:
    _provision(stack, 2, "st")
    clash = stack.sim.invite_guest("clash@fabrikam.com", "Clash", "C", "L")  # type: ignore[attr-defined]
    stack.wait(lambda: stack.settled([clash["id"]]), "the clash guest")
    # Make the next export of this guest fail with a readable AD error: its UPN is taken by a foreign object.
    taken = "taken#EXT#@contoso.onmicrosoft.com"
    assert stack.admin.add(f"CN=Taken,{stack.guest_ou}", ["top", "person", "organizationalPerson", "user"],
                           {"sAMAccountName": "taken.upn", "userPrincipalName": taken})
    stack.sim.update_user(clash["id"], userPrincipalName=taken)  # type: ignore[attr-defined]
    stack.wait(lambda: _status(stack, clash["id"]) is GuestStatus.ERROR, "the export error")
    report = stack.reconcile()
    assert report["actions"].get("update") == 1  # the guest in error is retried by every reconcile
    stack.drain()

    status = stack.cli_json("status", "--json")
    assert status["guests"]["provisioned"] == 2 and status["guests"]["error"] == 1
    assert status["errors"][0]["uid"] == clash["id"] and status["errors"][0]["error"]
    assert isinstance(status["subscriptions"], list) and len(status["subscriptions"]) == 1
    assert status["subscriptions"][0]["hoursLeft"] > 24 * 20
    assert status["lastReconcile"]["finishedAt"] and status["lastReconcile"]["guestsInState"] == 3
    assert status["lastReconcile"]["actions"].get("foreign") == 1
    assert status["delta"]["at"]
    assert status["pendingExports"] == 0
    text = stack.cli_text("status")
    assert "Guests by state:" in text and "Last reconcile:" in text and clash["id"] in text


def test_missed_lifecycle_event_triggers_a_delta_catch_up(stack: Stack) -> None:
    sim: Any = stack.sim
    _provision(stack, 1, "lc")
    stack.reconcile()
    sim.drop_next_notifications(1)
    missed = sim.invite_guest("lifecycle@fabrikam.com", "Lifecycle Guest", "Life", "Cycle")
    (sub_id,) = list(sim.subscriptions)
    sim.send_lifecycle(sub_id, "missed")
    stack.wait(lambda: stack.settled([missed["id"]]), "the catch-up")


def test_a_missed_event_queued_by_the_previous_version_still_catches_up(stack: Stack) -> None:
    """A subscription event already on the change queue when the app is upgraded, in the shape the previous
    version wrote (the subscription id in ``user_id``), is still handled."""
    from shared import bootstrap
    from shared.core.records import utcnow

    sim: Any = stack.sim
    stack.reconcile()
    sim.drop_next_notifications(1)
    missed = sim.invite_guest("queued@fabrikam.com", "Queued Event", "Que", "Ued")
    (sub_id,) = list(sim.subscriptions)
    bootstrap.services().change_queue.send(json.dumps({
        "v": 1, "user_id": sub_id, "change_type": "lifecycle:missed", "received_at": utcnow().isoformat(),
        "source": "lifecycle", "correlation_id": "queued-before-the-upgrade"}))
    stack.wait(lambda: stack.settled([missed["id"]]), "the catch-up")


def test_subscription_removed_is_recreated_and_caught_up(stack: Stack) -> None:
    sim: Any = stack.sim
    stack.reconcile()
    (old,) = list(sim.subscriptions)
    sim.drop_next_notifications(1)
    missed = sim.invite_guest("removed@fabrikam.com", "Removed Sub", "Re", "Moved")
    sim.send_lifecycle(old, "subscriptionRemoved")  # Graph has removed it: it is gone from the list too
    sim.subscriptions.pop(old)
    stack.wait(lambda: len(sim.subscriptions) == 1 and old not in sim.subscriptions, "a new subscription")
    stack.wait(lambda: stack.settled([missed["id"]]), "the catch-up")
    json.dumps(stack.cli_json("status", "--json"))


SCOPE_GROUP = "6f1c7d2e-5a4b-4c3d-9e8f-0a1b2c3d4e5f"


@pytest.mark.parametrize("stack", [{"GUESTSYNC_SCOPE_GROUP_ID": SCOPE_GROUP}], indirect=True)
def test_scoping_group_transitive_membership_and_removal(stack: Stack) -> None:
    sim: Any = stack.sim
    sim.add_group("B2B app users", group_id=SCOPE_GROUP)
    nested = sim.add_group("Partners of partners")["id"]
    sim.add_group_member(SCOPE_GROUP, nested)
    direct = sim.invite_guest("direct@fabrikam.com", "Direct Member", "Di", "Rect")["id"]
    via_nested = sim.invite_guest("nested@fabrikam.com", "Nested Member", "Nes", "Ted")["id"]
    outsider = sim.invite_guest("outsider@fabrikam.com", "Not In Group", "Out", "Sider")["id"]
    sim.add_group_member(SCOPE_GROUP, direct)
    sim.add_group_member(nested, via_nested)
    stack.drain()
    stack.reconcile()  # membership changes send no notification: the reconcile compares the group
    stack.wait(lambda: stack.settled([direct, via_nested]), "accounts for the group's guests")
    assert _account(stack, outsider) is None and stack.state.get(outsider) is None
    sid = _sid(stack, via_nested)

    sim.remove_group_member(nested, via_nested)
    report = stack.reconcile()
    assert report["actions"].get("disable") == 1
    _assert_archived(stack, via_nested, sid)
    record = stack.state.get(via_nested)
    assert record is not None and "scoping group" in (record.reason or "")

    sim.add_group_member(nested, via_nested)
    stack.reconcile()
    _assert_restored(stack, via_nested, sid)
    # A change notification for a guest outside the group still creates nothing.
    sim.update_user(outsider, givenName="Still Out")
    stack.drain()
    assert stack.state.get(outsider) is None


def test_expired_delta_token_falls_back_to_a_full_pass(stack: Stack) -> None:
    sim: Any = stack.sim
    _provision(stack, 2, "exp")
    assert stack.reconcile()["deltaMode"] == "full"
    assert stack.reconcile()["deltaMode"] == "incremental"
    sim.drop_next_notifications(1)
    missed = sim.invite_guest("expired@fabrikam.com", "Expired Token", "Ex", "Pired")
    sim.expire_delta_tokens()  # Graph answers 410 Gone to the stored deltaLink
    report = stack.reconcile()
    assert report["deltaMode"] == "full"
    assert report["actions"] == {"create": 1}  # only the missed guest: the others are in sync
    stack.wait(lambda: stack.settled([missed["id"]]), "the missed guest")
    assert stack.reconcile()["deltaMode"] == "incremental"  # a fresh deltaLink was stored


def test_reauthorization_and_renewal_keep_the_subscription_alive(stack: Stack) -> None:
    from datetime import UTC, datetime, timedelta

    sim: Any = stack.sim
    (sub_id,) = list(sim.subscriptions)
    soon = datetime.now(UTC) + timedelta(hours=2)
    sim.subscriptions[sub_id].expiration = soon
    sim.send_lifecycle(sub_id, "reauthorizationRequired")
    stack.wait(lambda: sim.subscriptions[sub_id].expiration > soon + timedelta(days=20), "the reauthorization")

    sim.subscriptions[sub_id].expiration = soon  # the upkeep timer renews a subscription that expires soon
    result = stack.host.trigger_timer("maintain_subscription", timeout=30)
    assert result.succeeded, result.error
    assert sim.subscriptions[sub_id].expiration > soon + timedelta(days=20)
    assert list(sim.subscriptions) == [sub_id]


def test_a_burst_of_member_changes_is_read_from_graph_in_batches(stack: Stack) -> None:
    sim: Any = stack.sim
    members = [sim.add_user(displayName=f"Member {i}", userType="Member", userPrincipalName=f"m{i}@contoso.com")
               for i in range(60)]
    guests = _provision(stack, 3, "burst")
    sim.wait_for_deliveries()
    stack.drain()
    sim.request_count.clear()
    for _ in range(3):  # 180 notifications for members, 3 for guests, in a burst
        for member in members:
            sim.update_user(member["id"], jobTitle="x")
    for uid in guests:
        sim.update_user(uid, givenName="Burst")
    sim.wait_for_deliveries()
    stack.wait(lambda: all((r := stack.state.get(u)) is not None and r.entry.given_name == "Burst"
                           and r.exported_version == r.version for u in guests), "the guests' change")
    stack.drain()
    reads = sim.request_count["GET /users"] + sim.request_count["GET /users/{id}"]
    assert reads <= 183 // 5, sim.request_count  # one request per up to 15 users of a delivery, not one per user
    assert all(stack.state.get(m["id"]) is None for m in members)


def _upn_in_ad(stack: Stack, uid: str) -> str | None:
    base = stack.guest_ou.split(",", 1)[1]
    stack.admin.search(base, f"(&(objectClass=user)(cn={uid}))", ldap3.SUBTREE, attributes=["userPrincipalName"])
    values = stack.admin.entries[0].entry_attributes_as_dict.get("userPrincipalName") if stack.admin.entries else None
    return values[0] if values else None


def test_reinvite_after_a_permanent_delete_gets_a_new_account(stack: Stack) -> None:
    sim: Any = stack.sim
    first = sim.invite_guest("again@fabrikam.com", "Again Guest", "Again", "Guest")
    stack.wait(lambda: stack.settled([first["id"]]), "the first account")
    sid = _sid(stack, first["id"])
    sim.hard_delete_user(first["id"])
    _assert_archived(stack, first["id"], sid)  # disabled, in the archive OU, same objectSid...
    stack.wait(lambda: _upn_in_ad(stack, first["id"]) is None, "the archived account to release its UPN")

    second = sim.invite_guest("again@fabrikam.com", "Again Guest", "Again", "Guest")  # new id, same UPN
    assert second["id"] != first["id"] and second["userPrincipalName"] == first["userPrincipalName"]
    stack.wait(lambda: _status(stack, second["id"]) in (GuestStatus.PROVISIONED, GuestStatus.ERROR), "re-invite")
    record = stack.state.get(second["id"])
    assert record is not None and record.status is GuestStatus.PROVISIONED, record.error
    assert _upn_in_ad(stack, second["id"]) == second["userPrincipalName"]
    archived = stack.state.get(first["id"])
    assert archived is not None and archived.status is GuestStatus.ARCHIVED and archived.object_sid == sid


def test_a_soft_deleted_guest_past_the_restore_window_releases_its_upn(stack: Stack) -> None:
    from datetime import timedelta

    sim: Any = stack.sim
    (uid,) = _provision(stack, prefix="window")
    sid = _sid(stack, uid)
    sim.delete_user(uid)  # soft delete: restorable for 30 days, the UPN stays with the archived account
    _assert_archived(stack, uid, sid)
    stack.reconcile()
    stack.drain()
    assert _upn_in_ad(stack, uid) is not None, "within the restore window the UPN is kept"
    record = stack.state.get(uid)
    assert record is not None and record.archived_at is not None
    stack.state.save(record.evolve(archived_at=record.archived_at - timedelta(days=31)))
    stack.reconcile()
    stack.wait(lambda: _upn_in_ad(stack, uid) is None, "the UPN released after the restore window")
    assert _status(stack, uid) is GuestStatus.ARCHIVED


def test_a_lifecycle_storm_costs_one_reconcile_and_one_re_creation(stack: Stack,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.services import reconcile
    from tests.reliability.faults import post

    sim: Any = stack.sim
    stack.reconcile()
    (old,) = list(sim.subscriptions)
    sim.drop_next_notifications(1)
    missed = sim.invite_guest("storm@fabrikam.com", "Storm Guest", "St", "Orm")
    runs: list[int] = []
    real_run = reconcile.Reconciler.run

    async def counted(self: reconcile.Reconciler, *args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return await real_run(self, *args, **kwargs)

    monkeypatch.setattr(reconcile.Reconciler, "run", counted)
    removed = sim.subscriptions.pop(old)  # Graph has removed it
    sim.request_count.clear()

    def event(name: str) -> dict[str, Any]:
        return {"subscriptionId": old, "subscriptionExpirationDateTime": "2099-01-01T00:00:00Z",
                "clientState": removed.client_state, "tenantId": sim.tenant_id, "lifecycleEvent": name}

    storm = {"value": [event("missed")] * 100 + [event("subscriptionRemoved")] * 50}
    assert post(stack, storm, "/api/graph/lifecycle")[0] == 202
    stack.wait(lambda: stack.settled([missed["id"]]) and len(sim.subscriptions) == 1, "the catch-up")
    stack.drain(timeout=120)
    subscription_calls = {k: v for k, v in sim.request_count.items() if "/subscriptions" in k}
    assert len(runs) == 1, f"{len(runs)} reconciles"
    assert subscription_calls.get("POST /subscriptions") == 1, subscription_calls
    assert sum(subscription_calls.values()) <= 2, subscription_calls  # one list, one create
    (new,) = list(sim.subscriptions)
    assert new != old


def test_catch_ups_coalesce_across_a_burst_one_per_window(stack: Stack) -> None:
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime, timedelta

    from shared.services.subscriptions import CATCH_UP_WINDOW, CatchUp, claim_catch_up

    t0 = datetime.now(UTC)

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    def claim(received: float, token: str, now: float) -> CatchUp:
        return claim_catch_up(stack.state, at(received), token, lambda: at(now)).decision

    # Twenty messages of one burst, claimed at once by several instances: one catch-up runs, it covers the rest.
    with ThreadPoolExecutor(8) as pool:
        decisions = list(pool.map(lambda i: claim(0, f"burst-{i}", 1), range(20)))
    assert decisions.count(CatchUp.RUN) == 1 and decisions.count(CatchUp.COVERED) == 19
    # An event after that start, within the window: one message waits for the window's end, later ones ride on it.
    late = claim_catch_up(stack.state, at(10), "late-1", lambda: at(11))
    assert late.decision is CatchUp.DEFERRED
    assert abs(late.delay_seconds - (CATCH_UP_WINDOW.total_seconds() - 11)) <= 2
    assert claim(20, "late-2", 21) is CatchUp.COVERED
    window_end = CATCH_UP_WINDOW.total_seconds() + 2
    assert claim(10, "late-1", window_end) is CatchUp.RUN  # the deferred message, back at the window's end
    assert claim(20, "late-2", window_end + 1) is CatchUp.COVERED
    assert claim(10, "late-1", window_end + 60) is CatchUp.RUN  # a retry of the message that claimed the run
