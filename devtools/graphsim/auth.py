"""Sign-in and permissions: Entra's token endpoint for client credentials, and Graph's bearer and role checks.

The app signs in with its client secret or with a certificate (``register_certificate``; a client assertion
JWT signed RS256 or PS256, as MSAL sends it). Tokens are JWT-shaped like Entra's and carry the granted
application permissions in ``roles``; they are unsigned, as clients must treat Graph tokens as opaque anyway.
``Tenant.app_roles`` is checked on each request (Entra applies a consent change to new tokens only): a request
that needs a permission the app lacks gets Graph's 403 ``Authorization_RequestDenied``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import secrets
import urllib.parse
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from devtools.graphsim.state import GraphHttpError, Tenant, now

#: The application permissions each kind of request accepts (any one of them).
USER_READ_ROLES = frozenset({"User.Read.All", "User.ReadWrite.All", "Directory.Read.All",
                             "Directory.ReadWrite.All"})
GROUP_MEMBER_READ_ROLES = frozenset({"GroupMember.Read.All", "GroupMember.ReadWrite.All", "Group.Read.All",
                                     "Group.ReadWrite.All", "Directory.Read.All", "Directory.ReadWrite.All"})
MAIL_SEND_ROLES = frozenset({"Mail.Send"})
ORGANIZATION_READ_ROLES = frozenset({"Organization.Read.All", "Directory.Read.All", "Organization.ReadWrite.All",
                                     "Directory.ReadWrite.All"})
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
CLOCK_SKEW = timedelta(minutes=5)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Auth:
    """The tokens issued and the certificates registered on the app."""

    def __init__(self, tenant: Tenant) -> None:
        self._tenant = tenant
        self._tokens: set[str] = set()
        self._certificates: dict[str, x509.Certificate] = {}  # base64url SHA-256 and SHA-1 thumbprint -> cert

    def reset(self) -> None:
        """Forget the registered certificates (tokens already issued stay valid)."""
        with self._tenant.lock:
            self._certificates.clear()

    def register_certificate(self, pem: bytes) -> str:
        """Register the (first) certificate in ``pem`` as a credential of the app, as uploading it to the app
        registration does; return its SHA-256 thumbprint (base64url, the ``x5t#S256`` MSAL sends)."""
        cert = x509.load_pem_x509_certificates(pem)[0]
        if not isinstance(cert.public_key(), rsa.RSAPublicKey):
            raise ValueError("Entra ID accepts RSA certificates only")
        sha256, sha1 = (_b64url(cert.fingerprint(algorithm)) for algorithm in (hashes.SHA256(), hashes.SHA1()))  # noqa: S303
        with self._tenant.lock:
            self._certificates[sha256] = self._certificates[sha1] = cert
        return sha256

    # -- Entra: /{tenant}/oauth2/v2.0/token and the OpenID configuration --------------------------------
    def token(self, path: str, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Client credentials with a client secret, or with a client assertion signed by a registered
        certificate (``client_assertion_type`` jwt-bearer)."""
        tenant = self._tenant
        form = dict(urllib.parse.parse_qsl(body.decode()))
        if form.get("grant_type") != "client_credentials":
            return 400, {"error": "unsupported_grant_type"}, {}
        if form.get("client_id", tenant.client_id) != tenant.client_id:
            return 400, {"error": "unauthorized_client", "error_description": (
                f"AADSTS700016: Application with identifier '{form.get('client_id')}' was not found in the "
                f"directory '{tenant.tenant_id}'.")}, {}
        if form.get("client_assertion_type") == JWT_BEARER:
            problem = self._assertion_problem(form.get("client_assertion", ""), f"{tenant.base_url}{path}")
            if problem:
                return 401, {"error": "invalid_client", "error_description": problem}, {}
        elif "client_id" not in form or not secrets.compare_digest(
            form.get("client_secret", ""), tenant.client_secret
        ):
            error = {"error": "invalid_client", "error_description": "AADSTS7000215: Invalid client secret provided."}
            return 401, error, {}
        token = self._access_token()
        with tenant.lock:
            self._tokens.add(token)
        return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}, {}

    def _access_token(self) -> str:
        """A JWT-shaped app-only token like Entra's (``roles`` = the granted application permissions, left out
        when there are none, as Entra does); its signature is random: Graph tokens are opaque to clients."""
        tenant = self._tenant
        issued = int(now().timestamp())
        with tenant.lock:
            roles = sorted(tenant.app_roles)
        claims: dict[str, Any] = {
            "aud": "https://graph.microsoft.com", "iss": f"https://sts.windows.net/{tenant.tenant_id}/",
            "iat": issued, "nbf": issued, "exp": issued + 3599, "appid": tenant.client_id, "idtyp": "app",
            "oid": tenant.client_id, "sub": tenant.client_id, "tid": tenant.tenant_id, "ver": "1.0",
            "uti": secrets.token_urlsafe(16),
        }
        if roles:
            claims["roles"] = roles
        header = {"typ": "JWT", "alg": "RS256", "kid": "graphsim"}
        return ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode()) for part in (header, claims)) + (
            "." + _b64url(secrets.token_bytes(64)))

    def _assertion_problem(self, assertion: str, token_endpoint: str) -> str | None:
        """Why Entra would refuse this client assertion (RFC 7523), or None when it is good."""
        try:
            head, payload, signature = assertion.split(".")
            header, claims = json.loads(_unb64url(head)), json.loads(_unb64url(payload))
            raw_signature = _unb64url(signature)
        except (ValueError, binascii.Error):
            return "AADSTS50027: JWT token is invalid or malformed."
        if not isinstance(header, dict) or not isinstance(claims, dict):
            return "AADSTS50027: JWT token is invalid or malformed."
        with self._tenant.lock:
            cert = next((self._certificates[t] for t in (str(header.get("x5t#S256")).rstrip("="),
                                                          str(header.get("x5t")).rstrip("="))
                         if t in self._certificates), None)  # MSAL keeps the base64 padding, RFC 7515 drops it
        if cert is None:
            return (f"AADSTS700027: The certificate with identifier used to sign the client assertion is not "
                    f"registered on application. [Reason - The key was not found., Thumbprint of key used by client: "
                    f"'{header.get('x5t#S256') or header.get('x5t')}']")
        key = cert.public_key()
        assert isinstance(key, rsa.RSAPublicKey)  # register_certificate accepts RSA only
        signed = f"{head}.{payload}".encode()
        schemes: dict[str, padding.AsymmetricPadding] = {
            "RS256": padding.PKCS1v15(),
            "PS256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH),
        }
        scheme = schemes.get(str(header.get("alg")))
        if scheme is None:
            return f"AADSTS5002730: Invalid JWT header: unsupported algorithm {header.get('alg')!r}."
        try:
            key.verify(raw_signature, signed, scheme, hashes.SHA256())
        except InvalidSignature:
            return "AADSTS700027: Client assertion failed signature validation."
        if claims.get("aud") != token_endpoint:
            return (f"AADSTS700212: The audience claim of the client assertion is {claims.get('aud')!r}; "
                    f"expected the token endpoint {token_endpoint!r}.")
        client_id = self._tenant.client_id
        if claims.get("iss") != client_id or claims.get("sub") != client_id:
            return "AADSTS50027: Invalid JWT token: iss and sub of the client assertion must be the client id."
        at = now().timestamp()
        try:
            expires, not_before = float(claims["exp"]), float(claims.get("nbf") or claims.get("iat") or at)
        except (KeyError, TypeError, ValueError):
            return "AADSTS50027: Invalid JWT token: exp (and nbf) must be numbers."
        skew = CLOCK_SKEW.total_seconds()
        if expires < at - skew or not_before > at + skew:
            return "AADSTS700024: Client assertion is not within its valid time range."
        return None

    def openid(self, tenant_segment: str) -> dict[str, Any]:
        base_url = self._tenant.base_url
        base = f"{base_url}/{tenant_segment}"
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "issuer": f"{base_url}/{self._tenant.tenant_id}/v2.0",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "tenant_region_scope": "EU",
        }

    # -- Graph: bearer token and application permissions ------------------------------------------------
    def authorize(self, headers: Any) -> None:
        """401 unless the request carries a token this endpoint issued."""
        auth = headers.get("Authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else ""
        with self._tenant.lock:
            if token not in self._tokens:
                raise GraphHttpError(401, "InvalidAuthenticationToken", "Access token is empty or invalid.")

    def require_roles(self, method: str, route: str) -> None:
        """403 Authorization_RequestDenied when the app lacks every permission that the request accepts."""
        lowered = route.lower()
        needed: frozenset[str] | None = None
        if re.fullmatch(r"/users/[^/]+/sendmail", lowered):
            needed = MAIL_SEND_ROLES
        elif lowered == "/organization":
            needed = ORGANIZATION_READ_ROLES
        elif re.fullmatch(r"/users/[^/]+/checkmembergroups", lowered) or lowered.startswith("/groups/"):
            needed = GROUP_MEMBER_READ_ROLES
        elif lowered == "/users" or lowered.startswith("/users/") or (lowered == "/subscriptions"
                                                                    and method == "POST"):
            needed = USER_READ_ROLES  # a subscription on users needs the permission to read users
        with self._tenant.lock:
            granted = set(self._tenant.app_roles)
        if needed is not None and not needed & granted:
            raise GraphHttpError(403, "Authorization_RequestDenied",
                                 "Insufficient privileges to complete the operation.")
