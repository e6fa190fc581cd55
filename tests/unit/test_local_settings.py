"""Local settings: ``local.settings.json``'s Values (the Functions convention, the environment wins), the
example file in the repository, and a Key Vault reference that arrives unresolved."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from shared.core.domain import ConfigurationError
from shared.settings import apply_local_settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_values_become_settings_and_the_environment_wins(tmp_path: Path) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(json.dumps({"IsEncrypted": False, "Values": {
        "GRAPH_TENANT_ID": "from-file", "GRAPH_CLIENT_ID": "from-file", "AD_VALIDATE_CERTIFICATE": True}}))
    environ = {"GRAPH_CLIENT_ID": "from-environment"}
    assert apply_local_settings(str(path), environ) == 2
    assert environ == {"GRAPH_TENANT_ID": "from-file", "GRAPH_CLIENT_ID": "from-environment",
                       "AD_VALIDATE_CERTIFICATE": "true"}
    assert apply_local_settings(str(tmp_path / "absent.json"), environ) == 0


@pytest.mark.parametrize(("text", "words"), [
    ("{not json", "cannot be read as JSON"),
    ('{"Values": []}', 'a "Values" object'),
    ('{"IsEncrypted": true, "Values": {}}', "func settings decrypt"),
    ('{"Values": {"GRAPH_AUTH": {"nested": 1}}}', "Values.GRAPH_AUTH must be a string"),
])
def test_a_broken_file_is_one_line_naming_it(tmp_path: Path, text: str, words: str) -> None:
    path = tmp_path / "local.settings.json"
    path.write_text(text)
    with pytest.raises(ConfigurationError) as info:
        apply_local_settings(str(path), {})
    assert words in str(info.value) and "local.settings.json" in str(info.value) and "\n" not in str(info.value)


def test_an_unresolved_key_vault_reference_is_named() -> None:
    env = {"AzureWebJobsStorage": "UseDevelopmentStorage=true", "GRAPH_AUTH": "client_secret",
           "GRAPH_TENANT_ID": "11111111-1111-1111-1111-111111111111", "GRAPH_CLIENT_ID": "x",
           "GRAPH_CLIENT_SECRET": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/secrets/graph/)"}
    with pytest.raises(ConfigurationError) as info:
        load_settings(env)
    assert str(info.value) == ("setting GRAPH_CLIENT_SECRET holds an unresolved Key Vault reference: the app's "
                               "identity cannot read the secret or the reference is wrong (see the app's Environment "
                               "variables blade: the reference's status says which)")


def test_the_example_file_names_documented_settings_and_holds_no_secret() -> None:
    values = json.loads((ROOT / "local.settings.example.json").read_text())["Values"]
    readme = (ROOT / "docs" / "configuration.md").read_text()
    for name, value in values.items():
        assert name == "FUNCTIONS_WORKER_RUNTIME" or f"`{name}`" in readme, f"{name} is not in docs/configuration.md"
        if re.search(r"SECRET|PASSWORD|KEY$", name):
            assert value.startswith("<") and value.endswith(">"), f"{name} must be a placeholder"
