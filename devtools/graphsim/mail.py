"""``POST /users/{id | userPrincipalName}/sendMail``: accepted with 202 and recorded in ``sent``, not delivered.

The message is checked the way Graph does (recipients resolved, an itemBody of Text or HTML), so a malformed
alert fails here as it would against Graph; tests read what would have gone out from ``sent``.
"""

from __future__ import annotations

import json
from typing import Any

from devtools.graphsim.state import GraphHttpError, Tenant, now


class Mail:
    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant
        self.sent: list[dict[str, Any]] = []  # sendMail requests accepted, oldest first

    def reset(self) -> None:
        with self._tenant.lock:
            self.sent.clear()

    def send_mail(self, user_id: str, body: bytes) -> None:
        """user: sendMail with a JSON message (subject, body, toRecipients/ccRecipients/bccRecipients).

        Action parameters are matched without regard to case, as Graph does: msgraph-sdk for Python sends
        ``Message`` and ``SaveToSentItems`` where the documentation writes ``message`` and ``saveToSentItems``.
        """
        try:
            request = json.loads(body or b"null")
        except ValueError:
            raise GraphHttpError(400, "RequestBodyRead", "The request body is not valid JSON.") from None
        parameters = {str(k).lower(): v for k, v in request.items()} if isinstance(request, dict) else {}
        message = parameters.get("message")
        if not isinstance(message, dict):
            raise GraphHttpError(400, "RequestBodyRead", "The request body must be a JSON object with a message.")
        recipients: dict[str, list[str]] = {}
        for kind in ("toRecipients", "ccRecipients", "bccRecipients"):
            listed = message.get(kind) or []
            if not isinstance(listed, list):
                raise GraphHttpError(400, "RequestBodyRead", f"{kind} must be a collection of recipients.")
            addresses = []
            for item in listed:
                address = item.get("emailAddress", {}).get("address") if isinstance(item, dict) else None
                if not isinstance(address, str) or address.count("@") != 1 or address.strip() != address:
                    raise GraphHttpError(400, "ErrorInvalidRecipients",
                                         f"At least one recipient is not valid., Recipient '{address}' is not "
                                         "resolved. All recipients must be resolved before a message can be "
                                         "submitted.")
                addresses.append(address)
            recipients[kind] = addresses
        if not any(recipients.values()):
            raise GraphHttpError(400, "ErrorInvalidRecipients", "At least one recipient is not valid., A message "
                                 "can't be sent because it contains no recipients.")
        content = message.get("body") or {}
        subject = message.get("subject")
        if not isinstance(content, dict) or str(content.get("contentType", "Text")).lower() not in ("text", "html") \
                or not isinstance(content.get("content", ""), str) or not isinstance(subject, str | None):
            raise GraphHttpError(400, "RequestBodyRead", "Invalid message: subject must be a string and body an "
                                 "itemBody with contentType Text or HTML.")
        save = parameters.get("savetosentitems", True)
        if not isinstance(save, bool):
            raise GraphHttpError(400, "RequestBodyRead", "saveToSentItems must be a Boolean.")
        with self._tenant.lock:
            user = self._tenant.user_by_id_or_upn(user_id)
            if user is None:
                raise GraphHttpError(404, "ErrorInvalidUser", f"The requested user '{user_id}' is invalid.")
            self.sent.append({
                "from": user.get("mail") or user.get("userPrincipalName"),
                "senderId": user["id"],
                "subject": subject,
                "contentType": content.get("contentType", "Text"),
                "content": content.get("content", ""),
                "to": recipients["toRecipients"],
                "cc": recipients["ccRecipients"],
                "bcc": recipients["bccRecipients"],
                "saveToSentItems": save,
                "at": now(),
                "request": request,  # the JSON body as sent
            })
