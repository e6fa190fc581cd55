"""infra/ (Bicep for azd and the Azure CLI) against the code: every Bicep file parses, the app settings are
exactly the settings the code reads (with a short, explained allow-list), README documents each of them, no
secret has a default, and storage is keyless.

The Bicep files are parsed with pycep-parser (a Lark LALR grammar of Bicep, from PyPI): a syntax error fails the
test, and a test below shows that the parser does reject broken Bicep, so the check cannot pass vacuously. It
checks syntax and structure only; type checking and what-if need the Bicep compiler and an Azure subscription.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import pytest
from lark.exceptions import LarkError
from pycep import BicepParser

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
SETTINGS_PY = ROOT / "shared" / "settings.py"
FUNCTIONS_PY = ROOT / "shared" / "functions.py"
FUNCTION_APP_PY = ROOT / "function_app.py"
README = ROOT / "README.md"

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

#: Settings the code reads that infra/ deliberately does not set, each with the reason.
CODE_ONLY_SETTINGS = {
    # The connection-string form (Azurite, an agent with a key). In Azure the storage account has shared keys
    # off and the host and the code use the keyless AzureWebJobsStorage__accountName/__credential/__clientId.
    "AzureWebJobsStorage",
    # Explicit endpoints: the host and the code derive both from AzureWebJobsStorage__accountName.
    "AzureWebJobsStorage__queueServiceUri",
    "AzureWebJobsStorage__tableServiceUri",
    # AzureWebJobsStorage__credential=clientsecret is for the on-premises agent's service principal; the app in
    # Azure uses its managed identity and has no storage secret.
    "AzureWebJobsStorage__tenantId",
    "AzureWebJobsStorage__clientSecret",
    # Overrides for the Graph simulator and tests: GRAPH_CLOUD (set from a parameter) selects a consistent
    # endpoint, authority and scope; setting them as well could only disagree with it.
    "GRAPH_ENDPOINT",
    "GRAPH_AUTHORITY_HOST",
    "GRAPH_SCOPE",
    # A CA bundle file for a TLS-inspecting proxy or the local simulator: the app reaches Graph directly.
    "GRAPH_CA_FILE",
    # The certificate as a file on the agent's server; in Azure it comes from Key Vault as GRAPH_CLIENT_CERTIFICATE.
    "GRAPH_CLIENT_CERTIFICATE_PATH",
}

#: App settings infra/ sets that the code does not read, each with the reader.
INFRA_ONLY_SETTINGS = {
    # Application Insights accepts only Entra ID-authenticated telemetry: read by the Functions host and by
    # azure-monitor-opentelemetry's exporter (the code's own telemetry), not through shared/settings.py.
    "APPLICATIONINSIGHTS_AUTHENTICATION_STRING",
}

#: App settings that carry a secret: in Azure always a Key Vault reference (or empty when the mode has none).
SECRET_SETTINGS = {
    "GRAPH_CLIENT_STATE",
    "GRAPH_CLIENT_STATE_PREVIOUS",
    "GUESTSYNC_WEBHOOK_KEY",
    "GRAPH_CLIENT_SECRET",
    "GRAPH_CLIENT_CERTIFICATE",
    "GRAPH_CLIENT_CERTIFICATE_PASSWORD",
    "AD_BIND_PASSWORD",
    "SMTP_PASSWORD",
}

#: Built-in role definitions (the same GUID in every tenant) the identity needs.
ROLES = {
    "Storage Blob Data Owner": "b7e6dc6d-f1e8-4753-8033-0f276bb0955b",
    "Storage Queue Data Contributor": "974c5e8b-45b9-4653-ba55-5f855dd0fb88",
    "Storage Table Data Contributor": "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3",
    "Key Vault Secrets User": "4633458b-17de-408a-b874-0445c86b69e6",
    "Monitoring Metrics Publisher": "3913510d-42f4-4e42-8a64-420c390055eb",
}

#: The functions in shared/settings.py that read one setting, named by their second argument.
READERS = {"_get", "_require", "_bool", "_choice", "_int"}


@pytest.fixture(scope="module")
def parser() -> BicepParser:
    return BicepParser()


@pytest.fixture(scope="module")
def parsed(parser: BicepParser) -> dict[Path, dict[str, Any]]:
    # pycep's JSON-like tree, used as plain dicts here.
    return {path: dict(parser.parse(file_path=path)) for path in BICEP_FILES}


# --- the settings the code reads ---------------------------------------------------------------------------


def _string_values(node: ast.expr, names: dict[str, set[str]]) -> set[str] | None:
    """The strings an expression can be: a literal, a name bound to literals, or a concatenation of those."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.Name) and node.id in names:
        return names[node.id]
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _string_values(node.left, names), _string_values(node.right, names)
        if left is not None and right is not None:
            return {a + b for a in left for b in right}
    return None


