"""infra/ (Bicep for azd and the Azure CLI) against the code: every Bicep file parses, the app settings are
exactly the settings the code reads (with a short, explained allow-list), docs/configuration.md documents
each of them, no
secret has a default, storage is keyless, and the infrastructure is locked down (private endpoints and public
network access off with a virtual network, audit logs, no basic publishing, least-privilege roles), with checkov
run over every file in infra/.

The Bicep files are parsed with pycep-parser (a Lark LALR grammar of Bicep, from PyPI), the version checkov pins,
so what parses here is what checkov scans: a syntax error fails the test, and a test below shows that the parser
does reject broken Bicep, so the check cannot pass vacuously. It checks syntax and structure only; type checking
and what-if need the Bicep compiler and an Azure subscription.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from lark.exceptions import LarkError
from pycep import BicepParser

from shared.settings import DEFAULT_CHANGE_QUEUE, DEFAULT_EXPORT_QUEUE, DEFAULT_STATE_TABLE

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
MAIN = INFRA / "main.bicep"
SETTINGS_PY = ROOT / "shared" / "settings.py"
FUNCTIONS_PY = ROOT / "shared" / "functions.py"
FUNCTION_APP_PY = ROOT / "function_app.py"
CONFIGURATION_DOC = ROOT / "docs" / "configuration.md"
CHECKOV_CONFIG = INFRA / ".checkov.yaml"
CHECKOV = Path(sys.executable).with_name("checkov")

BICEP_FILES = sorted(INFRA.rglob("*.bicep"))

#: Settings the code reads that infra/ deliberately does not set, each with the reason.
CODE_ONLY_SETTINGS = {
    # The connection-string form (Azurite, an agent with a key). In Azure the storage account has shared keys
    # off and the host and the code use the keyless AzureWebJobsStorage__accountName/__credential/__clientId.
    "AzureWebJobsStorage",
    # AzureWebJobsStorage__credential=clientsecret is for the on-premises agent's service principal; the app in
    # Azure uses its managed identity and has no storage secret.
    "AzureWebJobsStorage__tenantId",
    "AzureWebJobsStorage__clientSecret",
    # ... and =clientcertificate is the same principal with a certificate file on the agent's server.
    "AzureWebJobsStorage__clientCertificatePath",
    "AzureWebJobsStorage__clientCertificatePassword",
    # The Kerberos bind is the agent's (a keytab on its Linux server, or its Windows service identity); the
    # function app binds with the password from Key Vault and has no Kerberos library.
    "AD_BIND_METHOD",
    "AD_KEYTAB",
    # Overrides for the Graph simulator and tests: GRAPH_CLOUD (set from a parameter) selects a consistent
    # endpoint, authority and scope; setting them as well could only disagree with it.
    "GRAPH_ENDPOINT",
    "GRAPH_AUTHORITY_HOST",
    "GRAPH_SCOPE",
    # A CA bundle file for a TLS-inspecting proxy or the local simulator: the app reaches Graph directly.
    "GRAPH_CA_FILE",
    # The certificate as a file on the agent's server; in Azure it comes from Key Vault as GRAPH_CLIENT_CERTIFICATE.
    "GRAPH_CLIENT_CERTIFICATE_PATH",
    # The on-premises agent's own runtime (shared.agent): message and timer leases, heartbeats, its stop and
    # its log file. The function app never runs the agent loop; the agent reads them from its EnvironmentFile
    # (systemd) or its service environment (Windows).
    "GUESTSYNC_AGENT_VISIBILITY_SECONDS",
    "GUESTSYNC_AGENT_LEASE_SECONDS",
    "GUESTSYNC_AGENT_HEARTBEAT_SECONDS",
    "GUESTSYNC_AGENT_OUTAGE_BACKOFF_SECONDS",
    "GUESTSYNC_AGENT_STOP_SECONDS",
    "GUESTSYNC_AGENT_IDLE_POLL_MS",
    "GUESTSYNC_LOG_FILE",
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
    "GRAPH_CLIENT_SECRET",
    "GRAPH_CLIENT_CERTIFICATE",
    "GRAPH_CLIENT_CERTIFICATE_PASSWORD",
    "AD_BIND_PASSWORD",
    "SMTP_PASSWORD",
    "GUESTSYNC_WEBHOOK_KEY",
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
    binding expressions of shared/functions.py, and the environment lookups of function_app.py and
    shared/functions.py (the worker mode)."""
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
    for path in (FUNCTION_APP_PY, FUNCTIONS_PY):
        found |= set(re.findall(r"os\.(?:environ\.get|getenv)\(\s*\"([A-Za-z_][A-Za-z0-9_]*)\"",
                                path.read_text(encoding="utf-8")))
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
        "GUESTSYNC_WORKER_MODE",  # shared/functions.py, for function_app.py
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
        "@secure()\nparam secret string = ''\n"
        "var ok = !empty(secret) ? '@Microsoft.KeyVault(SecretUri=${uri})' : ''\n"
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n  name: 'st'\n}\n"
        "resource r 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for (q, i) in names: if (on) {\n"
        "  name: guid(queues[i].id)\n  scope: queues[i]\n}]\n"
    ))
    assert "secret" in tree["parameters"] and "st" in tree["resources"] and "r" in tree["resources"]


