"""Mail adapter: plain-text operator alerts through Microsoft Graph (sendMail) or an SMTP relay.

Every mailer has one method, ``async send(subject, body)``. It is async for all of them: the Graph mailer
rides on msgraph-sdk (async, one client per event loop), and the SMTP mailer runs smtplib on a worker thread
(``asyncio.to_thread``) so it never blocks the event loop. Callers are async functions (the export
function and the alerts timer); a failure raises ``MailError`` with a readable message (never a password).
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import TYPE_CHECKING, Any

from shared.core.domain import ConfigurationError, GuestsyncError
from shared.core.ports import Mailer, NoMailer
from shared.settings import MailSettings

if TYPE_CHECKING:
    from shared.adapters.graph import GraphClient

SMTP_TIMEOUT = 10.0


class MailError(GuestsyncError):
    """The mail could not be handed over; ``str()`` says why in words an operator can act on."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


class GraphMailer:
    """POST /users/{sender}/sendMail as the application (needs the Graph application permission Mail.Send)."""

    def __init__(self, client: Any, sender: str, to: Sequence[str]) -> None:
        self._client = client  # msgraph GraphServiceClient
        self.sender = sender
        self.to = tuple(to)

    async def send(self, subject: str, body: str) -> None:
        from msgraph.generated.models.body_type import BodyType
        from msgraph.generated.models.email_address import EmailAddress
        from msgraph.generated.models.item_body import ItemBody
        from msgraph.generated.models.message import Message
        from msgraph.generated.models.o_data_errors.o_data_error import ODataError
        from msgraph.generated.models.recipient import Recipient
        from msgraph.generated.users.item.send_mail.send_mail_post_request_body import SendMailPostRequestBody

        request = SendMailPostRequestBody(
            message=Message(
                subject=_one_line(subject),
                body=ItemBody(content_type=BodyType.Text, content=body),
                to_recipients=[Recipient(email_address=EmailAddress(address=a)) for a in self.to],
            ),
            save_to_sent_items=False,
        )
        try:
            await self._client.users.by_user_id(self.sender).send_mail.post(request)
        except ODataError as exc:
            raise _graph_mail_error(exc, self.sender) from None
        except Exception as exc:  # transport: DNS, TLS, timeouts, sign-in
            raise MailError(f"Graph sendMail as {self.sender} failed: {exc}") from None


def _graph_mail_error(exc: Any, sender: str) -> MailError:
    status = exc.response_status_code
    code = exc.error.code if exc.error else None
    message = (exc.error.message if exc.error else None) or str(exc)
    said = f"Graph answered {status} {code or ''}: {message}".replace("  ", " ")
    if status in (401, 403):
        return MailError(f"Graph refused to send mail as {sender} ({said}). The app needs the Microsoft Graph "
                         "application permission Mail.Send with admin consent (and, where Exchange limits it with "
                         "an application access policy, access to this mailbox)")
    if status == 404:
        return MailError(f"Graph found no mailbox {sender} ({said}); GUESTSYNC_MAIL_FROM must be a user or shared "
                         "mailbox in this tenant")
    return MailError(f"Graph sendMail as {sender} failed ({said})")


class SmtpMailer:
    """smtplib over STARTTLS (``starttls``), implicit TLS (``tls``) or plain (``none``, e.g. an internal relay
    on port 25). Certificates are validated (``ssl.create_default_context``: system store, or ``ca_file``);
    the optional login only happens over TLS; the password is never logged nor put in an error."""

    def __init__(self, host: str, port: int, sender: str, to: Sequence[str], *, security: str = "starttls",
                 username: str | None = None, password: str | None = None, ca_file: str | None = None,
                 timeout: float = SMTP_TIMEOUT) -> None:
        if security not in ("starttls", "tls", "none"):
            raise ConfigurationError(f"SMTP security must be starttls, tls or none, not {security!r}")
        if password is not None and security == "none":
            raise ConfigurationError("an SMTP password is only ever sent over TLS (SMTP_SECURITY=starttls or tls)")
        self.host, self.port, self.sender, self.to = host, port, sender, tuple(to)
        self.security, self.username, self._password = security, username, password
        self._ca_file, self.timeout = ca_file, timeout

    def __repr__(self) -> str:
        return f"SmtpMailer({self.host}:{self.port}, {self.security}, user={self.username!r})"

    async def send(self, subject: str, body: str) -> None:
        await asyncio.to_thread(self._send, subject, body)

    def message(self, subject: str, body: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.to)
        msg["Subject"] = _one_line(subject)
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain=self.sender.rpartition("@")[2] or None)
        msg["Auto-Submitted"] = "auto-generated"  # RFC 3834: no auto-replies to alerts
        msg.set_content(body)
        return msg

    def _send(self, subject: str, body: str) -> None:
        where = f"SMTP relay {self.host}:{self.port}"
        context = ssl.create_default_context(cafile=self._ca_file)
        try:
            client: smtplib.SMTP
            if self.security == "tls":
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            with client:
                client.ehlo()
                if self.security == "starttls":
                    if not client.has_extn("starttls"):
                        raise MailError(f"{where} does not offer STARTTLS (SMTP_SECURITY=starttls); nothing was sent")
                    client.starttls(context=context)
                    client.ehlo()
                if self.username is not None:
                    client.login(self.username, self._password or "")
                client.send_message(self.message(subject, body), from_addr=self.sender, to_addrs=list(self.to))
        except MailError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise MailError(f"{where} refused the login of {self.username!r} ({exc.smtp_code}); check SMTP_USERNAME "
                            "and SMTP_PASSWORD") from None
        except ssl.SSLCertVerificationError as exc:
            raise MailError(f"{where}: its certificate is not trusted ({exc.verify_message}); the host name in "
                            "SMTP_HOST must match the certificate") from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise MailError(f"{where} refused the recipients {', '.join(exc.recipients)}") from None
        except smtplib.SMTPResponseException as exc:
            text = exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
            raise MailError(f"{where} refused the mail ({exc.smtp_code} {_one_line(str(text))})") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise MailError(f"could not hand the mail to {where}: {exc or type(exc).__name__}") from None


def mailer_from_settings(settings: MailSettings, graph: GraphClient | None = None) -> Mailer:
    """The mailer GUESTSYNC_MAIL asks for. ``graph`` (the Graph client of the running event loop) is needed for
    ``graph`` mode only."""
    if settings.mode == "graph":
        if graph is None:
            raise ConfigurationError("GUESTSYNC_MAIL=graph needs a Graph client")
        if settings.sender is None:
            raise ConfigurationError("setting GUESTSYNC_MAIL_FROM is required when GUESTSYNC_MAIL=graph")
        # GraphClient keeps its msgraph GraphServiceClient private; sendMail is the one call made on it here.
        return GraphMailer(graph.service_client, settings.sender, settings.to)
    if settings.mode == "smtp":
        if settings.smtp_host is None or settings.sender is None:
            raise ConfigurationError("GUESTSYNC_MAIL=smtp needs the settings SMTP_HOST and GUESTSYNC_MAIL_FROM")
        return SmtpMailer(settings.smtp_host, settings.smtp_port, settings.sender, settings.to,
                          security=settings.smtp_security, username=settings.smtp_username,
                          password=settings.smtp_password)
    return NoMailer()
