"""Add many user objects straight into a stopped Samba DC's sam.ldb (run with the system python3, which has
Samba's bindings; not the project's virtual environment).

    /usr/bin/python3 bench/seed_samba.py SMB_CONF SAM_LDB ACCOUNTS.jsonl SIDS.jsonl [BATCH]

Each input line is ``{"dn": ..., "attributes": {...}}``. The adds go through Samba's whole DSDB module stack
(objectSid from the RID pool, objectGUID, inherited security descriptor, indexes), as the system, in
transactions of BATCH adds, which is much faster than LDAP adds one round trip each. Writes one line
``{"cn": ..., "objectSid": "S-1-5-..."}`` per user object in the parent OU of the first DN to SIDS.jsonl.
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


def main(argv: list[str]) -> int:
    smb_conf, sam_ldb, accounts, sids = argv[:4]
    batch = int(argv[4]) if len(argv) > 4 else 2000
    lp = LoadParm()
    lp.load(smb_conf)
    samdb = SamDB(url=sam_ldb, session_info=system_session(), lp=lp)
    started = time.monotonic()
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
                    samdb.transaction_start()
                    rate = count / (time.monotonic() - started)
                    print(f"  samba: {count} accounts added ({rate:.0f}/s)", flush=True)
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
