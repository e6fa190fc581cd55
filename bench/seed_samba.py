"""Add many user objects straight into a stopped Samba DC's sam.ldb (run with the system python3, which has
Samba's bindings; not the project's virtual environment).

    /usr/bin/python3 bench/seed_samba.py SMB_CONF SAM_LDB ACCOUNTS.jsonl SIDS.jsonl [BATCH]
    /usr/bin/python3 bench/seed_samba.py --passwords SMB_CONF SAM_LDB < {"sAMAccountName": "password", ...}

The second form sets the passwords of existing accounts (a cached seeded database restored into a DC whose
Administrator and service account passwords were chosen by this run).

Each input line is ``{"dn": ..., "attributes": {...}}``. The adds go through Samba's whole DSDB module stack
(objectSid from the DC's RID pool, which the RID Set then records as used; objectGUID, objectCategory,
instanceType, whenCreated and the uSNs; the security descriptor inherited from the OU; every index), as the
system, in transactions of BATCH adds. Writes one line ``{"cn": ..., "objectSid": "S-1-5-..."}`` per user object
in the parent OU of the first DN to SIDS.jsonl.

Why it is fast: ldb's key-value layer runs every add inside a transaction as a nested transaction of its own,
whose index cache copies each index list the add touches in full and merges it back when the add commits. The
lists of objectClass=user (and top, person, organizationalPerson), objectCategory=person and the OU's one-level
index hold every account, so each add costs time in proportion to the accounts already there (quadratic
seeding: 4.4 ms per add for the first 5,000, 36 ms at 20,000). ldb's ``batch_mode`` (what ``samba-tool domain
join`` uses to replicate a large domain) skips the nested transactions: an add that fails fails the whole
transaction, which is what a seed wants anyway. A larger in-memory index cache (``transaction_index_cache_size``,
the figure Samba's provision uses for 100,000 users) keeps its hash chains short.
"""

import json
import sys
import time

import ldb
from samba.auth import system_session
from samba.dcerpc import security
from samba.ndr import ndr_unpack
from samba.param import LoadParm
from samba.samdb import SamDB

OBJECT_CLASSES = ["top", "person", "organizationalPerson", "user"]
#: Samba's provision uses this for a database of about 100,000 users in batch mode.
INDEX_CACHE_SIZE = 202481


def set_passwords(smb_conf: str, sam_ldb: str, passwords: dict[str, str]) -> None:
    lp = LoadParm()
    lp.load(smb_conf)
    samdb = SamDB(url=sam_ldb, session_info=system_session(), lp=lp)
    for name, password in passwords.items():
        samdb.setpassword(f"(sAMAccountName={ldb.binary_encode(name)})", password)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--passwords":
        set_passwords(argv[1], argv[2], json.load(sys.stdin))
        return 0
    smb_conf, sam_ldb, accounts, sids = argv[:4]
    batch = int(argv[4]) if len(argv) > 4 else 10000
    lp = LoadParm()
    lp.load(smb_conf)
    samdb = SamDB(url=sam_ldb, session_info=system_session(), lp=lp,
                  options=["batch_mode:1", f"transaction_index_cache_size:{INDEX_CACHE_SIZE}"])
    started = last = time.monotonic()
    count = 0
    parent = None
    with open(accounts) as handle:
        samdb.transaction_start()
        try:
            for line in handle:
                record = json.loads(line)
                if parent is None:
                    parent = record["dn"].split(",", 1)[1]
                message = {"dn": record["dn"], "objectClass": OBJECT_CLASSES}
                message.update(record["attributes"])
                samdb.add(message)
                count += 1
                if count % batch == 0:
                    samdb.transaction_commit()
                    now = time.monotonic()
                    print(f"  samba: {count} accounts added ({(now - last) / batch * 1000:.2f} ms per add in "
                          f"this batch, {count / (now - started):.0f}/s overall)", flush=True)
                    last = now
                    samdb.transaction_start()
            samdb.transaction_commit()
        except BaseException:
            samdb.transaction_cancel()
            raise
    print(f"  samba: {count} accounts added in {time.monotonic() - started:.1f} s", flush=True)
    if parent is None:
        return 0
    found = samdb.search(base=parent, scope=ldb.SCOPE_ONELEVEL, expression="(objectClass=user)",
                         attrs=["cn", "objectSid"])
    with open(sids, "w") as out:
        for message in found:
            sid = ndr_unpack(security.dom_sid, message["objectSid"][0])
            out.write(json.dumps({"cn": str(message["cn"][0]), "objectSid": str(sid)}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