@pytest.mark.parametrize(
    "construct",
    [
        "param secret string?\n",  # a nullable type
        "var x = map(split(a, ','), s => trim(s))\n",  # a lambda
    ],
)
def test_parser_rejects_what_checkov_cannot_scan(parser: BicepParser, construct: str) -> None:
    # Newer Bicep that checkov's pinned parser does not know: infra/ must not use it, or checkov skips the file
    # (it did for main.bicep and keyvault.bicep: `string?`, then the lambda). test_bicep_file_parses keeps it out.
    with pytest.raises((LarkError, ValueError)):
        parser.parse(text=construct)


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
    infra_only = infra - code
    assert infra_only == INFRA_ONLY_SETTINGS, (
        f"set in infra/main.bicep but read by nothing: {sorted(infra_only - INFRA_ONLY_SETTINGS)}; "
        f"allow-listed but now read or no longer set: {sorted(INFRA_ONLY_SETTINGS - infra_only)}"
    )


def _configuration_rows() -> list[list[str]]:
    text = CONFIGURATION_DOC.read_text(encoding="utf-8")
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| `")]


def test_configuration_doc_lists_every_setting() -> None:
    documented = {name for row in _configuration_rows() for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row[0])}
    missing = sorted(settings_read_by_code() - documented)
    assert not missing, f"settings without a row in docs/configuration.md: {missing}"


def test_every_documented_setting_is_read_by_the_code() -> None:
    documented = {name for row in _configuration_rows() for name in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", row[0])}
    unknown = sorted(documented - settings_read_by_code())
    assert not unknown, f"docs/configuration.md documents settings the code does not read: {unknown}"


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
    # An optional secret's only default is the empty string, "not given" (the Bicep linter's and ARM TTK's
    # rule; nullable `string?` would say the same, but checkov's parser cannot read it).
    with_default = sorted(f"{file}: {name}" for (file, name), p in secure.items() if p["default"] not in (None, ""))
    assert not with_default, f"@secure() parameters with a default value: {with_default}"
    # GRAPH_CLIENT_STATE and the webhook's function key are required: no default at all.
    for required in ("graphClientState", "webhookFunctionKey"):
        assert secure[("main.bicep", required)]["default"] is None, required
        assert re.search(rf"^param {required} string$", MAIN.read_text(encoding="utf-8"), re.MULTILINE)


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
    scale = app_config["scaleAndConcurrency"]
    assert set(scale) == {"maximumInstanceCount", "instanceMemoryMB", "alwaysReady"}
    assert site["properties"]["virtualNetworkSubnetId"] is not None  # with enableVnet


def test_always_ready_keeps_the_change_queue_listener_warm(parsed: dict[Path, dict[str, Any]]) -> None:
    """alwaysReadyApply instances of apply_change (its per-function scale group 'function:<name>') and
    alwaysReadyHttp of the HTTP group; a group with 0 is left out, so it scales to zero."""
    main = _main(parsed)
    defaults = {"alwaysReadyApply": 1, "alwaysReadyHttp": 0}
    for name, default in defaults.items():
        parameter = main["parameters"][name]
        assert parameter["type"] == "int" and parameter["default"] == default, name
        assert {"type": "min_value", "argument": 0} in parameter["decorators"], name
    always_ready = main["resources"]["site"]["config"]["properties"]["functionAppConfig"]["scaleAndConcurrency"][
        "alwaysReady"]["function"]
    assert always_ready["type"] == "concat"
    groups = {"alwaysReadyApply": "function:apply_change", "alwaysReadyHttp": "http"}
    for arg, (parameter_name, group) in zip(always_ready["parameters"].values(), groups.items(), strict=True):
        operands = arg["operator"]["operands"]
        assert operands["condition"] == {"operator": {"type": "greater_than",
                                                      "operands": {"operand_1": parameter_name, "operand_2": 0}}}
        assert operands["true_value"] == [{"name": group, "instanceCount": parameter_name}]
        assert operands["false_value"] == []
    # The scale group names the function as the app registers it.
    assert '@bp.function_name("apply_change")' in FUNCTIONS_PY.read_text(encoding="utf-8")


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
    assert {"tests/", "devtools/", ".venv/", ".tools/"} <= patterns
    for needed in ("shared/", "shared", "function_app.py", "host.json", "requirements.txt"):
        assert needed not in patterns


# --- locked down: network, audit logs, publishing, least privilege ------------------------------------------


def _tree(parsed: dict[Path, dict[str, Any]], module: str) -> dict[str, Any]:
    return parsed[INFRA / "modules" / module]


class _Names(Mapping[str, Any]):
    """Parameter values given by a test, then the file's variables, evaluated on demand."""

    def __init__(self, tree: dict[str, Any], params: dict[str, Any]) -> None:
        self.tree, self.params = tree, params

    def __getitem__(self, name: str) -> Any:
        if name in self.params:
            return self.params[name]
        return _evaluate(self.variables[name]["value"], self)

    @property
    def variables(self) -> dict[str, Any]:
        return dict(self.tree.get("variables") or {})

    def __contains__(self, name: object) -> bool:
        return name in self.params or name in self.variables

    def __iter__(self) -> Any:
        return iter({*self.params, *self.variables})

    def __len__(self) -> int:
        return len({*self.params, *self.variables})


def _evaluate(node: Any, names: _Names) -> Any:
    """The value of one of pycep's expression trees for given parameters: the few operators the network
    settings use. pycep writes names and string literals alike, so a string is a name when one is bound."""
    if isinstance(node, str):
        return names.get(node, node)
    if node is None or isinstance(node, bool | int):
        return node
    if isinstance(node, list):
        return [_evaluate(item, names) for item in node]
    if "operator" in node:
        kind, operands = node["operator"]["type"], node["operator"]["operands"]
        if kind == "conditional":
            chosen = "true_value" if _evaluate(operands["condition"], names) else "false_value"
            return _evaluate(operands[chosen], names)
        if kind == "and":
            return _evaluate(operands["operand_1"], names) and _evaluate(operands["operand_2"], names)
        if kind == "or":
            return _evaluate(operands["operand_1"], names) or _evaluate(operands["operand_2"], names)
        if kind == "not":
            return not _evaluate(operands["bool_value"], names)
    if node.get("function", {}).get("type") == "empty":
        return not _evaluate(node["function"]["parameters"]["item_to_test"], names)
    if "loop_type" in node and node["loop_type"]["type"] == "array" and node["condition"] is None:
        items = _evaluate(node["loop_type"]["detail"]["array_name"], names)
        item = node["loop_type"]["detail"]["item_name"]
        return [_evaluate(node["config"], _Names(names.tree, {**names.params, item: value})) for value in items]
    if all(isinstance(key, str) for key in node):
        return {key: _evaluate(value, names) for key, value in node.items()}
    raise AssertionError(f"this test cannot evaluate {node}")


def _network(tree: dict[str, Any], resource: str, **params: Any) -> dict[str, Any]:
    properties = tree["resources"][resource]["config"]["properties"]
    names = _Names(tree, params)
    return {
        "publicNetworkAccess": _evaluate(properties["publicNetworkAccess"], names),
        **_evaluate(properties["networkAcls"], names),
    }


def test_storage_network_follows_enable_vnet(parsed: dict[Path, dict[str, Any]]) -> None:
    storage = _tree(parsed, "storage.bicep")
    assert storage["resources"]["account"]["config"]["properties"]["allowBlobPublicAccess"] is False
    # With a virtual network: private endpoints only, the public endpoint off.
    assert _network(storage, "account", enableVnet=True, agentEgressIpRanges=[]) == {
        "publicNetworkAccess": "Disabled", "defaultAction": "Deny", "bypass": "AzureServices", "ipRules": []}
    # An agent without a private route: public endpoint on for exactly its egress ranges.
    assert _network(storage, "account", enableVnet=True, agentEgressIpRanges=["203.0.113.0/28"]) == {
        "publicNetworkAccess": "Enabled", "defaultAction": "Deny", "bypass": "AzureServices",
        "ipRules": [{"value": "203.0.113.0/28", "action": "Allow"}]}
    # Without one: the documented weaker option (the app has no fixed outbound addresses).
    assert _network(storage, "account", enableVnet=False, agentEgressIpRanges=["203.0.113.0/28"]) == {
        "publicNetworkAccess": "Enabled", "defaultAction": "Allow", "bypass": "AzureServices", "ipRules": []}


def test_key_vault_network_follows_enable_vnet(parsed: dict[Path, dict[str, Any]]) -> None:
    vault = _tree(parsed, "keyvault.bicep")
    assert _network(vault, "vault", enableVnet=True) == {
        "publicNetworkAccess": "Disabled", "defaultAction": "Deny", "bypass": "AzureServices"}
    assert _network(vault, "vault", enableVnet=False) == {
        "publicNetworkAccess": "Enabled", "defaultAction": "Allow", "bypass": "AzureServices"}


def test_private_endpoints_with_enable_vnet(parsed: dict[Path, dict[str, Any]]) -> None:
    main = _main(parsed)
    private_link = main["modules"]["privateLink"]
    assert private_link["detail"]["path"] == "modules/privatelink.bicep"
    assert private_link["config"]["condition"] == "enableVnet"
    for passed in ("enableVnet", "logAnalyticsWorkspaceId"):
        assert passed in main["modules"]["storage"]["config"]["params"]
        assert passed in main["modules"]["keyVault"]["config"]["params"]
    tree = _tree(parsed, "privatelink.bicep")
    endpoints = tree["variables"]["endpoints"]["value"]
    assert {e["groupId"]: e["resourceId"] for e in endpoints} == {
        "blob": "storageAccountId", "queue": "storageAccountId", "table": "storageAccountId", "vault": "keyVaultId"}
    resources = {r["type"]: r for r in tree["resources"].values()}
    for kind in ("Microsoft.Network/privateEndpoints", "Microsoft.Network/privateDnsZones",
                 "Microsoft.Network/privateDnsZones/virtualNetworkLinks",
                 "Microsoft.Network/privateEndpoints/privateDnsZoneGroups"):
        assert resources[kind]["config"]["loop_type"]["detail"]["array_name"] == "endpoints", kind
    network = parsed[INFRA / "modules" / "network.bicep"]
    assert "privateEndpointSubnetId" in network["outputs"]


def _diagnostics(parsed: dict[Path, dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(file, scope) -> the log categories sent to the workspace."""
    found: dict[tuple[str, str], set[str]] = {}
    for path, tree in parsed.items():
        for resource in tree["resources"].values():
            if resource["type"] == "Microsoft.Insights/diagnosticSettings":
                config = resource["config"]
                assert config["properties"]["workspaceId"] in ("logAnalyticsWorkspaceId", {
                    "operator": {"type": "property_accessor", "operands": {
                        "operand_1": "monitoring", "operand_2": {"operator": {"type": "property_accessor", "operands": {
                            "operand_1": "outputs", "operand_2": "workspaceId"}}}}}})
                found[(path.name, config["scope"])] = {
                    log["category"] for log in config["properties"]["logs"] if log["enabled"] is True}
    return found


def test_audit_logs_go_to_the_workspace(parsed: dict[Path, dict[str, Any]]) -> None:
    assert _diagnostics(parsed) == {
        ("keyvault.bicep", "vault"): {"AuditEvent"},
        ("storage.bicep", "queueService"): {"StorageWrite", "StorageDelete"},
        ("storage.bicep", "tableService"): {"StorageWrite", "StorageDelete"},
        ("main.bicep", "site"): {"FunctionAppLogs"},
    }
    assert "workspaceId" in _tree(parsed, "monitoring.bicep")["outputs"]


def test_no_ftp_and_no_basic_publishing_credentials(parsed: dict[Path, dict[str, Any]]) -> None:
    resources = _main(parsed)["resources"]
    policies = {
        r["config"]["name"]: r["config"] for r in resources.values()
        if r["type"] == "Microsoft.Web/sites/basicPublishingCredentialsPolicies"
    }
    assert set(policies) == {"ftp", "scm"}
    for policy in policies.values():
        assert policy["parent"] == "site" and policy["properties"] == {"allow": False}
    assert resources["site"]["config"]["properties"]["siteConfig"]["ftpsState"] == "Disabled"


def _role_assignments(tree: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Role assignments by symbolic name, with their config (inside a loop or condition if any)."""
    found = {}
    for name, resource in tree["resources"].items():
        if resource["type"] == "Microsoft.Authorization/roleAssignments":
            config = resource["config"]
            if "loop_type" in config or "condition" in config:  # [for ...: if (...) {...}] wraps the body
                config = config["config"]
            found[name] = config
    return found


def test_agent_roles_are_scoped_to_its_queues_and_table(parsed: dict[Path, dict[str, Any]]) -> None:
    storage = _tree(parsed, "storage.bicep")
    agent = {name: config for name, config in _role_assignments(storage).items()
             if config["properties"]["principalId"] == "agentPrincipalId"}
    assert set(agent) == {"agentQueueRoles", "agentTableRole"}
    for name, config in agent.items():
        assert config["scope"] != "account", f"{name}: the agent's role is scoped to the whole storage account"
    # Each queue role is scoped to one queue of the loop over queueNames, the table role to the state table.
    queue_loop = storage["resources"]["agentQueueRoles"]["config"]["loop_type"]["detail"]
    assert queue_loop["array_name"] == "queueNames"
    assert agent["agentQueueRoles"]["scope"] == {"operator": {"type": "index_accessor", "operands": {
        "operand_1": "queues", "operand_2": queue_loop["index_name"]}}}
    assert storage["resources"]["queues"]["type"] == "Microsoft.Storage/storageAccounts/queueServices/queues"
    assert storage["resources"]["queues"]["config"]["loop_type"]["detail"]["array_name"] == "queueNames"
    assert agent["agentTableRole"]["scope"] == "stateTable"
    assert storage["resources"]["stateTable"]["type"] == "Microsoft.Storage/storageAccounts/tableServices/tables"
    # Exactly the names the code uses: <queue> and <queue>-poison, and the state table.
    assert storage["variables"]["queueNames"]["value"] == [
        "changeQueueName", "${changeQueueName}-poison", "exportQueueName", "${exportQueueName}-poison"]
    declared = _main(parsed)["parameters"]
    assert declared["changeQueueName"]["default"] == DEFAULT_CHANGE_QUEUE
    assert declared["exportQueueName"]["default"] == DEFAULT_EXPORT_QUEUE
    assert declared["stateTableName"]["default"] == DEFAULT_STATE_TABLE
    assert 'f"{self.export_queue}-poison"' in SETTINGS_PY.read_text(encoding="utf-8")
    assert 'f"{self.change_queue}-poison"' in SETTINGS_PY.read_text(encoding="utf-8")


def test_agent_publishes_telemetry_with_its_own_identity(parsed: dict[Path, dict[str, Any]]) -> None:
    """Application Insights has local authentication off: the agent's service principal gets Monitoring Metrics
    Publisher on it (and nothing wider), as the agent sends its telemetry with that identity."""
    monitoring = _tree(parsed, "monitoring.bicep")
    agent = {name: config for name, config in _role_assignments(monitoring).items()
             if config["properties"]["principalId"] == "agentPrincipalId"}
    assert set(agent) == {"agentPublisher"}
    assert agent["agentPublisher"]["scope"] == "appInsights"
    assert "monitoringMetricsPublisher" in json.dumps(agent["agentPublisher"]["properties"]["roleDefinitionId"])
    assert "agentPrincipalId" in json.dumps(_main(parsed)["modules"]["monitoring"])


def test_app_reads_each_secret_through_its_own_role_assignment(parsed: dict[Path, dict[str, Any]]) -> None:
    vault = _tree(parsed, "keyvault.bicep")
    assert not _role_assignments(vault), "a role assignment on the whole vault"
    secrets = {name: module for name, module in vault["modules"].items()
               if module["detail"]["path"] == "secret.bicep"}
    assert {module["config"]["config"]["params"]["secretName"] if "condition" in module["config"]
            else module["config"]["params"]["secretName"] for module in secrets.values()} == {
        "graph-client-state", "webhook-function-key", "graph-client-state-previous", "graph-client-secret",
        "graph-client-certificate", "graph-client-certificate-password", "ad-bind-password", "smtp-password",
        "ownership-key", "ownership-key-previous"}
    assert not [r for r in vault["resources"].values() if r["type"] == "Microsoft.KeyVault/vaults/secrets"]
    secret = _tree(parsed, "secret.bicep")
    (reader,) = _role_assignments(secret).values()
    assert reader["scope"] == "secret"
    assert secret["resources"]["secret"]["type"] == "Microsoft.KeyVault/vaults/secrets"
    assert reader["properties"]["principalId"] == "readerPrincipalId"
    assert ROLES["Key Vault Secrets User"] in (INFRA / "modules" / "secret.bicep").read_text(encoding="utf-8")


def test_webhook_function_key_comes_from_key_vault(parsed: dict[Path, dict[str, Any]]) -> None:
    resources = _main(parsed)["resources"]
    (key,) = [r["config"] for r in resources.values() if r["type"] == "Microsoft.Web/sites/host/functionKeys"]
    assert key["name"] == "${site.name}/default/graph"
    assert key["properties"] == {"name": "graph", "value": "webhookFunctionKey"}
    reference = "'@Microsoft.KeyVault(SecretUri=${secretUris.webhookFunctionKey})'"
    assert _setting_lines()["GUESTSYNC_WEBHOOK_KEY"] == reference
    assert _main(parsed)["modules"]["keyVault"]["config"]["params"]["webhookFunctionKey"] == "webhookFunctionKey"
    assert "webhookFunctionKey" in _tree(parsed, "keyvault.bicep")["outputs"]["secretUris"]["value"]


# --- checkov over infra/ -------------------------------------------------------------------------------------


def checkov_problems(directory: Path) -> list[str]:
    """What checkov finds in ``directory`` with the repository's exceptions (infra/.checkov.yaml): each failed
    check, each file it could not parse (checkov exits 0 and skips such a file unless one looks), and a run
    that scanned no Bicep at all."""
    run = subprocess.run(
        [str(CHECKOV), "--config-file", str(CHECKOV_CONFIG), "--directory", str(directory), "--output", "json",
         "--quiet"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    if run.returncode not in (0, 1):
        return [f"checkov exited {run.returncode}: {run.stderr[-2000:]}"]
    document = json.loads(run.stdout)
    reports = document if isinstance(document, list) else [document]
    problems: list[str] = []
    bicep = [r for r in reports if r.get("check_type") == "bicep"]
    if not bicep:
        problems.append(f"checkov scanned no Bicep in {directory}")
    for report in reports:
        results = report.get("results", {})
        problems += [f"{report['check_type']}: cannot parse {path}" for path in results.get("parsing_errors", [])]
        if report.get("summary", {}).get("parsing_errors") and not results.get("parsing_errors"):
            problems.append(f"{report['check_type']}: cannot parse {report['summary']['parsing_errors']} file(s)")
        problems += [
            f"{c['check_id']} {c['check_name']}: {c['resource']} in {c['file_path']}"
            for c in results.get("failed_checks", [])
        ]
    return problems


@pytest.fixture(scope="module")
def infra_checkov_problems() -> list[str]:
    return checkov_problems(INFRA)


def test_checkov_finds_nothing_in_infra(infra_checkov_problems: list[str]) -> None:
    assert infra_checkov_problems == []


def test_checkov_flags_a_public_storage_account(tmp_path: Path) -> None:
    (tmp_path / "public.bicep").write_text(
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' = {\n"
        "  name: 'stpublic'\n  location: 'westeurope'\n  kind: 'StorageV2'\n  sku: {\n    name: 'Standard_GRS'\n  }\n"
        "  properties: {\n    allowBlobPublicAccess: true\n    publicNetworkAccess: 'Enabled'\n"
        "    minimumTlsVersion: 'TLS1_2'\n    supportsHttpsTrafficOnly: true\n    networkAcls: {\n"
        "      defaultAction: 'Allow'\n      bypass: 'AzureServices'\n    }\n  }\n}\n",
        encoding="utf-8",
    )
    problems = checkov_problems(tmp_path)
    assert any(p.startswith("CKV_AZURE_59 ") and "public.bicep" in p for p in problems), problems


def test_checkov_run_fails_on_a_file_it_cannot_parse(tmp_path: Path) -> None:
    (tmp_path / "fine.bicep").write_text(
        "resource kv 'Microsoft.KeyVault/vaults@2023-07-01' = {\n  name: 'kv'\n  location: 'westeurope'\n"
        "  properties: {\n    tenantId: tenant().tenantId\n    sku: {\n      family: 'A'\n      name: 'standard'\n"
        "    }\n    enablePurgeProtection: true\n    enableSoftDelete: true\n    enableRbacAuthorization: true\n"
        "    publicNetworkAccess: 'Disabled'\n    networkAcls: {\n      defaultAction: 'Deny'\n"
        "      bypass: 'AzureServices'\n    }\n  }\n}\n",
        encoding="utf-8",
    )
    assert checkov_problems(tmp_path) == []  # the same run without the unparseable file is clean
    (tmp_path / "nullable.bicep").write_text("@secure()\nparam secret string?\n", encoding="utf-8")
    problems = checkov_problems(tmp_path)
    assert problems and all("cannot parse" in p for p in problems), problems


def test_every_checkov_exception_has_a_reason() -> None:
    lines = CHECKOV_CONFIG.read_text(encoding="utf-8").splitlines()
    start = lines.index("skip-check:")
    entries = lines[start + 1:]
    ids = [line.split("- ", 1)[1].strip() for line in entries if line.strip().startswith("- ")]
    assert ids and all(re.fullmatch(r"CKV2?_[A-Z]+_\d+", i) for i in ids), ids
    for index, line in enumerate(entries):
        if line.strip().startswith("- "):
            before = [e for e in entries[:index] if e.strip()]
            assert before and (before[-1].strip().startswith("#") or before[-1].strip().startswith("- ")), line
    assert entries[0].strip().startswith("#"), "the first exception has no reason above it"
