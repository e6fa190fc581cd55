"""KCD readiness: would application proxy get a Kerberos ticket for this guest? (``guestsync kcd``)

App Proxy's connector asks the KDC, by S4U2Self + S4U2Proxy, for a service ticket to the app's SPN on behalf of
the user whose UPN equals the signed-in guest's Entra UPN (Delegated Login Identity = user principal name). So a
guest is ready when its shadow account is in the managed guest OU, enabled, has exactly the Entra UPN, and
requires a smart card (no password sign-in; S4U does not need one). Where the admin supplies a delegation-enabled
principal and the app's SPN, the KDC itself is asked, which is the only answer that counts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from shared.core.domain import UAC_SMARTCARD_REQUIRED, AdAccount, GuestStatus, graph_id
from shared.core.ports import DelegationTester, GuestDirectory, RecordStore
from shared.core.records import GuestRecord

#: Guests expected to sign in: the default selection when the admin names none.
SIGN_IN_STATUSES = frozenset({GuestStatus.PROVISIONED, GuestStatus.PENDING, GuestStatus.ERROR})


@dataclass
class GuestReadiness:
    """One guest's answer: what is wrong as the directory shows it, and the KDC's answer when it was asked."""

    guest: str  # what the admin named, or the uid
    uid: str | None
    user_principal_name: str | None
    status: str | None
    dn: str | None = None
    problems: list[str] = field(default_factory=list)
    ticket: bool | None = None  # None: the KDC was not asked
    ticket_detail: str | None = None

    @property
    def ready(self) -> bool:
        return not self.problems and self.ticket is not False

    def as_dict(self) -> dict[str, Any]:
        return {"guest": self.guest, "uid": self.uid, "userPrincipalName": self.user_principal_name,
                "status": self.status, "dn": self.dn, "ready": self.ready, "problems": list(self.problems),
                "ticket": None if self.ticket is None else ("issued" if self.ticket else "refused"),
                "ticketDetail": self.ticket_detail}


def _record_for(state: RecordStore, records: Iterable[GuestRecord], name: str) -> GuestRecord | None:
    """The guest an admin named by its object id or by its Entra UPN (any letter case)."""
    if "@" not in name:
        return state.get(graph_id(name))
    wanted = name.strip().lower()
    return next((r for r in records if (r.entry.user_principal_name or "").lower() == wanted), None)


def _account(directory: GuestDirectory, record: GuestRecord) -> AdAccount | None:
    """The joined account (by objectSid, wherever it was moved in the managed OUs), else the one at CN=<uid>."""
    account = directory.find_by_sid(record.object_sid) if record.object_sid else None
    return account or directory.find_guest(record.uid)


def _problems(record: GuestRecord, account: AdAccount | None, guest_ou: str) -> list[str]:
    if account is None:
        return ["no account in AD (not provisioned, or deleted)"]
    problems = []
    if not account.dn.lower().endswith("," + guest_ou.lower()):
        problems.append(f"account outside the guest OU ({account.dn})")
    if account.disabled:
        problems.append("account disabled")
    ad_upn, entra_upn = account.attributes.get("userPrincipalName"), record.entry.user_principal_name
    if ad_upn != entra_upn:
        problems.append(f"AD userPrincipalName {ad_upn!r} is not the Entra UPN {entra_upn!r}")
    if not (account.user_account_control or 0) & UAC_SMARTCARD_REQUIRED:
        problems.append("smart card not required (userAccountControl lacks SMARTCARD_REQUIRED 0x40000: the "
                        "account has a usable password)")
    return problems


def check_guests(state: RecordStore, records: Iterable[GuestRecord], directory: GuestDirectory, guest_ou: str,
                 names: list[str], tester: DelegationTester | None = None) -> Iterator[GuestReadiness]:
    """Each named guest's readiness (by uid or Entra UPN), or every guest expected to sign in when none is named;
    with a tester, the KDC's answer for each guest's Entra UPN too (a name unknown to guestsync that looks like a
    UPN is still asked: a member's or a typo's refusal is worth seeing)."""
    all_records = list(records)
    if names:
        selection: list[tuple[str, GuestRecord | None]] = [(n, _record_for(state, all_records, n)) for n in names]
    else:
        selection = [(r.uid, r) for r in sorted(all_records, key=lambda r: r.entry.user_principal_name or r.uid)
                     if r.status in SIGN_IN_STATUSES]
    for name, record in selection:
        if record is None:
            upn = name if "@" in name else None
            result = GuestReadiness(name, None, upn, None, problems=["not a guest guestsync knows (no state record)"])
        else:
            account = _account(directory, record)
            result = GuestReadiness(name, record.uid, record.entry.user_principal_name, record.status.value,
                                    account.dn if account else None, _problems(record, account, guest_ou))
            if record.status is not GuestStatus.PROVISIONED:
                result.problems.insert(0, f"guestsync state is {record.status.value}"
                                          + (f": {record.reason}" if record.reason else ""))
        if tester is not None and result.user_principal_name:
            ticket = tester.ticket_for(result.user_principal_name)
            result.ticket, result.ticket_detail = ticket.issued, ticket.detail
        yield result


def render_line(result: GuestReadiness, spn: str | None) -> str:
    """One line per guest: ready or not, and why."""
    who = f"{result.uid or '-'}  {result.user_principal_name or result.guest}"
    if result.ticket:
        verdict = f"application proxy would get a ticket for {spn}"
    elif result.ticket is False:
        verdict = f"application proxy would NOT get a ticket for {spn}: {result.ticket_detail}"
    else:
        verdict = "not tested against the KDC (give --connector and --spn)"
    reasons = "; ".join(result.problems)
    text = f"{verdict}; {reasons}" if reasons else verdict
    return f"{'ready' if result.ready else 'NOT READY':<9}  {who}: {text}"
