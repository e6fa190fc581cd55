"""``python -m devtools.graphsim``: the Graph simulator on its own, for trying ``guestsync serve`` and ``worker``
by hand against a tenant that is not real. Prints its URL, tenant, client id and secret and the CA file as the
settings to export, then serves until Ctrl+C. The certificate and the secret are new on every start."""

from __future__ import annotations

import argparse
import signal
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from devtools.graphsim.server import GraphSimulator
from devtools.localenv.certs import create_local_pki


def settings(sim: GraphSimulator, ca_file: Path) -> dict[str, str]:
    """The guestsync settings that point at this simulator (README, Configuration)."""
    return {"GRAPH_AUTH": "client_secret", "GRAPH_ENDPOINT": sim.graph_url, "GRAPH_AUTHORITY_HOST": sim.base_url,
            "GRAPH_TENANT_ID": sim.tenant_id, "GRAPH_CLIENT_ID": sim.client_id,
            "GRAPH_CLIENT_SECRET": sim.client_secret, "GRAPH_CA_FILE": str(ca_file)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devtools.graphsim", description=__doc__)
    parser.add_argument("--port", type=int, default=0, help="HTTPS port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--guests", type=int, default=5, help="guests the tenant starts with (default 5)")
    parser.add_argument("--members", type=int, default=2, help="members it starts with (default 2)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with tempfile.TemporaryDirectory(prefix="graphsim-") as folder:
        pki = create_local_pki(Path(folder))
        sim = GraphSimulator(pki.cert_file, pki.key_file, port=args.port).start()
        try:
            sim.seed(guests=args.guests, members=args.members)
            print(f"Graph simulator at {sim.graph_url} (sign-in at {sim.base_url}), tenant {sim.tenant_id}, "
                  f"{args.guests} guests and {args.members} members. Its settings (export them, or put them in "
                  "local.settings.json's Values):", flush=True)
            for name, value in settings(sim, pki.ca_file).items():
                print(f"export {name}='{value}'", flush=True)
            print("Running until Ctrl+C.", flush=True)
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
