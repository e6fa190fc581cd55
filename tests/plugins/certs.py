"""Session-wide local CA shared by Samba (LDAPS) and the Graph simulator (HTTPS)."""

from pathlib import Path

import pytest

from devtools.localenv.certs import LocalPki, create_local_pki


@pytest.fixture(scope="session")
def local_pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return create_local_pki(Path(tmp_path_factory.mktemp("pki")), ("localhost", "dc1.contoso.com"))