def _bindings(scope: ast.AST, inherited: dict[str, set[str]]) -> dict[str, set[str]]:
    """Names bound to string literals in one scope: ``x = "..."`` and ``for x in ("...", "...")``."""
    names = dict(inherited)
    for node in ast.walk(scope):
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            values = _string_values(node.value, names)
            if values is not None:
                names[node.targets[0].id] = names.get(node.targets[0].id, set()) | values
        elif (isinstance(node, ast.For) and isinstance(node.target, ast.Name)
              and isinstance(node.iter, ast.Tuple | ast.List)):
            items = [_string_values(e, names) for e in node.iter.elts]
            if items and all(items):
                names[node.target.id] = {value for item in items if item for value in item}
    return names


def settings_read_by_code() -> set[str]:
    """Every setting name the code reads: shared/settings.py's readers and BINDING_DEFAULTS, the ``%NAME%``
    binding expressions of shared/functions.py, and function_app.py's own environment lookups."""
    tree = ast.parse(SETTINGS_PY.read_text(encoding="utf-8"))
    module_names = _bindings(ast.Module(body=[n for n in tree.body if isinstance(n, ast.Assign)], type_ignores=[]),
                             {})
    found: set[str] = set()
    unresolved: list[str] = []
    for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        if function.name in READERS:
            continue  # the readers themselves take the name as a parameter
        names = _bindings(function, module_names)
        for call in ast.walk(function):
            if (isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in READERS
                    and len(call.args) >= 2):
                values = _string_values(call.args[1], names)
                if values is None:
                    unresolved.append(f"line {call.lineno}: {ast.unparse(call)}")
                else:
                    found |= values
    assert not unresolved, f"settings read with a name this test cannot resolve; extend it: {unresolved}"
    binding_defaults = [
        node.value for node in tree.body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        and node.target.id == "BINDING_DEFAULTS" and isinstance(node.value, ast.Dict)
    ]
    assert len(binding_defaults) == 1, "BINDING_DEFAULTS: dict[str, str] = {...} not found in shared/settings.py"
    found |= {k.value for k in binding_defaults[0].keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    found |= set(re.findall(r"%([A-Za-z_][A-Za-z0-9_]*)%", FUNCTIONS_PY.read_text(encoding="utf-8")))
    found |= set(re.findall(r"os\.(?:environ\.get|getenv)\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"",
                            FUNCTION_APP_PY.read_text(encoding="utf-8")))
    return found


def test_settings_collector_sees_every_kind_of_read() -> None:
    # A guard on the collector itself: one setting of each kind of read, so a silent miss shows here.
    names = settings_read_by_code()
    assert {
        "GRAPH_AUTH",  # _choice with a literal
        "AD_BIND_PASSWORD",  # _require
        "AD_VALIDATE_CERTIFICATE",  # _bool
        "GUESTSYNC_BREAKER_THRESHOLD",  # _int
        "AzureWebJobsStorage__accountName",  # prefix + "accountName"
        "GRAPH_CLIENT_CERTIFICATE_PATH",  # for name in (...): _get(env, name)
        "GUESTSYNC_SUBSCRIPTION_SCHEDULE",  # BINDING_DEFAULTS and %NAME%
        "GUESTSYNC_WORKER_MODE",  # function_app.py
    } <= names


# --- the Bicep files ---------------------------------------------------------------------------------------


def test_infra_has_bicep_files() -> None:
    assert MAIN in BICEP_FILES
    assert len(BICEP_FILES) >= 2, "main.bicep and its modules"


@pytest.mark.parametrize("path", BICEP_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_bicep_file_parses(parser: BicepParser, path: Path) -> None:
    tree = parser.parse(file_path=path)  # raises on a syntax error
    assert tree["resources"] or tree.get("modules"), f"{path.name} declares nothing"


@pytest.mark.parametrize(
    "broken",
    [
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'st'\n",  # unclosed object
        "param name string = 'unterminated\n",  # unterminated string
        "var settings = {\n  GRAPH_AUTH 'managed_identity'\n}\n",  # missing colon
        "parm name string\n",  # misspelt keyword
        "output url = 'https://example.org'\n",  # output without a type
        "module network 'modules/network.bicep' {\n}\n",  # module without '='
        "var x = concat('a', 'b'\n",  # unclosed call
    ],
)
def test_parser_rejects_broken_bicep(parser: BicepParser, broken: str) -> None:
    with pytest.raises((LarkError, ValueError)):  # lark's UnexpectedInput family, or pycep's own check
        parser.parse(text=broken)


def test_no_hash_comments() -> None:
    # The parser skips '#' lines, which the Bicep compiler refuses: comments are // and /* */.
    for path in BICEP_FILES:
        hashed = [n for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                  if line.lstrip().startswith("#")]
        assert not hashed, f"{path.name}: '#' comment on lines {hashed}"


def test_parser_accepts_the_constructs_infra_uses(parser: BicepParser) -> None:
    # The counterpart of the test above: rejection is about the breakage, not the constructs.
    tree = parser.parse(text=(
        "@secure()\nparam secret string?\n"
        "var ok = !empty(secret ?? '') ? '@Microsoft.KeyVault(SecretUri=${uri})' : ''\n"
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'st'\n}\n"
    ))
    assert "secret" in tree["parameters"] and "st" in tree["resources"]


def _main(parsed: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    return parsed[MAIN]


def _app_settings(parsed: dict[Path, dict[str, Any]]) -> dict[str, Any]:
    main = _main(parsed)
    settings = main["variables"]["appSettings"]["value"]
    assert isinstance(settings, dict)
    return settings


def _block(text: str, start: str) -> str:
    """The text of a ``{ ... }`` block that starts at the line ``start``."""
    index = text.index(start)
    depth = 0
    for position in range(text.index("{", index), len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            return text[index:position + 1]
    raise AssertionError(f"unclosed block {start!r}")


def _setting_lines() -> dict[str, str]:
    """``NAME: expression`` of each app setting, from the source text."""
    block = _block(MAIN.read_text(encoding="utf-8"), "var appSettings = {")
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\s*([A-Za-z_]\w*)\s*:\s*(.+)$", block, re.MULTILINE)}


def test_app_settings_are_the_ones_deployed(parsed: dict[Path, dict[str, Any]]) -> None:
    resources = _main(parsed)["resources"]
    config = resources["siteAppSettings"]
    assert config["type"] == "Microsoft.Web/sites/config"
    assert config["config"]["name"] == "appsettings"
    assert config["config"]["parent"] == "site"
    assert config["config"]["properties"] == "appSettings"  # the var checked below, as a whole
    # The parsed keys agree with the source text (the parser drops nothing).
    block = _block(MAIN.read_text(encoding="utf-8"), "var appSettings = {")
    keys_in_text = set(re.findall(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*:", block, re.MULTILINE))
    assert keys_in_text == set(_app_settings(parsed))


def test_app_settings_cover_every_setting_the_code_reads(parsed: dict[Path, dict[str, Any]]) -> None:
    code = settings_read_by_code()
    infra = set(_app_settings(parsed))
    assert code - infra == CODE_ONLY_SETTINGS, (
        f"read by the code but not set in infra/main.bicep: {sorted(code - infra - CODE_ONLY_SETTINGS)}; "
        f"allow-listed but now set or no longer read: {sorted(CODE_ONLY_SETTINGS - (code - infra))}"
    )
    assert infra - code == INFRA_ONLY_SETTINGS, (
        f"set in infra/main.bicep but read by nothing: {sorted(infra - code - INFRA_ONLY_SETTINGS)}; "
        f"allow-listed but now read or no longer set: {sorted(INFRA_ONLY_SETTINGS - (infra - code))}"
    )


def test_readme_configuration_table_lists_every_setting() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Configuration\n"):]
    section = section[:section.index("\n## ", 1)]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    documented = {name for row in rows for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row)}
    missing = sorted(settings_read_by_code() - documented)
    assert not missing, f"settings without a row in README.md, Configuration: {missing}"


def test_storage_is_keyless(parsed: dict[Path, dict[str, Any]]) -> None:
    accounts = [
        resource
        for tree in parsed.values()
        for resource in tree["resources"].values()
        if resource["type"] == "Microsoft.Storage/storageAccounts" and not resource["existing"]
    ]
    assert accounts, "no storage account in infra/"
    for account in accounts:
        assert account["config"]["properties"]["allowSharedKeyAccess"] is False
    settings = _app_settings(parsed)
    assert "AzureWebJobsStorage" not in settings  # no connection string
    assert settings["AzureWebJobsStorage__credential"] == "managedidentity"
    for path in BICEP_FILES:
        source = path.read_text(encoding="utf-8")
        assert "listKeys(" not in source and "AccountKey=" not in source, f"{path.name} uses a storage key"


def test_no_secure_parameter_has_a_default(parsed: dict[Path, dict[str, Any]]) -> None:
    secure = {
        (path.name, name): parameter
        for path, tree in parsed.items()
        for name, parameter in tree["parameters"].items()
        if any(d["type"] == "secure" for d in parameter["decorators"])
    }
    assert ("main.bicep", "graphClientState") in secure  # not vacuous
    with_default = sorted(f"{file}: {name}" for (file, name), p in secure.items() if p["default"] is not None)
    assert not with_default, f"@secure() parameters with a default value: {with_default}"
    # GRAPH_CLIENT_STATE is required: not nullable (`string?`) either.
    assert re.search(r"^param graphClientState string$", MAIN.read_text(encoding="utf-8"), re.MULTILINE)


def test_secrets_reach_the_app_only_as_key_vault_references(parsed: dict[Path, dict[str, Any]]) -> None:
    main = _main(parsed)
    secure_params = [
        name for name, parameter in main["parameters"].items()
        if any(d["type"] == "secure" for d in parameter["decorators"])
    ]
    block = _block(MAIN.read_text(encoding="utf-8"), "var appSettings = {")
    # No secure parameter appears in the app settings (a `.name` after another value is a property, not it).
    leaked = [name for name in secure_params if re.search(rf"(?<![.\w]){name}(?!\w)", block)]
    assert not leaked, f"secure parameters written into app settings: {leaked}"
    lines = _setting_lines()
    for name in SECRET_SETTINGS:
        assert "'@Microsoft.KeyVault(SecretUri=${" in lines[name], f"{name} is not a Key Vault reference"
    site = main["resources"]["site"]["config"]
    assert site["properties"]["keyVaultReferenceIdentity"] is not None
    assert site["identity"]["type"] == "UserAssigned"


def test_flex_consumption_app(parsed: dict[Path, dict[str, Any]]) -> None:
    resources = _main(parsed)["resources"]
    assert resources["plan"]["config"]["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    site = resources["site"]["config"]
    assert site["kind"] == "functionapp,linux"
    app_config = site["properties"]["functionAppConfig"]
    assert app_config["runtime"] == {"name": "python", "version": "3.11"}
    assert app_config["deployment"]["storage"]["authentication"]["type"] == "UserAssignedIdentity"
    assert set(app_config["scaleAndConcurrency"]) == {"maximumInstanceCount", "instanceMemoryMB"}
    assert site["properties"]["virtualNetworkSubnetId"] is not None  # with enableVnet


def test_webhook_urls_are_the_apps_own() -> None:
    source = MAIN.read_text(encoding="utf-8")
    assert "var webhookBase = 'https://${site.properties.defaultHostName}/api/graph'" in source
    lines = _setting_lines()
    assert lines["GUESTSYNC_NOTIFICATION_URL"] == "'${webhookBase}/notifications'"
    assert lines["GUESTSYNC_LIFECYCLE_URL"] == "'${webhookBase}/lifecycle'"
    assert re.search(r"^output FUNCTION_APP_DEFAULT_HOSTNAME string = site\.properties\.defaultHostName$", source,
                     re.MULTILINE)


def test_identity_gets_the_built_in_roles() -> None:
    source = "\n".join(path.read_text(encoding="utf-8") for path in BICEP_FILES)
    missing = [role for role, guid in ROLES.items() if guid not in source]
    assert not missing, f"role assignments missing: {missing}"


def test_vnet_subnet_is_delegated_to_flex_consumption(parsed: dict[Path, dict[str, Any]]) -> None:
    network = parsed[INFRA / "modules" / "network.bicep"]["resources"]["vnet"]["config"]
    delegations = [d for s in network["properties"]["subnets"] for d in s["properties"]["delegations"]]
    assert [d["properties"]["serviceName"] for d in delegations] == ["Microsoft.App/environments"]


def test_azd_parameters_file_matches_main_bicep(parsed: dict[Path, dict[str, Any]]) -> None:
    document = json.loads((INFRA / "main.parameters.json").read_text(encoding="utf-8"))
    mapped = document["parameters"]
    declared = _main(parsed)["parameters"]
    assert set(mapped) <= set(declared), f"unknown parameters: {sorted(set(mapped) - set(declared))}"
    assert mapped["environmentName"] == {"value": "${AZURE_ENV_NAME}"}
    assert mapped["location"] == {"value": "${AZURE_LOCATION}"}
    for name, entry in mapped.items():
        assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*\}", entry["value"]), f"{name}: {entry}"
    # Every required parameter without a mapping would make azd prompt: all are mapped.
    assert set(declared) == set(mapped)


def test_azure_yaml_describes_the_function_app() -> None:
    text = (ROOT / "azure.yaml").read_text(encoding="utf-8")
    lines = [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert "name: guestsync" in lines
    assert lines[lines.index("services:") + 1] == "  api:"
    for expected in ("    project: .", "    language: python", "    host: function",
                     "  provider: bicep", "  path: infra"):
        assert expected in lines, expected
    assert "'azd-service-name': 'api'" in MAIN.read_text(encoding="utf-8")


def test_funcignore_keeps_the_app_and_drops_the_rest() -> None:
    patterns = {
        line.strip() for line in (ROOT / ".funcignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {"tests/", "graphsim/", "localenv/", ".venv/", ".tools/"} <= patterns
    for needed in ("shared/", "shared", "function_app.py", "host.json", "requirements.txt"):
        assert needed not in patterns
