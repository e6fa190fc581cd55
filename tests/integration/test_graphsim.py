"""The Graph simulator speaks Graph's documented shapes, through the real msgraph-sdk client."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from devtools.graphsim.server import GraphSimulator
from shared.adapters.graph import GraphClient
from shared.core.errors import DeltaExpiredError, GraphThrottledError, SubscriptionConflictError
from shared.settings import GraphSettings
from tests.plugins.graph import raw_request

pytestmark = pytest.mark.integration
REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "graph-examples"  # verbatim from the Graph docs


def reference(name: str) -> dict[str, Any]:
    return json.loads((REFERENCE / name).read_text())


def run(coro: Any) -> Any:
    return asyncio.run(coro)


class Receiver:
    """A subscriber endpoint: answers the validation handshake and records notifications."""

    def __init__(self, answer_validation: bool = True) -> None:
        self.received: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query))
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if "validationToken" in query:
                    token = query["validationToken"].encode() if answer_validation else b"wrong"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(token)))
                    self.end_headers()
                    self.wfile.write(token)
                    return
                outer.received.append(json.loads(body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/graph/notifications"
        self.lifecycle_url = self.url.replace("notifications", "lifecycle")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def soon(minutes: int = 60) -> datetime:
    return datetime.now(UTC) + timedelta(minutes=minutes)


def test_get_user_selects_and_404(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    guest = graph.invite_guest("alice@fabrikam.com", "Alice Smith", "Alice", "Smith")

    async def go() -> tuple[Any, Any]:
        async with GraphClient(graph_settings) as client:
            return await client.get_user(guest["id"]), await client.get_user("00000000-0000-4000-8000-000000000000")

    user, missing = run(go())
    assert missing is None
    assert user.user_type == "Guest"
    assert user.user_principal_name == "alice_fabrikam.com#EXT#@contoso.onmicrosoft.com"
    assert (user.given_name, user.surname, user.mail) == ("Alice", "Smith", "alice@fabrikam.com")


def test_list_guests_pages_and_filters(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    graph.seed(guests=230, members=7)

    async def go() -> list[Any]:
        async with GraphClient(graph_settings) as client:
            return [u async for u in client.list_guests(page_size=100)]

    users = run(go())
    assert len(users) == 230 and {u.user_type for u in users} == {"Guest"}
    assert graph.request_count["GET /users"] == 3


def test_delta_rounds_removed_and_410(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    graph.seed(guests=150)
    first, second = graph.users[0]["id"], graph.users[1]["id"]

    async def rounds() -> tuple[list[Any], list[Any]]:
        async with GraphClient(graph_settings) as client:
            initial = [p async for p in client.delta()]
            graph.update_user(first, givenName="Changed")
            graph.delete_user(second)
            later = [p async for p in client.delta(initial[-1].delta_link)]
            graph.expire_delta_tokens()
            with pytest.raises(DeltaExpiredError):
                _ = [p async for p in client.delta(later[-1].delta_link)]
            return initial, later

    initial, later = run(rounds())
    assert sum(len(p.users) for p in initial) == 150 and len(initial) == 2
    assert initial[0].next_link and not initial[0].delta_link and initial[-1].delta_link
    assert [u.given_name for p in later for u in p.users] == ["Changed"]
    assert [r for p in later for r in p.removed] == [(second, "changed")]


def test_throttling_is_retried_then_surfaces(graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    guest = graph.invite_guest("t@fabrikam.com", "T")

    async def go() -> Any:
        async with GraphClient(graph_settings) as client:
            graph.throttle(2, retry_after=0)
            user = await client.get_user(guest["id"])
            graph.throttle(10, retry_after=0)
            with pytest.raises(GraphThrottledError):
                await client.get_user(guest["id"])
            return user

    assert run(go()).id == guest["id"]


def test_unauthenticated_requests_get_401(graph: GraphSimulator) -> None:
    import ssl
    import urllib.error
    import urllib.request

    context = ssl.create_default_context(cafile=__import__("os").environ["SSL_CERT_FILE"])
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{graph.graph_url}/users", context=context)  # noqa: S310
    assert info.value.code == 401
    assert json.loads(info.value.read())["error"]["code"] == "InvalidAuthenticationToken"


def test_subscription_lifecycle_and_notifications(graph: GraphSimulator, graph_settings: GraphSettings,
                                                  receiver: Receiver) -> None:
    async def go() -> Any:
        async with GraphClient(graph_settings) as client:
            sub = await client.create_subscription(receiver.url, receiver.lifecycle_url, "secret", soon())
            with pytest.raises(SubscriptionConflictError):
                await client.create_subscription(receiver.url, None, "secret", soon())
            renewed = await client.renew_subscription(sub.id, soon(600))
            listed = await client.list_subscriptions()
            return sub, renewed, listed

    sub, renewed, listed = run(go())
    assert renewed.expiration > sub.expiration and [s.id for s in listed] == [sub.id]
    guest = graph.invite_guest("n@fabrikam.com", "N")
    graph.update_user(guest["id"], givenName="X")
    graph.hard_delete_user(guest["id"])
    graph.send_lifecycle(sub.id, "reauthorizationRequired")
    graph.wait_for_deliveries()
    changes = [item for r in receiver.received for item in r["value"] if "changeType" in item]  # Graph batches
    assert [c["changeType"] for c in changes] == ["updated", "updated", "deleted"]
    assert all(c["clientState"] == "secret" and c["resource"] == f"Users/{guest['id']}" for c in changes)
    lifecycle = [r["value"][0] for r in receiver.received if "lifecycleEvent" in r["value"][0]]
    assert lifecycle[0]["lifecycleEvent"] == "reauthorizationRequired"


def test_subscription_refused_without_handshake_and_beyond_max(graph: GraphSimulator,
                                                               graph_settings: GraphSettings) -> None:
    silent = Receiver(answer_validation=False)
    try:
        async def go() -> None:
            async with GraphClient(graph_settings) as client:
                with pytest.raises(Exception, match="validation"):
                    await client.create_subscription(silent.url, None, "s", soon())
                with pytest.raises(Exception, match="41760"):
                    await client.create_subscription(silent.url, None, "s", soon(41_760 + 10))
        run(go())
    finally:
        silent.close()
    assert graph.subscriptions == {}


def test_expired_subscription_gets_nothing_and_drops_are_counted(graph: GraphSimulator, receiver: Receiver,
                                                                graph_settings: GraphSettings) -> None:
    async def go() -> Any:
        async with GraphClient(graph_settings) as client:
            return await client.create_subscription(receiver.url, None, "s", soon())

    sub = run(go())
    graph.drop_next_notifications(1)
    graph.invite_guest("dropped@fabrikam.com", "Dropped")
    graph.subscriptions[sub.id].expiration = datetime.now(UTC) - timedelta(seconds=1)
    graph.invite_guest("late@fabrikam.com", "Late")
    graph.wait_for_deliveries()
    assert receiver.received == [] and graph.deliveries.dropped == 1


# -- shapes compared with the examples from Microsoft's Graph documentation --------------------------

def raw_get(graph: GraphSimulator, path: str) -> dict[str, Any]:
    status, payload = raw_request(graph, "GET", path)
    assert status < 400 and payload, (status, payload)  # an error answer fails the test, as it always did
    return payload


def test_delta_pages_have_the_documented_keys(graph: GraphSimulator) -> None:
    graph.seed(guests=120)
    page = raw_get(graph, "/v1.0/users/delta?$select=displayName,givenName,surname")
    assert set(page) == set(reference("delta-page.json"))
    assert page["@odata.context"] == reference("delta-page.json")["@odata.context"]
    item_keys = {k for k in reference("delta-page.json")["value"][0]}
    assert set(page["value"][0]) == item_keys
    final = raw_get(graph, urllib.parse.urlsplit(page["@odata.nextLink"]).path + "?" +
                    urllib.parse.urlsplit(page["@odata.nextLink"]).query)
    assert set(final) == set(reference("delta-final.json")) | {"@odata.context"}
    first_id = graph.users[0]["id"]
    graph.hard_delete_user(first_id)
    link = urllib.parse.urlsplit(final["@odata.deltaLink"])
    changes = raw_get(graph, f"{link.path}?{link.query}")
    assert set(changes) == set(reference("delta-final-with-removed.json"))
    removed = changes["value"][0]
    assert set(removed) == set(reference("delta-page.json")["value"][2])
    assert removed["@removed"] == {"reason": "deleted"}


def test_subscription_and_notification_shapes(graph: GraphSimulator, graph_settings: GraphSettings,
                                              receiver: Receiver) -> None:
    async def go() -> Any:
        async with GraphClient(graph_settings) as client:
            return await client.create_subscription(receiver.url, receiver.lifecycle_url, "s", soon())

    sub = run(go())
    created = graph.subscriptions[sub.id].to_json(graph.client_id, with_client_state=True)
    assert set(reference("subscription-create-response.json")) - {"@odata.context"} <= set(created)
    listed = raw_get(graph, "/v1.0/subscriptions")
    ref_list = reference("subscription-list-users-response.json")
    assert set(listed) == set(ref_list)
    assert listed["value"][0]["clientState"] is None  # not returned by List, as documented
    assert set(listed["value"][0]) <= set(ref_list["value"][0])
    graph.invite_guest("shape@fabrikam.com", "Shape")
    graph.send_lifecycle(sub.id, "missed")
    graph.wait_for_deliveries()
    change = next(r for r in receiver.received if "changeType" in r["value"][0])["value"][0]
    doc_item = reference("change-notification.json")["value"][0]
    assert set(change) == set(doc_item) - {"id"}  # Graph's own item id is optional; we do not rely on it
    user_doc = reference("change-notification-user-updated-eventgrid.json")["data"]
    assert set(change["resourceData"]) == set(user_doc["resourceData"]) - {"eventTime", "sequenceNumber"}
    life = next(r for r in receiver.received if "lifecycleEvent" in r["value"][0])["value"][0]
    assert set(life) == set(reference("lifecycle-missed.json")["value"][0])


# -- permissions (application roles) and certificate credentials ----------------------------------------



def test_missing_application_permissions_get_403_authorization_request_denied(
        graph: GraphSimulator, graph_settings: GraphSettings) -> None:
    from shared.core.errors import GraphError

    guest = graph.invite_guest("perm@fabrikam.com", "Perm")
    group = graph.add_group("Scope")
    graph.add_group_member(group["id"], guest["id"])
    assert graph.app_roles == {"User.Read.All", "GroupMember.Read.All", "Mail.Send", "Organization.Read.All"}

    graph.app_roles = {"GroupMember.Read.All"}
    status, body = raw_request(graph, "GET", "/v1.0/users?$top=1&$select=id")
    assert status == 403
    assert body["error"]["code"] == "Authorization_RequestDenied"
    assert body["error"]["message"] == "Insufficient privileges to complete the operation."
    assert set(body["error"]["innerError"]) == {"date", "request-id", "client-request-id"}
    for method, path in (("GET", f"/v1.0/users/{guest['id']}"), ("GET", "/v1.0/users/delta")):
        assert raw_request(graph, method, path)[0] == 403
    assert raw_request(graph, "GET", f"/v1.0/groups/{group['id']}/transitiveMembers")[0] == 200
    assert raw_request(graph, "POST", f"/v1.0/users/{guest['id']}/checkMemberGroups",
                       {"groupIds": [group["id"]]})[0] == 200

    async def read_user() -> Any:
        async with GraphClient(graph_settings) as client:
            return await client.get_user(guest["id"])

    with pytest.raises(GraphError) as info:
        run(read_user())
    assert (info.value.status, info.value.code) == (403, "Authorization_RequestDenied")

    graph.app_roles = {"User.Read.All"}
    assert raw_request(graph, "GET", "/v1.0/users?$top=1&$select=id")[0] == 200
    for method, path, body in (("GET", f"/v1.0/groups/{group['id']}", None),
                               ("GET", f"/v1.0/groups/{group['id']}/transitiveMembers/microsoft.graph.user", None),
                               ("POST", f"/v1.0/users/{guest['id']}/checkMemberGroups", {"groupIds": [group["id"]]})):
        status, answer = raw_request(graph, method, path, body)
        assert (status, answer["error"]["code"]) == (403, "Authorization_RequestDenied"), path

    graph.app_roles = {"Directory.Read.All"}  # the broader permission covers both
    assert raw_request(graph, "GET", "/v1.0/users")[0] == 200
    assert raw_request(graph, "GET", f"/v1.0/groups/{group['id']}")[0] == 200

    graph.reset()
    assert graph.app_roles == {"User.Read.All", "GroupMember.Read.All", "Mail.Send", "Organization.Read.All"}


def test_tokens_carry_the_granted_roles(graph: GraphSimulator) -> None:
    from shared.services.preflight import token_roles

    def token() -> str:
        status, body, _ = graph.handle("POST", f"/{graph.tenant_id}/oauth2/v2.0/token", {}, {},
                                       urllib.parse.urlencode({"grant_type": "client_credentials",
                                                               "client_id": graph.client_id,
                                                               "client_secret": graph.client_secret}).encode())
        assert status == 200 and body is not None
        return str(body["access_token"])

    assert token_roles(token()) == ["GroupMember.Read.All", "Mail.Send", "Organization.Read.All", "User.Read.All"]
    graph.app_roles = set()
    assert token_roles(token()) == []  # Entra leaves the roles claim out when nothing is granted
    status, body, _ = graph.handle("POST", f"/{graph.tenant_id}/oauth2/v2.0/token", {}, {},
                                   urllib.parse.urlencode({"grant_type": "client_credentials",
                                                           "client_id": graph.client_id,
                                                           "client_secret": "wrong"}).encode())
    assert status == 401 and body is not None and "AADSTS7000215" in body["error_description"]


def _certificate_pem(tmp_path: Path, name: str) -> tuple[Path, bytes]:
    """An RSA key and a self-signed certificate, as `New-SelfSignedCertificate` makes for an app registration;
    written together to one PEM file (what GRAPH_CLIENT_CERTIFICATE_PATH takes). Returns (file, certificate)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    path = tmp_path / f"{name}.pem"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()) + cert_pem)
    return path, cert_pem


