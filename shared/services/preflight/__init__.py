"""``guestsync check``: a preflight of everything guestsync depends on, for go-live and for troubleshooting.

Each check returns a ``CheckResult`` (name, status pass | warn | fail | skip, a detail in plain words, and for
warn and fail a fix). The names and their order are fixed (``CHECKS``): a check that cannot run here says
``skip`` and why, so the JSON output always has every result.

* ``settings``: every setting loads (and the AD settings make a valid ``Directory``); a ConfigurationError is
  the one ``fail``, naming the setting, and every other check is skipped.
* ``graph.signin``: a token for the Graph scope with the app's own credential (managed identity, client
  secret or certificate); AADSTS errors are turned into the setting to fix. ``graph.users``: a read of users
  as the reconcile does it (403 Authorization_RequestDenied = User.Read.All is missing). ``graph.scope_group``:
  with ``GUESTSYNC_SCOPE_GROUP_ID``, the group exists and its transitive members can be read
  (GroupMember.Read.All). ``graph.mail``: with ``GUESTSYNC_MAIL=graph``, Mail.Send must be in the token's
  ``roles`` claim (Entra lists every granted application permission there); ``warn`` when the token does not
  tell.
* ``webhook.notifications`` / ``webhook.lifecycle``: Graph's validation handshake (POST
  ``?validationToken=...``, 200 text/plain echoing the token within 10 s), sent from this machine: Graph must
  reach the URL from the internet as well. Unset: ``warn``.
* ``graph.subscription``: our users subscription exists and is not within 3 days of expiry (``warn``).
* ``storage.queues`` / ``storage.table``: the queues (with their poison queues) and the state table answer;
  missing ones are created, as the app does. Messages in a poison queue are a ``warn``.
* ``ad.*`` (where the AD worker runs, i.e. ``AD_SERVER`` is set): LDAPS with certificate validation, the bind,
  both OUs, then a write probe (unless ``probe=False``): a disabled account ``CN=guestsync-probe-<hex>`` is
  created in the guest OU, modified, archived and restored (moved to the archive OU and back), and deleted,
  through the same adapter methods the worker uses, so each step needs exactly the worker's rights. Whatever
  happens, the probe is deleted at the end; a probe left by a crashed run (recognised by its name and
  description) is deleted by the next check (only reported with ``probe=False``).
* ``entra_connect``: always ``warn``: whether Entra Connect sync excludes the guest and archive OUs cannot be
  seen from Graph or from the service account, and if it does not, Entra Connect may match and take over the
  shadow accounts. The warn is the reminder; it never makes the check fail.
"""

from shared.services.preflight.directory import check_directory, entra_connect_reminder
from shared.services.preflight.graph import CONSENT_HINT, token_roles
from shared.services.preflight.report import as_json, exit_code, render_text, summary
from shared.services.preflight.results import CHECKS, CheckResult, Status
from shared.services.preflight.run import run_checks
from shared.services.preflight.storage import check_storage
from shared.services.preflight.webhook import HANDSHAKE_TIMEOUT, check_webhooks

__all__ = [
    "CHECKS",
    "CONSENT_HINT",
    "HANDSHAKE_TIMEOUT",
    "CheckResult",
    "Status",
    "as_json",
    "check_directory",
    "check_storage",
    "check_webhooks",
    "entra_connect_reminder",
    "exit_code",
    "render_text",
    "run_checks",
    "summary",
    "token_roles",
]
