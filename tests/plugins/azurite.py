"""A real Azurite for the whole test session; each test gets fresh queue and table names."""

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localenv.azurite import Azurite


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    server = Azurite(Path(tmp_path_factory.mktemp("azurite"))).start()
    yield server
    server.stop()


@pytest.fixture
def storage_names() -> dict[str, str]:
    """Unique queue/table names so tests never see each other's messages."""
    suffix = uuid.uuid4().hex[:10]
    return {
        "GUESTSYNC_CHANGE_QUEUE": f"changes-{suffix}",
        "GUESTSYNC_EXPORT_QUEUE": f"exports-{suffix}",
        "GUESTSYNC_STATE_TABLE": f"state{suffix}",
    }