def test_certificate_credentials_sign_in_and_read_users(graph: GraphSimulator, tmp_path: Path) -> None:
    import os

    from azure.core.exceptions import ClientAuthenticationError

    from shared.settings import load_graph_settings

    graph.invite_guest("cert@fabrikam.com", "Cert")
    registered, cert_pem = _certificate_pem(tmp_path, "guestsync-app")
    unknown, _ = _certificate_pem(tmp_path, "someone-else")
    graph.register_certificate(cert_pem)
    with pytest.raises(ValueError, match="RSA"):  # Entra takes RSA certificates only
        graph.register_certificate(Path(os.environ["SSL_CERT_FILE"]).read_bytes())  # the EC test CA

    def settings(path: Path) -> GraphSettings:
        return load_graph_settings({
            "GRAPH_AUTH": "certificate", "GRAPH_TENANT_ID": graph.tenant_id, "GRAPH_CLIENT_ID": graph.client_id,
            "GRAPH_CLIENT_CERTIFICATE_PATH": str(path), "GRAPH_ENDPOINT": graph.graph_url,
            "GRAPH_AUTHORITY_HOST": graph.base_url, "GRAPH_CA_FILE": os.environ["SSL_CERT_FILE"],
        })

    async def guests(path: Path) -> list[Any]:
        async with GraphClient(settings(path)) as client:
            return [u async for u in client.list_guests()]

    # the real azure-identity CertificateCredential (MSAL signs a client assertion with the key)
    assert [u.mail for u in run(guests(registered))] == ["cert@fabrikam.com"]
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        run(guests(unknown))
    graph.reset()  # forgets registered certificates
    with pytest.raises(ClientAuthenticationError, match="AADSTS700027"):
        run(guests(registered))


