"""What a service did, as enums: export actions, reconcile findings, approval answers.

StrEnum, so each value is the string the logs, the CLI's JSON and the stored reports have always carried
(``outcome.action == "created"`` holds).
"""

from __future__ import annotations

from enum import StrEnum


class ExportResult(StrEnum):
    """What the AD worker did with one export message (past tense; ``deprovisioning.ExportAction`` is what it
    plans to do)."""

    CREATED = "created"
    JOINED = "joined"  # an account guestsync created whose join was not saved
    ADOPTED = "adopted"  # an unmarked account taken over
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    RESTORED = "restored"  # moved back from the archive OU and enabled
    DISABLED = "disabled"  # disabled and moved to the archive OU
    RELEASED = "released"  # UPN and mail released after Entra's restore window
    DELETED = "deleted"
    HELD = "held"  # the mass-change breaker holds the deprovisioning for `guestsync approve`
    ERROR = "error"
    SKIPPED = "skipped"  # the guest is unknown to state


class FindingAction(StrEnum):
    """What a reconcile does (or, in a plan, would do) about one thing it found."""

    CREATE = "create"
    UPDATE = "update"
    RESTORE = "restore"
    DISABLE = "disable"
    DELETE = "delete"  # archived past GUESTSYNC_DELETE_AFTER_DAYS
    RELEASE = "release"  # gone for good: the archived account gives up its UPN
    DEPROVISION = "deprovision"  # leaves scope with GUESTSYNC_DEPROVISION=none or without an account
    SAVE = "save"  # a state change only, no AD work
    JOIN = "join"
    FOREIGN = "foreign"  # an object in a managed OU that guestsync does not own: left alone
    ADOPTABLE = "adoptable"  # an unmarked CN=<uid> of a guest: taken over on `guestsync adopt`
    ADOPT = "adopt"  # an unmarked CN=<uid> the guest's export takes over (operator's choice or migration window)
    SECURITY = "security"  # a different object holds a joined guest's CN: left alone


class ApprovalOutcome(StrEnum):
    """The answer to `guestsync approve` / `reject` / `adopt` for one guest."""

    APPROVED = "approved"
    REJECTED = "rejected"
    NOT_HELD = "not-held"
    ADOPTING = "adopting"
    NOT_ADOPTABLE = "not-adoptable"
    UNKNOWN = "unknown"
