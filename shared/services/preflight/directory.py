"""The AD checks (LDAPS, bind, both OUs, the write probe) and the Entra Connect reminder."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from shared.services.preflight.results import CheckResult, Status, _result, _skip
from shared.settings import Settings

if TYPE_CHECKING:  # the adapters are imported where they are used: a check loads only what it needs
    from shared.adapters.directory import Directory

log = logging.getLogger("guestsync.preflight")

_RIGHTS_FIX = ("delegate to the service account, on the guest OU and the archive OU, the rights listed in "
               "docs/deployment.md (Before deploying: Active Directory): create and delete user objects, read, write "
               "only the listed attributes, reset password (never write all properties)")


def check_directory(directory: Directory, settings: Settings, *, probe: bool) -> list[CheckResult]:
    """ad.ldaps, ad.bind, ad.guest_ou, ad.archive_ou, ad.probe.* (in order)."""
    from shared.core.errors import DirectoryError, DirectoryUnavailableError, InvalidCredentialsError

    assert settings.directory is not None
    ad = settings.directory
    trust = f"AD_CA_FILE={ad.ca_file}" if ad.ca_file else "the system trust store"
    probe_names = ["ad.probe.cleanup", "ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete"]
    try:
        netbios = directory.netbios_domain()  # connects (TLS) and binds
    except DirectoryUnavailableError as exc:
        from shared.core.failures import fix_for

        return [_result("ad.ldaps", Status.FAIL, str(exc), fix_for(exc, "ad")[1]),
                *_skip(["ad.bind", "ad.guest_ou", "ad.archive_ou", *probe_names], "no LDAPS connection")]
    except InvalidCredentialsError as exc:
        return [_ldaps_ok(ad.server, trust, ad.validate_certificate),
                _result("ad.bind", Status.FAIL, str(exc), "check AD_BIND_USER and AD_KEYTAB" if ad.bind_method ==
                        "kerberos" else "check AD_BIND_USER and AD_BIND_PASSWORD"),
                *_skip(["ad.guest_ou", "ad.archive_ou", *probe_names], "the bind failed")]
    except DirectoryError as exc:
        return [_ldaps_ok(ad.server, trust, ad.validate_certificate),
                _result("ad.bind", Status.FAIL, str(exc), "check AD_SERVER (a domain controller) and AD_BIND_USER"),
                *_skip(["ad.guest_ou", "ad.archive_ou", *probe_names], "the bind failed")]
    who = ad.bind_user or "the service's own identity"
    how = "Kerberos" if ad.bind_method == "kerberos" else "password"
    results = [_ldaps_ok(directory.domain_controller or ad.server, trust, ad.validate_certificate),
               _result("ad.bind", Status.PASS, f"bound as {who} ({how}; domain {netbios})")]
    guest_ok = _check_ou(results, directory, "ad.guest_ou", "AD_GUEST_OU", directory.guest_ou)
    archive_ok: bool | None = None
    if directory.archive_ou is None:
        results.append(_result("ad.archive_ou", Status.SKIP, "GUESTSYNC_DEPROVISION=none: no archive OU"))
    else:
        archive_ok = _check_ou(results, directory, "ad.archive_ou", "AD_ARCHIVE_OU", directory.archive_ou)
    if not guest_ok:
        return results + _skip(probe_names, "the guest OU is missing")
    results += _probe(directory, probe=probe, archive_ok=archive_ok)
    return results


def _ldaps_ok(server: str, trust: str, validated: bool) -> CheckResult:
    if not validated:
        return _result("ad.ldaps", Status.WARN, f"{server}: TLS connected WITHOUT certificate validation "
                       "(AD_VALIDATE_CERTIFICATE=false)", "set AD_CA_FILE and turn AD_VALIDATE_CERTIFICATE back on")
    return _result("ad.ldaps", Status.PASS, f"{server}: TLS with the DC certificate validated against {trust}")


def _check_ou(results: list[CheckResult], directory: Directory, name: str, setting: str, dn: str) -> bool:
    from shared.core.errors import DirectoryError

    try:
        exists = directory.object_exists(dn)
    except DirectoryError as exc:
        results.append(_result(name, Status.FAIL, f"cannot read {dn}: {exc}", _RIGHTS_FIX))
        return False
    if not exists:
        results.append(_result(name, Status.FAIL, f"{dn} does not exist (or the service account cannot see it)",
                               f"create the OU, or correct {setting}"))
        return False
    results.append(_result(name, Status.PASS, f"{dn} exists"))
    return True


def _probe(directory: Directory, *, probe: bool, archive_ok: bool | None) -> list[CheckResult]:
    """ad.probe.cleanup, .create, .modify, .move, .delete. The probe never outlives this function unless AD
    refuses its deletion (then it is left disabled and reported, and the next check deletes it)."""
    from shared.adapters.directory import new_probe_name
    from shared.core.errors import DirectoryError

    results: list[CheckResult] = []
    try:
        leftovers = directory.find_probes()
    except DirectoryError as exc:
        return [_result("ad.probe.cleanup", Status.FAIL, f"cannot look for probe accounts: {exc}", _RIGHTS_FIX),
                *_skip(["ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete"],
                       "the managed OUs cannot be searched")]
    steps = ["ad.probe.create", "ad.probe.modify", "ad.probe.move", "ad.probe.delete"]
    if not probe:
        if leftovers:
            results.append(_result("ad.probe.cleanup", Status.WARN,
                                   f"{len(leftovers)} probe account(s) left by an interrupted check: "
                                   f"{'; '.join(leftovers)}",
                                   "run guestsync check without --no-probe to delete them, or delete them by hand"))
        else:
            results.append(_result("ad.probe.cleanup", Status.PASS, "no probe accounts left by earlier checks"))
        return results + _skip(steps, "--no-probe: nothing is written to AD")
    removed, failed = _delete_probes(directory, leftovers)
    if failed:
        results.append(_result("ad.probe.cleanup", Status.FAIL,
                               f"cannot delete probe account(s) left by an interrupted check: {'; '.join(failed)}",
                               _RIGHTS_FIX + "; or delete them by hand"))
    elif removed:
        results.append(_result("ad.probe.cleanup", Status.PASS,
                               f"deleted {len(removed)} probe account(s) left by an interrupted check: "
                               f"{'; '.join(removed)}"))
    else:
        results.append(_result("ad.probe.cleanup", Status.PASS, "no probe accounts left by earlier checks"))

    name = new_probe_name()
    try:
        account = directory.create_probe(name)
    except DirectoryError as exc:
        results.append(_result("ad.probe.create", Status.FAIL, f"the service account cannot create a user in "
                               f"{directory.guest_ou}: {exc}", _RIGHTS_FIX))
        return results + _skip(steps[1:], "the probe account could not be created")
    done = False
    try:
        dn = account.dn
        results.append(_result("ad.probe.create", Status.PASS,
                               f"created {dn} (disabled, random password) as a guest account is created"))
        try:
            directory.update_guest(dn, {"displayName": "guestsync probe (modified)"})
            results.append(_result("ad.probe.modify", Status.PASS, "changed its displayName"))
        except DirectoryError as exc:
            results.append(_result("ad.probe.modify", Status.FAIL, f"cannot modify {dn}: {exc}", _RIGHTS_FIX))
        if directory.archive_ou is None:
            results.append(_result("ad.probe.move", Status.SKIP, "GUESTSYNC_DEPROVISION=none: accounts are never "
                                   "moved"))
        elif not archive_ok:
            results.append(_result("ad.probe.move", Status.SKIP, "the archive OU is missing"))
        else:
            try:
                archived = directory.disable_and_archive(dn)
                restored = directory.restore_guest(archived.dn)
                results.append(_result("ad.probe.move", Status.PASS,
                                       f"moved to {directory.archive_ou} and back (archive: disable and move; "
                                       f"restore: move back and enable), as deprovisioning does: {restored.dn}"))
            except DirectoryError as exc:
                results.append(_result("ad.probe.move", Status.FAIL,
                                       f"cannot archive and restore the probe between {directory.guest_ou} and "
                                       f"{directory.archive_ou}: {exc}", _RIGHTS_FIX))
        results.append(_delete_step(directory, name))
        done = True
    finally:
        if not done:  # an unexpected error or an interrupt: still leave nothing behind
            with contextlib.suppress(DirectoryError):
                _delete_probes(directory, _probes_named(directory, name))
    return results


def _probes_named(directory: Directory, name: str) -> list[str]:
    """Where the probe ``name`` is now (guest or archive OU, wherever a failed move left it)."""
    rdn = f"cn={name},".lower()
    return [dn for dn in directory.find_probes() if dn.lower().startswith(rdn)]


def _delete_probes(directory: Directory, dns: list[str]) -> tuple[list[str], list[str]]:
    """Delete these probe accounts; (deleted, 'dn: why not' for the others). A probe that cannot be deleted is
    at least disabled (archived), so nothing usable is left behind."""
    from shared.core.errors import DirectoryError

    deleted, failed = [], []
    for dn in dns:
        try:
            directory.delete_guest(dn)
            deleted.append(dn)
        except DirectoryError as exc:
            failed.append(f"{dn}: {exc}")
            log.warning("cannot delete probe account %s: %s", dn, exc)
            try:
                if directory.archive_ou:
                    directory.disable_and_archive(dn)
            except DirectoryError as again:
                log.warning("cannot disable probe account %s either: %s", dn, again)
    return deleted, failed


def _delete_step(directory: Directory, name: str) -> CheckResult:
    from shared.core.errors import DirectoryError

    try:
        where = _probes_named(directory, name)
        deleted, failed = _delete_probes(directory, where)
        left = _probes_named(directory, name)
    except DirectoryError as exc:
        return _result("ad.probe.delete", Status.FAIL, f"cannot delete the probe {name}: {exc}", _RIGHTS_FIX)
    if failed or left:
        return _result("ad.probe.delete", Status.FAIL,
                       f"cannot delete the probe account: {'; '.join(failed) or '; '.join(left)} (left disabled; the "
                       "next check deletes it)", _RIGHTS_FIX + "; or delete it by hand")
    if not deleted:
        return _result("ad.probe.delete", Status.FAIL, f"the probe account {name} was not found to delete",
                       "look for it in the guest and archive OUs")
    return _result("ad.probe.delete", Status.PASS, f"deleted {deleted[0]}; nothing is left behind")


# --- Entra Connect ---------------------------------------------------------------------------------------------
def entra_connect_reminder(settings: Settings) -> CheckResult:
    """Always a warn: Entra Connect's OU filter is not visible to guestsync (neither in Graph nor in AD)."""
    ous = [ou for ou in ((settings.directory.guest_ou if settings.directory else None),
                         settings.deprovisioning.archive_ou) if ou]
    which = " and ".join(ous) if ous else "the guest OU (AD_GUEST_OU) and the archive OU (AD_ARCHIVE_OU)"
    return _result("entra_connect", Status.WARN,
                   f"cannot be verified from here: exclude {which} from Entra Connect sync (otherwise Entra Connect "
                   "may match and take over the shadow accounts)",
                   "Entra Connect: Synchronization Service Manager > Connectors > the AD connector > Configure "
                   "Directory Partitions > Containers: clear both OUs (Cloud Sync: scope the configuration to other "
                   "OUs)")
