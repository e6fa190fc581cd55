"""Test fixtures: real Azurite, a real Samba AD DC and the Graph simulator, started on loopback."""

pytest_plugins = [
    "tests.plugins.certs",
    "tests.plugins.azurite",
    "tests.plugins.samba",
    "tests.plugins.kerberos",
    "tests.plugins.graph",
    "tests.plugins.stack",
]
