"""Alert mail for real: SMTP against a local aiosmtpd server (plain, STARTTLS and implicit TLS with the local
test CA, login), Graph sendMail through msgraph-sdk against the Graph simulator, and end to end through the
function app on the local runner (export error, held deprovisioning, poison message, a failing mailer)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from devtools.graphsim.server import GraphSimulator
from devtools.localenv.certs import LocalPki, create_local_pki
from shared import bootstrap
from shared.adapters.graph import GraphClient
from shared.adapters.mail import GraphMailer, MailError, NoMailer, SmtpMailer, mailer_from_settings
from shared.adapters.queues import MessageQueue
from shared.core.domain import GuestStatus
from shared.settings import GraphSettings, MailSettings, load_mail_settings
from tests.plugins.stack import Stack

pytestmark = pytest.mark.integration

ADMINS = ("admin1@contoso.com", "admin2@contoso.com")
SENDER_UPN = "guestsync-alerts@contoso.onmicrosoft.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Inbox:
    """aiosmtpd handler: keeps every accepted message."""

    def __init__(self) -> None:
        self.envelopes: list[tuple[str, list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), message_from_bytes(envelope.content)))
        return "250 OK"


class Logins:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user, password
        self.seen: list[str] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        assert isinstance(auth_data, LoginPassword)
        self.seen.append(auth_data.login.decode())
        ok = auth_data.login.decode() == self.user and auth_data.password.decode() == self.password
        return AuthResult(success=ok, handled=False)


def _server_context(pki: LocalPki) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.cert_file), str(pki.key_file))
    return context


@contextlib.contextmanager
def smtp_server(inbox: Inbox, **options: Any) -> Iterator[int]:
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port, **options)
    controller.start()
    try:
        yield port
    finally:
        controller.stop()


def test_plain_smtp_delivers_a_plain_text_mail() -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:
        mailer = SmtpMailer("127.0.0.1", port, "guestsync@contoso.com", ADMINS, security="none")
        asyncio.run(mailer.send("[guestsync] 1 guest(s)\nX-Injected: yes", "line 1\nline 2 — ünïcode\n"))
    ((sender, rcpts, msg),) = inbox.envelopes
    assert sender == "guestsync@contoso.com" and rcpts == list(ADMINS)
    assert msg["Subject"] == "[guestsync] 1 guest(s) X-Injected: yes" and msg["X-Injected"] is None
    assert msg["Auto-Submitted"] == "auto-generated" and msg.get_content_type() == "text/plain"
    payload = msg.get_payload(decode=True)
    assert isinstance(payload, bytes) and "line 2 — ünïcode" in payload.decode(msg.get_content_charset() or "utf-8")


def test_starttls_validates_the_certificate_and_logs_in_without_logging_the_password(
        local_pki: LocalPki, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    inbox, password = Inbox(), secrets.token_urlsafe(16)
    logins = Logins("svc-mail", password)
    with smtp_server(inbox, tls_context=_server_context(local_pki), require_starttls=True, authenticator=logins,
                     auth_require_tls=True, auth_required=True) as port:
        mailer = SmtpMailer("localhost", port, "guestsync@contoso.com", ADMINS[:1], security="starttls",
                            username="svc-mail", password=password, ca_file=str(local_pki.ca_file))
        assert password not in repr(mailer)
        asyncio.run(mailer.send("subject", "body"))
        assert len(inbox.envelopes) == 1 and logins.seen == ["svc-mail"]

        wrong = SmtpMailer("localhost", port, "guestsync@contoso.com", ADMINS[:1], security="starttls",
                           username="svc-mail", password="not-" + password, ca_file=str(local_pki.ca_file))
        with pytest.raises(MailError, match="refused the login of 'svc-mail'") as refused:
            asyncio.run(wrong.send("subject", "body"))
        assert password not in str(refused.value)
    assert password not in caplog.text


def test_starttls_refuses_a_certificate_from_another_ca(local_pki: LocalPki, tmp_path: Path) -> None:
    other = create_local_pki(tmp_path / "other")
    inbox = Inbox()
    with smtp_server(inbox, tls_context=_server_context(local_pki), require_starttls=True) as port:
        mailer = SmtpMailer("localhost", port, "guestsync@contoso.com", ADMINS, security="starttls",
                            ca_file=str(other.ca_file))
        with pytest.raises(MailError, match="certificate is not trusted"):
            asyncio.run(mailer.send("subject", "body"))
    assert inbox.envelopes == []


def test_starttls_is_required_when_configured() -> None:
    inbox = Inbox()
    with smtp_server(inbox) as port:  # a relay without STARTTLS
        mailer = SmtpMailer("127.0.0.1", port, "guestsync@contoso.com", ADMINS, security="starttls")
        with pytest.raises(MailError, match="does not offer STARTTLS"):
            asyncio.run(mailer.send("subject", "body"))
    assert inbox.envelopes == []


def test_implicit_tls(local_pki: LocalPki) -> None:
    inbox = Inbox()
    with smtp_server(inbox, ssl_context=_server_context(local_pki)) as port:
        mailer = SmtpMailer("localhost", port, "guestsync@contoso.com", ADMINS, security="tls",
                            ca_file=str(local_pki.ca_file))
        asyncio.run(mailer.send("over TLS", "body"))
    assert [m["Subject"] for _, _, m in inbox.envelopes] == ["over TLS"]


def test_closed_port_is_a_readable_error_within_the_timeout() -> None:
    mailer = SmtpMailer("127.0.0.1", free_port(), "guestsync@contoso.com", ADMINS, security="none", timeout=3)
    started = time.monotonic()
    with pytest.raises(MailError, match=r"could not hand the mail to SMTP relay 127\.0\.0\.1:\d+"):
        asyncio.run(mailer.send("subject", "body"))
    assert time.monotonic() - started < 5


def test_mailer_from_settings() -> None:
    assert isinstance(mailer_from_settings(load_mail_settings({})), NoMailer)
    smtp = mailer_from_settings(load_mail_settings({
        "GUESTSYNC_MAIL": "smtp", "GUESTSYNC_MAIL_TO": "a@contoso.com, b@contoso.com",
        "GUESTSYNC_MAIL_FROM": "guestsync@contoso.com", "SMTP_HOST": "smtp.contoso.com", "SMTP_SECURITY": "tls",
        "SMTP_USERNAME": "u", "SMTP_PASSWORD": "p@ss",
    }))
    assert isinstance(smtp, SmtpMailer)
    assert (smtp.host, smtp.port, smtp.security, smtp.to, smtp.timeout) == (
        "smtp.contoso.com", 465, "tls", ("a@contoso.com", "b@contoso.com"), 10.0)
    assert "p@ss" not in repr(smtp)


# ------------------------------------------------------------------------------------------------------ Graph


def _graph_mailer(settings: GraphSettings, sender: str = SENDER_UPN) -> tuple[GraphClient, GraphMailer]:
    client = GraphClient(settings)
    mailer = mailer_from_settings(MailSettings(mode="graph", to=ADMINS, sender=sender), client)
    assert isinstance(mailer, GraphMailer)
    return client, mailer


def test_graph_send_mail_posts_the_documented_body(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    graph.add_user(userPrincipalName=SENDER_UPN, mail=SENDER_UPN, displayName="guestsync alerts")

    async def run() -> None:
        client, mailer = _graph_mailer(graph_settings)
        async with client:
            await mailer.send("[guestsync] subject", "first line\nsecond line\n")

    asyncio.run(run())
    (mail,) = graph.sent_mail
    # msgraph-sdk writes the action parameters capitalised (Graph matches them without regard to case).
    request = {k.lower(): v for k, v in mail["request"].items()}
    assert request == {
        "message": {
            "@odata.type": "#microsoft.graph.message",
            "subject": "[guestsync] subject",
            "body": {"contentType": "text", "content": "first line\nsecond line\n"},
            "toRecipients": [{"emailAddress": {"address": a}} for a in ADMINS],
        },
        "savetosentitems": False,
    }
    assert mail["to"] == list(ADMINS) and mail["from"] == SENDER_UPN and mail["saveToSentItems"] is False
    assert mail["content"] == "first line\nsecond line\n" and mail["contentType"] == "text"


def test_graph_send_mail_errors_name_the_cause(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    graph.add_user(userPrincipalName=SENDER_UPN, mail=SENDER_UPN)

    async def send(sender: str) -> None:
        client, mailer = _graph_mailer(graph_settings, sender)
        async with client:
            await mailer.send("s", "b")

    with pytest.raises(MailError, match=r"no mailbox nobody@contoso\.onmicrosoft\.com"):
        asyncio.run(send("nobody@contoso.onmicrosoft.com"))
    graph.app_roles.discard("Mail.Send")
    with pytest.raises(MailError, match=r"403 .*application permission Mail\.Send"):
        asyncio.run(send(SENDER_UPN))
    assert graph.sent_mail == []


def _token(graph: GraphSimulator, context: ssl.SSLContext) -> str:
    form = (f"grant_type=client_credentials&client_id={graph.client_id}&client_secret={graph.client_secret}"
            "&scope=https%3A%2F%2Fgraph.microsoft.com%2F.default").encode()
    request = urllib.request.Request(f"{graph.base_url}/{graph.tenant_id}/oauth2/v2.0/token",  # noqa: S310
                                     data=form, method="POST")
    with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310 - our simulator
        return str(json.loads(response.read())["access_token"])


def test_simulator_send_mail_validates_the_request(graph: GraphSimulator, local_pki: LocalPki) -> None:
    graph.add_user(userPrincipalName=SENDER_UPN, mail=SENDER_UPN)
    context = ssl.create_default_context(cafile=str(local_pki.ca_file))
    token = _token(graph, context)

    def post(body: Any, user: str = SENDER_UPN, raw: bytes | None = None) -> tuple[int, bytes]:
        data = raw if raw is not None else json.dumps(body).encode()
        request = urllib.request.Request(f"{graph.graph_url}/users/{user}/sendMail",  # noqa: S310
                                         data=data, method="POST",
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:  # noqa: S310
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    good = {"message": {"subject": "s", "body": {"contentType": "Text", "content": "b"},
                        "toRecipients": [{"emailAddress": {"address": "a@contoso.com"}}]},
            "saveToSentItems": False}
    assert post(good) == (202, b"")
    for bad in ({}, {"message": "text"}, {"message": {"subject": "s"}},
                {"message": {"toRecipients": [{"emailAddress": {"address": "not-an-address"}}]}},
                {"message": {"toRecipients": {"emailAddress": {"address": "a@contoso.com"}}}},
                {"message": {"toRecipients": [{"emailAddress": {"address": "a@contoso.com"}}],
                             "body": {"contentType": "Rtf", "content": "x"}}},
                good | {"saveToSentItems": "no"}):
        status, answer = post(bad)
        assert status == 400, bad
        assert json.loads(answer)["error"]["code"] in ("RequestBodyRead", "ErrorInvalidRecipients")
    assert post(None, raw=b"{not json")[0] == 400
    status, answer = post(good, user="ghost@contoso.onmicrosoft.com")
    assert status == 404 and json.loads(answer)["error"]["code"] == "ErrorInvalidUser"
    assert len(graph.sent_mail) == 1
    graph.reset()
    assert graph.sent_mail == []


# ------------------------------------------------------------------------------------------------ end to end

GRAPH_MAIL = {
    "GUESTSYNC_MAIL": "graph",
    "GUESTSYNC_MAIL_TO": ",".join(ADMINS),
    "GUESTSYNC_MAIL_FROM": SENDER_UPN,
    "GUESTSYNC_ALERT_SCHEDULE": "0 0 0 1 1 *",  # fires only when a test triggers it
}


def _status(stack: Stack, uid: str) -> GuestStatus | None:
    record = stack.state.get(uid)
    return record.status if record else None


def _clash(stack: Stack) -> dict[str, Any]:
    """A guest whose export fails with a readable AD error: its new UPN is taken by a foreign object."""
    sim: Any = stack.sim
    clash = sim.invite_guest("clash@fabrikam.com", "Clash", "C", "L")
    stack.wait(lambda: stack.settled([clash["id"]]), "the clash guest")
    taken = "taken#EXT#@contoso.onmicrosoft.com"
    assert stack.admin.add(f"CN=Taken,{stack.guest_ou}", ["top", "person", "organizationalPerson", "user"],
                           {"sAMAccountName": "taken.upn", "userPrincipalName": taken})
    sim.update_user(clash["id"], userPrincipalName=taken)
    stack.wait(lambda: _status(stack, clash["id"]) is GuestStatus.ERROR, "the export error")
    return {**clash, "userPrincipalName": taken}


@pytest.mark.parametrize("stack", [GRAPH_MAIL], indirect=True)
def test_an_export_error_mails_the_admins_exactly_once(stack: Stack) -> None:
    sim: Any = stack.sim
    sim.add_user(userPrincipalName=SENDER_UPN, mail=SENDER_UPN, displayName="guestsync alerts")
    clash = _clash(stack)
    stack.drain()
    stack.reconcile()  # retries the guest in error: the same error again, not mailed again
    stack.drain()
    stack.host.trigger_timer("alerts")
    mails = list(sim.sent_mail)
    assert len(mails) == 1, [m["subject"] for m in mails]
    (mail,) = mails
    assert mail["subject"] == "[guestsync] 1 guest(s) could not be exported to Active Directory"
    assert mail["to"] == list(ADMINS) and mail["from"] == SENDER_UPN
    assert clash["id"] in mail["content"] and clash["userPrincipalName"] in mail["content"]
    record = stack.state.get(clash["id"])
    assert record is not None and record.error and record.error[:60] in mail["content"]


@pytest.mark.parametrize("stack", [GRAPH_MAIL | {"GUESTSYNC_BREAKER_THRESHOLD": "1"}], indirect=True)
def test_held_deprovisioning_and_poison_message_are_mailed(stack: Stack) -> None:
    sim: Any = stack.sim
    sim.add_user(userPrincipalName=SENDER_UPN, mail=SENDER_UPN)
    guests = [sim.invite_guest(f"held{i}@fabrikam.com", f"Held {i}", "Held", str(i)) for i in range(2)]
    uids = [g["id"] for g in guests]
    stack.wait(lambda: stack.settled(uids), "two accounts")
    for uid in uids:
        sim.delete_user(uid)
    stack.wait(lambda: sorted(str(_status(stack, u)) for u in uids) == sorted(
        [str(GuestStatus.ARCHIVED), str(GuestStatus.HELD)]), "one archived, one held")
    stack.drain()
    (held_uid,) = [u for u in uids if _status(stack, u) is GuestStatus.HELD]
    (held_mail,) = [m for m in sim.sent_mail if "held" in m["subject"]]
    assert held_mail["subject"] == "[guestsync] 1 deprovisioning(s) held by the mass-change breaker"
    assert held_uid in held_mail["content"] and "guestsync approve" in held_mail["content"]
    assert len(sim.sent_mail) == 1

    # A message that fails every time ends in the poison queue; the timer mails about it and leaves it there.
    s = bootstrap.services()
    s.export_queue.send('{"uid": "x", "clientState": "do-not-mail-me"}')  # no version: refused every time
    poison = MessageQueue.from_settings(s.settings.storage, s.settings.export_poison_queue)
    stack.wait(lambda: len(poison.peek()) == 1, "the poison message", 60)
    result = stack.host.trigger_timer("alerts", timeout=60)
    assert result.succeeded, result.error
    (poison_mail,) = [m for m in sim.sent_mail if "poison" in m["subject"]]
    assert poison_mail["subject"] == "[guestsync] 1 message(s) parked in a poison queue"
    assert s.settings.export_poison_queue in poison_mail["content"]
    assert '"uid":"x"' in poison_mail["content"] and "do-not-mail-me" not in poison_mail["content"]
    assert len(poison.peek()) == 1  # still there for the operator
    assert stack.host.trigger_timer("alerts", timeout=60).succeeded
    assert len(sim.sent_mail) == 2  # reported once


@pytest.mark.parametrize("stack", [{
    "GUESTSYNC_MAIL": "smtp", "GUESTSYNC_MAIL_TO": ADMINS[0], "GUESTSYNC_MAIL_FROM": "guestsync@contoso.com",
    "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(free_port()), "SMTP_SECURITY": "none",
    "GUESTSYNC_ALERT_SCHEDULE": "0 0 0 1 1 *",
}], indirect=True)
def test_a_failing_mailer_does_not_break_exports(stack: Stack, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    sim: Any = stack.sim
    ok = sim.invite_guest("fine@fabrikam.com", "Fine", "F", "Ine")
    stack.wait(lambda: stack.settled([ok["id"]]), "the healthy guest")
    clash = _clash(stack)  # its error is saved although the mail about it cannot be sent
    stack.drain()
    assert _status(stack, ok["id"]) is GuestStatus.PROVISIONED
    record = stack.state.get(clash["id"])
    assert record is not None and record.status is GuestStatus.ERROR and record.error
    assert "could not send the mail" in caplog.text and "could not hand the mail to SMTP relay" in caplog.text
    body, _ = stack.state.get_meta("alerts-error")
    assert body["total"] == 1  # kept for the next digest
    assert stack.host.trigger_timer("alerts", timeout=60).succeeded  # the timer fails quietly too