def test_client_assertion_is_verified(graph: GraphSimulator, tmp_path: Path) -> None:
    """Signature (RS256 and PS256), audience, issuer/subject and expiry of the assertion are checked."""
    import base64
    import time

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    path, cert_pem = _certificate_pem(tmp_path, "assert")
    thumbprint = graph.register_certificate(cert_pem)
    key = serialization.load_pem_private_key(path.read_bytes(), None)
    endpoint = f"/{graph.tenant_id}/oauth2/v2.0/token"

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    def assertion(alg: str = "PS256", **claims: Any) -> str:
        now = time.time()
        body = {"aud": f"{graph.base_url}{endpoint}", "iss": graph.client_id, "sub": graph.client_id,
                "exp": now + 600, "iat": now, "jti": "x"} | claims
        head = {"alg": alg, "typ": "JWT", "x5t#S256": thumbprint}
        signed = f"{b64(json.dumps(head).encode())}.{b64(json.dumps(body).encode())}"
        scheme = (padding.PKCS1v15() if alg == "RS256" else
                  padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH))
        return f"{signed}.{b64(key.sign(signed.encode(), scheme, hashes.SHA256()))}"  # type: ignore[union-attr,call-arg]

    def token(client_assertion: str) -> tuple[int, dict[str, Any]]:
        form = {"grant_type": "client_credentials", "client_id": graph.client_id,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": client_assertion, "scope": "https://graph.microsoft.com/.default"}
        status, body, _ = graph.handle("POST", endpoint, {}, {}, urllib.parse.urlencode(form).encode())
        return status, body

    assert token(assertion("PS256"))[0] == 200
    assert token(assertion("RS256"))[0] == 200
    good = assertion()
    tampered = good.rsplit(".", 1)[0][:-2] + "xx." + good.rsplit(".", 1)[1]
    for bad, code in ((tampered, "AADSTS"), (assertion(aud="https://elsewhere/token"), "AADSTS700212"),
                      (assertion(iss="someone"), "AADSTS50027"), (assertion(exp=time.time() - 3600), "AADSTS700024"),
                      ("not-a-jwt", "AADSTS50027")):
        status, body = token(bad)
        assert status == 401 and body["error"] == "invalid_client" and code in body["error_description"], body


def test_organization_lists_the_verified_domains_as_graph_does(graph: GraphSimulator,
                                                                graph_settings: GraphSettings) -> None:
    """``GET /organization`` in the shape of the docs' example, and the adapter finds the initial domain."""
    doc = reference("organization-list.json")
    status, body = raw_request(graph, "GET", "/v1.0/organization")
    assert status == 200 and set(body) == set(doc) and body["@odata.context"] == doc["@odata.context"]
    assert set(body["value"][0]) <= set(doc["value"][0])
    assert set(body["value"][0]["verifiedDomains"][0]) == set(doc["value"][0]["verifiedDomains"][0])
    status, selected = raw_request(graph, "GET", "/v1.0/organization?$select=verifiedDomains")
    assert status == 200 and set(selected["value"][0]) == {"verifiedDomains"}
    assert selected["@odata.context"].endswith("#organization(verifiedDomains)")

    graph.verified_domains = [
        {**doc["value"][0]["verifiedDomains"][0], "name": "fabrikam.com", "isInitial": False},
        {**doc["value"][0]["verifiedDomains"][0], "name": "Contoso.onmicrosoft.com", "isDefault": False},
    ]

    async def initial() -> str:
        async with GraphClient(graph_settings) as client:
            return await client.get_initial_domain()

    assert run(initial()) == "contoso.onmicrosoft.com"
    assert graph.request_count["GET /organization"] == 3

    graph.app_roles = {"User.Read.All"}  # Organization.Read.All (or a Directory role) is needed
    from shared.core.errors import GraphError

    with pytest.raises(GraphError) as info:
        run(initial())
    assert (info.value.status, info.value.code) == (403, "Authorization_RequestDenied")


def test_id_case_upper_writes_every_user_id_in_upper_case_and_keeps_the_documented_shapes(
        graph: GraphSimulator, receiver: Receiver) -> None:
    """The switch behind tests/integration/test_graph_id_case.py: answers, @removed items and notifications carry
    upper-case ids, lookups match any case, and the JSON keeps the keys of the documentation's examples."""
    status, _ = raw_request(graph, "POST", "/v1.0/subscriptions", {
        "changeType": "updated,deleted", "notificationUrl": receiver.url, "resource": "users",
        "expirationDateTime": soon().isoformat(), "clientState": "s"})
    assert status == 201
    graph.seed(guests=2)
    start = raw_get(graph, "/v1.0/users/delta?$select=displayName,givenName,surname")
    while "@odata.nextLink" in start:
        link = urllib.parse.urlsplit(start["@odata.nextLink"])
        start = raw_get(graph, f"{link.path}?{link.query}")
    graph.id_case = "upper"
    first, second = (u["id"] for u in graph.users)
    assert first == first.lower()  # stored as created; only what the simulator writes changes

    user = raw_get(graph, f"/v1.0/users/{first}")
    assert user["id"] == first.upper()
    assert raw_get(graph, f"/v1.0/users/{first.upper()}")["id"] == first.upper()
    both = raw_get(graph, f"/v1.0/users?$filter=id in ('{first}','{second.upper()}')")
    assert sorted(u["id"] for u in both["value"]) == sorted([first.upper(), second.upper()])

    graph.update_user(first, givenName="Changed")
    graph.hard_delete_user(second)
    graph.wait_for_deliveries()
    link = urllib.parse.urlsplit(start["@odata.deltaLink"])
    changes = raw_get(graph, f"{link.path}?{link.query}")
    assert set(changes) == set(reference("delta-final-with-removed.json"))
    changed, removed = changes["value"]
    assert changed["id"] == first.upper() and set(changed) == set(reference("delta-page.json")["value"][0])
    assert removed == {"id": second.upper(), "@removed": {"reason": "deleted"}}
    assert set(removed) == set(reference("delta-page.json")["value"][2])

    items = [item for r in receiver.received for item in r["value"] if "changeType" in item]
    assert [i["resourceData"]["id"] for i in items[-2:]] == [first.upper(), second.upper()]
    assert all(i["resource"] == f"Users/{i['resourceData']['id']}" for i in items[-2:])
    assert set(items[-1]) == set(reference("change-notification.json")["value"][0]) - {"id"}
    graph.reset()
    assert graph.id_case is None
