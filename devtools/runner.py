"""Local Functions host: runs a v2-model ``FunctionApp`` with the Azure Functions host's trigger semantics.

The real host (Core Tools) is a binary download this project cannot depend on, so ``guestsync serve``, the
AD worker agent, the demo and the tests dispatch triggers through the app's own registrations here and run
the real function code:

* HTTP: ``/<routePrefix>/<route>`` on a ``ThreadingHTTPServer`` -> ``azure.functions.HttpRequest``.
* Queue: Azure Storage queues polled like the host's queue listener (batches, ``newBatchThreshold``,
  randomized exponential back-off, visibility timeout on failure, ``<queue>-poison`` after
  ``maxDequeueCount``, base64 message encoding).
* Timer: NCRONTAB schedules (:mod:`shared.ncrontab`), ``run_on_startup``, firing on demand.

``def`` functions run on a thread pool and ``async def`` functions on one long-lived event loop thread, as
in the Python worker, so async clients created in one invocation can be reused by the next.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import hmac
import inspect
import io
import json
import logging
import math
import os
import random
import re
import signal
import socket
import threading
import time
import typing
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import azure.functions as func
from azure.core.exceptions import ResourceExistsError
from azure.functions import _abc as func_abc
from azure.functions import queue as func_queue
from azure.functions import timer as func_timer
from azure.functions.decorators.function_app import Function
from azure.storage.queue import ExponentialRetry, QueueClient
from azure.storage.queue import QueueMessage as StorageMessage

from shared import ncrontab
from shared.adapters.storage import QUEUE_TIMEOUTS, client_options

__all__ = [
    "FunctionIndexError",
    "FunctionInfo",
    "HostOptions",
    "InvocationResult",
    "LocalFunctionsHost",
    "QueueInvocation",
    "QueuesOptions",
    "parse_timespan",
]

log = logging.getLogger("guestsync.runner")

#: The host leases a dequeued message for 10 minutes and renews the lease halfway through.
RECEIVE_VISIBILITY_SECONDS = 600
RENEW_AFTER_SECONDS = 300.0
#: The host never polls an empty queue more often than this (QueuePollingIntervals.Minimum).
MIN_POLLING_INTERVAL = 0.1
#: The host refuses request bodies larger than 100 MB.
MAX_REQUEST_BODY = 100 * 1024 * 1024
#: After answering a request whose body it left unread, the server reads and drops what the client still sends,
#: up to this much and this long, before it closes (a web server's "lingering close").
LINGER_BYTES = 8 * 1024 * 1024
LINGER_SECONDS = 2.0
PROGRAMMATIC_REASON = "This function was programmatically called via the host APIs."
#: The setting whose value the runner accepts as the function key (the host's keys live in the host's store).
FUNCTION_KEY_SETTING = "GUESTSYNC_WEBHOOK_KEY"
DEFAULT_CONNECTION = "AzureWebJobsStorage"

InvocationStatus = Literal["succeeded", "failed", "skipped"]
QueueOutcome = Literal["succeeded", "retried", "poisoned", "released", "abandoned"]
TriggerKind = Literal["http", "queue", "timer"]


class FunctionIndexError(ValueError):
    """The app cannot be hosted as registered: missing settings, bad schedules, unsupported bindings.

    The real host would put the affected functions "in error" and run the rest; a local tool is more useful
    failing at once with every problem listed.
    """


# --------------------------------------------------------------------------------------------------- host.json


def parse_timespan(value: object, what: str = "value") -> float:
    """A .NET TimeSpan from host.json (``[d.]hh:mm[:ss[.fffffff]]`` or whole days) in seconds."""
    if not isinstance(value, str):
        raise FunctionIndexError(f"host.json {what} must be a TimeSpan string such as \"00:00:02\", not {value!r}")
    text = value.strip()
    match = re.fullmatch(r"(?:(\d+)\.)?(\d{1,2}):(\d{1,2})(?::(\d{1,2})(?:\.(\d{1,7}))?)?", text)
    if match:
        days, hours, minutes, seconds, fraction = match.groups()
        if int(hours) > 23 or int(minutes) > 59 or int(seconds or 0) > 59:
            raise FunctionIndexError(f"host.json {what} {value!r} is not a valid TimeSpan")
        return (int(days or 0) * 86400 + int(hours) * 3600 + int(minutes) * 60 + int(seconds or 0)
                + (int(fraction) / 10 ** len(fraction) if fraction else 0.0))
    if re.fullmatch(r"\d+", text):
        return int(text) * 86400.0  # TimeSpan.Parse("2") is two days
    raise FunctionIndexError(f"host.json {what} {value!r} is not a valid TimeSpan")


def _get(section: Mapping[str, Any], key: str) -> Any:
    """host.json keys are case-insensitive (the host reads it through .NET configuration)."""
    for name, value in section.items():
        if name.lower() == key.lower():
            return value
    return None


def _section(section: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = _get(section, key)
    return value if isinstance(value, Mapping) else {}


def _int_option(section: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = _get(section, key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise FunctionIndexError(f"host.json extensions.queues.{key} must be an integer from {low} to {high}")
    return value


@dataclass(frozen=True)
class QueuesOptions:
    """``extensions.queues`` in host.json, with the host's documented defaults."""

    batch_size: int = 16
    new_batch_threshold: int = 8
    max_polling_interval: float = 60.0
    visibility_timeout: float = 0.0
    max_dequeue_count: int = 5
    message_encoding: Literal["base64", "none"] = "base64"

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> QueuesOptions:
        batch_size = _int_option(section, "batchSize", 16, 1, 32)
        threshold = _int_option(section, "newBatchThreshold", batch_size // 2, 0, 10_000)
        polling = _get(section, "maxPollingInterval")
        max_polling = 60.0 if polling is None else parse_timespan(polling, "extensions.queues.maxPollingInterval")
        if max_polling < MIN_POLLING_INTERVAL:
            raise FunctionIndexError("host.json extensions.queues.maxPollingInterval must be at least 00:00:00.100")
        visibility = _get(section, "visibilityTimeout")
        visibility_timeout = 0.0 if visibility is None else parse_timespan(
            visibility, "extensions.queues.visibilityTimeout")
        if visibility_timeout > 7 * 86400:
            raise FunctionIndexError("host.json extensions.queues.visibilityTimeout must be at most 7 days")
        encoding = str(_get(section, "messageEncoding") or "base64").lower()
        if encoding not in ("base64", "none"):
            raise FunctionIndexError("host.json extensions.queues.messageEncoding must be \"base64\" or \"none\"")
        return cls(
            batch_size=batch_size,
            new_batch_threshold=threshold,
            max_polling_interval=max_polling,
            visibility_timeout=visibility_timeout,
            max_dequeue_count=_int_option(section, "maxDequeueCount", 5, 1, 10_000),
            message_encoding="base64" if encoding == "base64" else "none",
        )


@dataclass(frozen=True)
class HostOptions:
    """What the runner reads from host.json: route prefix, queue settings and the ``functions`` allow-list."""

    route_prefix: str = "api"
    queues: QueuesOptions = field(default_factory=QueuesOptions)
    functions: tuple[str, ...] | None = None

    @classmethod
    def load(cls, path: Path | None) -> HostOptions:
        if path is None:
            return cls()
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
        except (OSError, ValueError) as exc:
            raise FunctionIndexError(f"cannot read {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise FunctionIndexError(f"{path} is not a JSON object")
        extensions = _section(data, "extensions")
        prefix = _get(_section(extensions, "http"), "routePrefix")
        functions = _get(data, "functions")
        if functions is not None and not (isinstance(functions, list) and all(isinstance(f, str) for f in functions)):
            raise FunctionIndexError(f"{path}: \"functions\" must be a list of function names")
        return cls(
            route_prefix="api" if prefix is None else str(prefix).strip("/"),
            queues=QueuesOptions.from_section(_section(extensions, "queues")),
            functions=tuple(functions) if functions is not None else None,
        )


# ------------------------------------------------------------------------------------------------ app settings


def _resolve_placeholders(text: str, env: Mapping[str, str], what: str) -> str:
    """``%NAME%`` -> app setting NAME, as the host's name resolver does for binding properties."""

    def lookup(match: re.Match[str]) -> str:
        value = env.get(match.group(1))
        if not value:
            raise FunctionIndexError(f"{what} refers to app setting '{match.group(1)}', which is not set")
        return value

    return re.sub(r"%([^%\s]+)%", lookup, text)


def _setting(env: Mapping[str, str], name: str) -> str | None:
    """Settings named with ``:`` are spelled ``__`` in environment variables."""
    for key in (name, name.replace(":", "__")):
        value = env.get(key)
        if value:
            return value
    return None


@dataclass(frozen=True)
class _StorageEndpoint:
    """Where a queue trigger's ``connection`` points: a connection string or an identity-based account."""

    setting: str
    connection_string: str | None = None
    account_url: str | None = None
    client_id: str | None = None

    def queue_client(self, queue_name: str) -> QueueClient:
        # Short storage retries so stop() is not held up for a minute by an unreachable account.
        retry = ExponentialRetry(initial_backoff=2, increment_base=2, retry_total=2, random_jitter_range=1)
        options = client_options({"retry_policy": retry}, timeouts=QUEUE_TIMEOUTS)  # as the app's own clients
        if self.connection_string is not None:
            return QueueClient.from_connection_string(self.connection_string, queue_name, **options)
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=self.client_id)
        return QueueClient(str(self.account_url), queue_name, credential=credential, **options)


def _storage_endpoint(connection: str, env: Mapping[str, str]) -> _StorageEndpoint:
    """Resolve a binding's ``connection`` like the host: NAME, then AzureWebJobsNAME, then NAME__queueServiceUri."""
    for name in (connection, f"AzureWebJobs{connection}"):
        value = _setting(env, name)
        if value:
            return _StorageEndpoint(setting=name, connection_string=value)
        uri = _setting(env, f"{name}__queueServiceUri") or _setting(env, f"{name}__serviceUri")
        account = _setting(env, f"{name}__accountName")
        if uri or account:
            url = uri or f"https://{account}.queue.core.windows.net"
            return _StorageEndpoint(setting=name, account_url=url, client_id=_setting(env, f"{name}__clientId"))
    raise FunctionIndexError(
        f"storage connection '{connection}' is not configured: set the app setting {connection} "
        f"(a connection string) or {connection}__queueServiceUri"
    )


_QUEUE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")


def _queue_name(raw: str, env: Mapping[str, str], function_name: str) -> str:
    name = _resolve_placeholders(raw, env, f"function '{function_name}' queue name '{raw}'").lower()
    if not _QUEUE_NAME.fullmatch(name):
        raise FunctionIndexError(
            f"function '{function_name}': '{name}' is not a valid queue name (3-63 lowercase letters, digits and "
            "single hyphens, starting and ending with a letter or digit)"
        )
    return name


def _is_disabled(name: str, env: Mapping[str, str]) -> bool:
    value = _setting(env, f"AzureWebJobs.{name}.Disabled") or _setting(env, f"AzureWebJobs__{name}__Disabled")
    return (value or "").strip().lower() in ("1", "true")


# ------------------------------------------------------------------------------------------------------ routes


def _is_int(bits: int) -> Callable[[str], bool]:
    def check(value: str) -> bool:
        return bool(re.fullmatch(r"[+-]?\d+", value)) and -(2 ** (bits - 1)) <= int(value) < 2 ** (bits - 1)

    return check


def _is_number(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _is_datetime(value: str) -> bool:
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


_SIMPLE_CONSTRAINTS: dict[str, Callable[[str], bool]] = {
    "int": _is_int(32),
    "long": _is_int(64),
    "bool": lambda v: v.lower() in ("true", "false"),
    "alpha": lambda v: bool(re.fullmatch(r"[A-Za-z]+", v)),
    "guid": _is_guid,
    "float": _is_number,
    "double": _is_number,
    "decimal": _is_number,
    "datetime": _is_datetime,
}


def _constraint(text: str, route: str) -> Callable[[str], bool]:
    """An ASP.NET Core route constraint (``int``, ``min(1)``, ``regex(...)``...) as a predicate."""
    simple = _SIMPLE_CONSTRAINTS.get(text.lower())
    if simple is not None:
        return simple
    match = re.fullmatch(r"(\w+)\((.*)\)", text)
    if match:
        kind, args = match.group(1).lower(), match.group(2)
        if kind == "regex":
            pattern = re.compile(args, re.IGNORECASE)
            return lambda v: pattern.search(v) is not None
        try:
            numbers = [int(a) for a in args.split(",")]
        except ValueError:
            numbers = []
        number = _is_int(64)
        if kind == "min" and len(numbers) == 1:
            return lambda v: number(v) and int(v) >= numbers[0]
        if kind == "max" and len(numbers) == 1:
            return lambda v: number(v) and int(v) <= numbers[0]
        if kind == "range" and len(numbers) == 2:
            return lambda v: number(v) and numbers[0] <= int(v) <= numbers[1]
        if kind == "minlength" and len(numbers) == 1:
            return lambda v: len(v) >= numbers[0]
        if kind == "maxlength" and len(numbers) == 1:
            return lambda v: len(v) <= numbers[0]
        if kind == "length" and len(numbers) in (1, 2):
            return lambda v: numbers[0] <= len(v) <= numbers[-1]
    raise FunctionIndexError(f"route '{route}': constraint '{text}' is not supported by the local runner")


@dataclass(frozen=True)
class _Segment:
    literal: str | None = None
    name: str = ""
    checks: tuple[Callable[[str], bool], ...] = ()
    optional: bool = False
    default: str | None = None
    catch_all: bool = False

    @property
    def rank(self) -> int:
        """ASP.NET route precedence: literals, then constrained, plain, optional and catch-all parameters."""
        if self.literal is not None:
            return 0
        if self.catch_all:
            return 4
        if self.optional or self.default is not None:
            return 3
        return 1 if self.checks else 2


@dataclass(frozen=True)
class _Route:
    """An HTTP trigger route template such as ``items/{id:int}`` or ``files/{*path}``."""

    template: str
    segments: tuple[_Segment, ...]

    @classmethod
    def parse(cls, template: str) -> _Route:
        segments: list[_Segment] = []
        parts = [p for p in template.strip("/").split("/")] if template.strip("/") else []
        for index, part in enumerate(parts):
            if not (part.startswith("{") and part.endswith("}")):
                if "{" in part or "}" in part:
                    raise FunctionIndexError(f"route '{template}': complex segment '{part}' is not supported")
                segments.append(_Segment(literal=part))
                continue
            match = re.fullmatch(r"\{(\*{1,2})?([A-Za-z_][\w.-]*)(.*)\}", part)
            if not match:
                raise FunctionIndexError(f"route '{template}': '{part}' is not a valid route parameter")
            star, name, rest = match.groups()
            optional = rest.endswith("?")
            rest = rest.removesuffix("?")
            default: str | None = None
            if "=" in rest:
                rest, _, default = rest.partition("=")
            constraints = [c for c in rest.split(":")[1:] if c] if rest.startswith(":") else []
            if rest and not rest.startswith(":"):
                raise FunctionIndexError(f"route '{template}': '{part}' is not a valid route parameter")
            if star and index != len(parts) - 1:
                raise FunctionIndexError(f"route '{template}': a catch-all parameter must be the last segment")
            segments.append(_Segment(
                name=name,
                checks=tuple(_constraint(c, template) for c in constraints),
                optional=optional,
                default=default,
                catch_all=bool(star),
            ))
        return cls(template=template, segments=tuple(segments))

    @property
    def precedence(self) -> tuple[int, ...]:
        return tuple(s.rank for s in self.segments)

    def match(self, parts: list[str]) -> dict[str, str] | None:
        """Route parameters (URL-decoded) if ``parts`` (raw path segments) fit the template, else None."""
        params: dict[str, str] = {}
        for index, segment in enumerate(self.segments):
            if segment.catch_all:
                value = unquote("/".join(parts[index:]))
                if value or segment.default is not None:
                    params[segment.name] = value or str(segment.default)
                return params
            if index >= len(parts):
                if segment.literal is None and (segment.optional or segment.default is not None):
                    if segment.default is not None:
                        params[segment.name] = segment.default
                    continue
                return None
            raw = parts[index]
            if segment.literal is not None:
                if raw.lower() != segment.literal.lower():
                    return None
                continue
            value = unquote(raw)
            if not value or not all(check(value) for check in segment.checks):
                return None
            params[segment.name] = value
        return params if len(parts) <= len(self.segments) else None


# ------------------------------------------------------------------------------------------- indexed functions


@dataclass(frozen=True)
class _Entry:
    """The user function and how to call it."""

    name: str
    func: Callable[..., Any]
    trigger_arg: str
    is_async: bool
    context_arg: bool
    disabled: bool


@dataclass(frozen=True)
class _HttpFunction:
    entry: _Entry
    route: _Route
    methods: frozenset[str] | None  # None: every method
    auth_level: str
    output_arg: str | None  # None: the return value is the response


@dataclass(frozen=True)
class _QueueFunction:
    entry: _Entry
    queue_name: str
    endpoint: _StorageEndpoint


@dataclass(frozen=True)
class _TimerFunction:
    entry: _Entry
    schedule: ncrontab.CronSchedule
    run_on_startup: bool


@dataclass(frozen=True)
class FunctionInfo:
    """One indexed function, for listings such as ``guestsync serve``'s banner."""

    name: str
    trigger: TriggerKind
    detail: str
    disabled: bool


def _enum_value(value: object) -> str:
    return str(value.value) if isinstance(value, Enum) else str(value)


def _entry(function: Function, name: str, trigger_arg: str, extra_args: Iterable[str],
           env: Mapping[str, str]) -> _Entry:
    user_function: Callable[..., Any] = function.get_user_function()
    try:
        parameters = inspect.signature(user_function).parameters
    except (TypeError, ValueError) as exc:
        raise FunctionIndexError(f"function '{name}': cannot inspect its signature: {exc}") from exc
    known = {trigger_arg, "context", *extra_args}
    if trigger_arg not in parameters:
        raise FunctionIndexError(f"function '{name}' has no parameter '{trigger_arg}' for its trigger")
    unbound = [p.name for p in parameters.values()
               if p.name not in known and p.default is inspect.Parameter.empty
               and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if unbound:
        raise FunctionIndexError(f"function '{name}': parameters {unbound} are not bound to anything")
    return _Entry(
        name=name,
        func=user_function,
        trigger_arg=trigger_arg,
        is_async=inspect.iscoroutinefunction(user_function),
        context_arg="context" in parameters and trigger_arg != "context",
        disabled=_is_disabled(name, env),
    )


def _index(functions: list[Function], env: Mapping[str, str], options: HostOptions) -> tuple[
        list[_HttpFunction], dict[str, _QueueFunction], dict[str, _TimerFunction]]:
    """Read triggers and bindings from the ``Function`` objects of ``FunctionApp.get_functions()``."""
    http: list[_HttpFunction] = []
    queues: dict[str, _QueueFunction] = {}
    timers: dict[str, _TimerFunction] = {}
    errors: list[str] = []
    for function in functions:
        name = str(function.get_function_name())
        if options.functions is not None and name not in options.functions:
            log.info("Function '%s' is not in host.json's \"functions\" list; not loaded", name)
            continue
        try:
            trigger = function.get_trigger()
            if trigger is None:
                raise FunctionIndexError(f"function '{name}' has no trigger")
            info: dict[str, Any] = dict(trigger.get_dict_repr())
            kind = str(info.get("type"))
            others = [b for b in function.get_bindings() if b is not trigger]
            output: str | None = None
            if kind == "httpTrigger":
                outputs = [b for b in others if getattr(b, "type", None) == "http"]
                others = [b for b in others if b not in outputs]
                if outputs and outputs[0].name != "$return":
                    output = str(outputs[0].name)
            if others:
                types = ", ".join(sorted({str(getattr(b, "type", b)) for b in others}))
                raise FunctionIndexError(f"function '{name}': bindings other than its trigger ({types}) are not "
                                         "supported by the local runner")
            if function.get_setting("retry_policy") is not None:
                log.warning("Function '%s' has a retry policy; the local runner ignores it", name)
            entry = _entry(function, name, str(trigger.name), [output] if output else [], env)
            if kind == "httpTrigger":
                route = str(info.get("route") or name)
                methods = info.get("methods")
                http.append(_HttpFunction(
                    entry=entry,
                    route=_Route.parse(route),
                    methods=frozenset(_enum_value(m).upper() for m in methods) if methods else None,
                    auth_level=_enum_value(info.get("authLevel", "function")).lower(),
                    output_arg=output,
                ))
            elif kind == "queueTrigger":
                queues[name] = _QueueFunction(
                    entry=entry,
                    queue_name=_queue_name(str(info.get("queueName", "")), env, name),
                    endpoint=_storage_endpoint(str(info.get("connection") or DEFAULT_CONNECTION), env),
                )
            elif kind == "timerTrigger":
                try:
                    schedule = ncrontab.parse(str(info.get("schedule", "")), env)
                except ncrontab.CrontabError as exc:
                    raise FunctionIndexError(f"function '{name}': {exc}") from exc
                timers[name] = _TimerFunction(entry, schedule, bool(info.get("runOnStartup", False)))
            else:
                raise FunctionIndexError(f"function '{name}': trigger type '{kind}' is not supported by the local "
                                         "runner (httpTrigger, queueTrigger and timerTrigger are)")
        except FunctionIndexError as exc:
            errors.append(str(exc))
    if errors:
        raise FunctionIndexError("; ".join(errors))
    http.sort(key=lambda f: f.route.precedence)
    return http, queues, timers


# ------------------------------------------------------------------------------------------------- invocations


@dataclass(frozen=True)
class InvocationResult:
    """How one invocation ended. ``skipped``: the host was stopping before it started, nothing ran."""

    function_name: str
    invocation_id: str
    status: InvocationStatus
    duration_ms: float = 0.0
    value: Any = None
    error: BaseException | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class QueueInvocation:
    """What happened to one dequeued message.

    ``succeeded`` deleted; ``retried`` made visible again after visibilityTimeout; ``poisoned`` moved to
    ``<queue>-poison``; ``released`` handed back untouched because the host was stopping; ``abandoned`` could
    not be settled (storage error) and reappears when its 10-minute lease runs out.
    """

    function_name: str
    queue_name: str
    message_id: str
    dequeue_count: int
    outcome: QueueOutcome
    result: InvocationResult | None


class _TraceContext(func_abc.TraceContext):
    def __init__(self) -> None:
        self._parent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"

    @property
    def trace_state(self) -> str:
        return ""

    @property
    def trace_parent(self) -> str:
        return self._parent

    @property
    def attributes(self) -> dict[str, str]:
        return {}


class _RpcException(func_abc.RpcException):
    @property
    def source(self) -> str:
        return ""

    @property
    def stack_trace(self) -> str:
        return ""

    @property
    def message(self) -> str:
        return ""


class _RetryContext(func_abc.RetryContext):
    @property
    def retry_count(self) -> int:
        return 0

    @property
    def max_retry_count(self) -> int:
        return 0

    @property
    def exception(self) -> func_abc.RpcException:
        return _RpcException()


class _Context(func.Context):
    """What the Python worker passes to a parameter named ``context``."""

    def __init__(self, invocation_id: str, function_name: str) -> None:
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._tls = threading.local()
        self._tls.invocation_id = invocation_id

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self) -> type[threading.local]:
        return typing.cast("type[threading.local]", self._tls)

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return os.getcwd()

    @property
    def trace_context(self) -> func_abc.TraceContext:
        return _TraceContext()

    @property
    def retry_context(self) -> func_abc.RetryContext:
        return _RetryContext()


class _Out(func.Out[Any]):
    """An ``Out`` parameter for an HTTP output binding that is not ``$return``."""

    def __init__(self) -> None:
        self._value: Any = None

    def set(self, val: Any) -> None:
        self._value = val

    def get(self) -> Any:
        return self._value


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class _Activity:
    """Counts invocations in flight (and every start/end) so stop() and drain() know when all is quiet."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.active = 0
        self.generation = 0

    def begin(self) -> None:
        with self._cond:
            self.active += 1
            self.generation += 1

    def end(self) -> None:
        with self._cond:
            self.active -= 1
            self.generation += 1
            self._cond.notify_all()

    def snapshot(self) -> tuple[int, int]:
        with self._cond:
            return self.active, self.generation

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.active == 0, timeout=max(timeout, 0.0))


class _Runtime:
    """Where user code runs: a thread pool for ``def`` functions, one event loop thread for ``async def``."""

    def __init__(self, threads: int) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="functions")
        self._loop = asyncio.new_event_loop()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run_loop, name="functions-event-loop", daemon=True)
        self._thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            if tasks:
                self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.run_until_complete(self._loop.shutdown_default_executor())
            self._loop.close()

    def submit(self, entry: _Entry, kwargs: dict[str, Any], reason: str,
               details: str | None = None) -> concurrent.futures.Future[InvocationResult]:
        """Start an invocation; the future always resolves to an InvocationResult, never to an exception."""
        invocation_id = str(uuid.uuid4())
        call_kwargs = dict(kwargs)
        if entry.context_arg:
            call_kwargs["context"] = _Context(invocation_id, entry.name)
        try:
            if entry.is_async:
                coro = self._call_async(entry, call_kwargs, reason, details, invocation_id)
                try:
                    return asyncio.run_coroutine_threadsafe(coro, self._loop)
                except RuntimeError:
                    coro.close()
                    raise
            return self._pool.submit(self._call_sync, entry, call_kwargs, reason, details, invocation_id)
        except RuntimeError:  # shut down
            done: concurrent.futures.Future[InvocationResult] = concurrent.futures.Future()
            done.set_result(InvocationResult(entry.name, invocation_id, "skipped"))
            return done

    def _started(self, entry: _Entry, reason: str, details: str | None, invocation_id: str) -> float:
        log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", entry.name, reason, invocation_id)
        if details:
            log.info("Trigger Details: %s", details)
        return time.perf_counter()

    def _finished(self, entry: _Entry, invocation_id: str, started: float, value: Any = None,
                  error: BaseException | None = None) -> InvocationResult:
        duration = (time.perf_counter() - started) * 1000
        if error is None:
            log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", entry.name, invocation_id, duration)
            return InvocationResult(entry.name, invocation_id, "succeeded", duration, value)
        log.error("Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", entry.name, invocation_id, duration,
                  exc_info=(type(error), error, error.__traceback__))
        return InvocationResult(entry.name, invocation_id, "failed", duration, error=error)

    def _call_sync(self, entry: _Entry, kwargs: dict[str, Any], reason: str, details: str | None,
                   invocation_id: str) -> InvocationResult:
        if self._closing.is_set():
            return InvocationResult(entry.name, invocation_id, "skipped")
        started = self._started(entry, reason, details, invocation_id)
        try:
            value = entry.func(**kwargs)
            if inspect.isawaitable(value):
                value = asyncio.run_coroutine_threadsafe(_await(value), self._loop).result()
        except Exception as exc:
            return self._finished(entry, invocation_id, started, error=exc)
        return self._finished(entry, invocation_id, started, value=value)

    async def _call_async(self, entry: _Entry, kwargs: dict[str, Any], reason: str, details: str | None,
                          invocation_id: str) -> InvocationResult:
        if self._closing.is_set():
            return InvocationResult(entry.name, invocation_id, "skipped")
        started = self._started(entry, reason, details, invocation_id)
        try:
            value = await entry.func(**kwargs)
        except (Exception, asyncio.CancelledError) as exc:
            return self._finished(entry, invocation_id, started, error=exc)
        return self._finished(entry, invocation_id, started, value=value)

    def close(self) -> None:
        """Invocations that have not started yet are skipped from now on."""
        self._closing.set()

    def shutdown(self, timeout: float) -> None:
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)


def _result_of(future: concurrent.futures.Future[InvocationResult], entry: _Entry) -> InvocationResult:
    try:
        return future.result(timeout=0)
    except BaseException as exc:  # cancelled at shutdown
        return InvocationResult(entry.name, "", "skipped", error=exc)


# ------------------------------------------------------------------------------------------------------ queues


@dataclass
class _Lease:
    """A dequeued message we hold: its current pop receipt and when to extend its invisibility."""

    message_id: str
    pop_receipt: str
    renew_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    settled: bool = False


class _QueueListener:
    """The host's queue listener for one queue-triggered function."""

    def __init__(self, function: _QueueFunction, options: QueuesOptions, runtime: _Runtime, activity: _Activity,
                 io: concurrent.futures.ThreadPoolExecutor) -> None:
        self.function = function
        self._options = options
        self._runtime = runtime
        self._activity = activity
        self._io = io
        self._client = function.endpoint.queue_client(function.queue_name)
        self.poison_queue_name = f"{function.queue_name}-poison"
        self._poison = function.endpoint.queue_client(self.poison_queue_name)
        self._created: set[str] = set()
        self._create_lock = threading.Lock()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._leases: dict[str, _Lease] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def _ensure(self, client: QueueClient) -> None:
        """Create the queue if missing, once, as the host does for trigger and poison queues."""
        name = str(client.queue_name)
        if name in self._created:
            return
        with self._create_lock:
            if name not in self._created:
                with contextlib.suppress(ResourceExistsError):
                    client.create_queue()
                self._created.add(name)

    def approximate_count(self) -> int:
        """Messages in the queue, including invisible ones (in flight or waiting for a retry)."""
        self._ensure(self._client)
        return int(self._client.get_queue_properties().approximate_message_count or 0)

    def receive(self, count: int) -> list[StorageMessage]:
        self._ensure(self._client)
        pages = self._client.receive_messages(
            messages_per_page=min(max(count, 1), 32), visibility_timeout=RECEIVE_VISIBILITY_SECONDS
        ).by_page()
        page = next(pages, None)  # one request: the host fetches one batch at a time
        return list(page) if page is not None else []

    def poll_once(self) -> int:
        """Fetch one batch and start processing it; returns how many messages were received."""
        messages = self.receive(self._options.batch_size)
        for message in messages:
            self.dispatch(message)
        return len(messages)

    def _decode(self, content: str) -> bytes:
        if self._options.message_encoding == "none":
            return content.encode("utf-8")
        return base64.b64decode("".join(content.split()), validate=True)

    def _encode(self, body: bytes) -> str:
        if self._options.message_encoding == "none":
            return body.decode("utf-8", errors="replace")
        return base64.b64encode(body).decode("ascii")

    def dispatch(self, message: StorageMessage) -> concurrent.futures.Future[QueueInvocation]:
        """Process one dequeued message: invoke, then delete, retry or poison it."""
        done: concurrent.futures.Future[QueueInvocation] = concurrent.futures.Future()
        lease = _Lease(str(message.id), str(message.pop_receipt or ""), time.monotonic() + RENEW_AFTER_SECONDS)
        self._activity.begin()
        with self._cond:
            self._in_flight += 1
            self._leases[lease.message_id] = lease
        raw = message.content if isinstance(message.content, str) else ""
        dequeue_count = int(message.dequeue_count or 1)
        name = self.function.entry.name
        try:
            body = self._decode(raw)
        except (ValueError, binascii.Error):
            log.warning("Message '%s' on queue '%s' is not valid base64; moving it to queue '%s' without invoking "
                        "'Functions.%s'.", lease.message_id, self.function.queue_name, self.poison_queue_name, name)
            self._submit_io(self._complete, lease, message, None, raw.encode("utf-8"), None, done)
            return done
        if dequeue_count > self._options.max_dequeue_count:
            # Dequeued too often without being settled (e.g. the process died): poison it unprocessed.
            self._submit_io(self._complete, lease, message, body, body, None, done)
            return done
        argument = func_queue.QueueMessage(  # type: ignore[no-untyped-call]
            id=message.id,
            body=body,
            dequeue_count=dequeue_count,
            expiration_time=message.expires_on,
            insertion_time=message.inserted_on,
            time_next_visible=message.next_visible_on,
            pop_receipt=message.pop_receipt,
        )
        inserted = message.inserted_on.isoformat() if message.inserted_on else "?"
        future = self._runtime.submit(
            self.function.entry,
            {self.function.entry.trigger_arg: argument},
            reason=f"New queue message detected on '{self.function.queue_name}'.",
            details=f"MessageId: {lease.message_id}, DequeueCount: {dequeue_count}, InsertedOn: {inserted}",
        )
        future.add_done_callback(lambda f: self._submit_io(
            self._complete, lease, message, body, body, _result_of(f, self.function.entry), done))
        return done

    def _submit_io(self, fn: Callable[..., None], *args: Any) -> None:
        """Storage calls run on the I/O pool, never on the event loop or a user-code thread."""
        try:
            self._io.submit(fn, *args)
        except RuntimeError:  # pool shut down: settle here
            fn(*args)

    def _complete(self, lease: _Lease, message: StorageMessage, body: bytes | None, payload: bytes,
                  result: InvocationResult | None, done: concurrent.futures.Future[QueueInvocation]) -> None:
        outcome: QueueOutcome = "abandoned"
        try:
            with lease.lock:
                try:
                    outcome = self._settle(lease, message, body, payload, result)
                finally:
                    lease.settled = True
        except Exception as exc:
            log.warning("Could not settle message '%s' on queue '%s'; it becomes visible again when its lease "
                        "expires: %s", lease.message_id, self.function.queue_name, exc)
        finally:
            with self._cond:
                self._in_flight -= 1
                self._leases.pop(lease.message_id, None)
                self._cond.notify_all()
            self._activity.end()
            done.set_result(QueueInvocation(
                function_name=self.function.entry.name,
                queue_name=self.function.queue_name,
                message_id=lease.message_id,
                dequeue_count=int(message.dequeue_count or 1),
                outcome=outcome,
                result=result,
            ))

    def _settle(self, lease: _Lease, message: StorageMessage, body: bytes | None, payload: bytes,
                result: InvocationResult | None) -> QueueOutcome:
        dequeue_count = int(message.dequeue_count or 1)
        if body is not None and result is not None:
            if result.status == "skipped":
                self._client.update_message(lease.message_id, lease.pop_receipt, visibility_timeout=0)
                return "released"
            if result.succeeded:
                self._client.delete_message(lease.message_id, lease.pop_receipt)
                return "succeeded"
            if dequeue_count < self._options.max_dequeue_count:
                self._client.update_message(lease.message_id, lease.pop_receipt,
                                            visibility_timeout=math.ceil(self._options.visibility_timeout))
                return "retried"
        if body is not None:
            log.warning("Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                        self._options.max_dequeue_count, self.poison_queue_name)
        self._ensure(self._poison)
        self._poison.send_message(self._encode(payload))
        self._client.delete_message(lease.message_id, lease.pop_receipt)
        return "poisoned"

    def renew_due(self) -> None:
        """Extend the invisibility of messages still being processed, as the host does halfway through."""
        now = time.monotonic()
        with self._cond:
            due = [lease for lease in self._leases.values() if lease.renew_at <= now]
        for lease in due:
            with lease.lock:
                if lease.settled:
                    continue
                try:
                    receipt = self._client.update_message(lease.message_id, lease.pop_receipt,
                                                          visibility_timeout=RECEIVE_VISIBILITY_SECONDS)
                    lease.pop_receipt = str(receipt.pop_receipt)
                    lease.renew_at = now + RENEW_AFTER_SECONDS
                except Exception as exc:
                    log.warning("Could not extend the lease of message '%s' on queue '%s': %s",
                                lease.message_id, self.function.queue_name, exc)
                    lease.renew_at = now + 10

    def _seconds_to_next_renewal(self) -> float:
        with self._cond:
            if not self._leases:
                return 1.0
            soonest = min(lease.renew_at for lease in self._leases.values())
        return min(1.0, max(0.0, soonest - time.monotonic()))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"queue-{self.function.entry.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        """Poll like the host: fetch a batch when in-flight work is at or below newBatchThreshold."""
        delay = 0.0
        maximum = self._options.max_polling_interval
        while not self._stop.is_set():
            self.renew_due()
            with self._cond:
                if self._in_flight > self._options.new_batch_threshold:
                    self._cond.wait(timeout=self._seconds_to_next_renewal())
                    continue
            try:
                received = self.poll_once()
            except Exception as exc:
                log.warning("Polling queue '%s' for 'Functions.%s' failed: %s", self.function.queue_name,
                            self.function.entry.name, exc)
                received = 0
            if received:
                delay = 0.0
                continue
            # Randomized exponential back-off from 100 ms up to maxPollingInterval while the queue is empty.
            delay = MIN_POLLING_INTERVAL if delay == 0 else min(maximum, delay * 2)
            self._stop.wait(min(maximum, delay * random.uniform(0.8, 1.2)))

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(max(timeout, 0.0))

    def close(self) -> None:
        for client in (self._client, self._poison):
            with contextlib.suppress(Exception):
                client.close()


# ------------------------------------------------------------------------------------------------------ timers


class _TimerListener:
    """Fires one timer function at each occurrence of its schedule; runs never overlap, as in the host."""

    def __init__(self, function: _TimerFunction,
                 fire: Callable[[_TimerFunction, bool, str, datetime | None], InvocationResult]) -> None:
        self.function = function
        self._fire = fire
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last: datetime | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"timer-{self.function.entry.name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        schedule = self.function.schedule
        if self.function.run_on_startup:
            now = datetime.now(UTC)
            self._fire(self.function, False, f"Timer fired at {now.isoformat()}", self.last)
            self.last = now
        while not self._stop.is_set():
            due = schedule.next_after(datetime.now(UTC))
            while (remaining := (due - datetime.now(UTC)).total_seconds()) > 0:
                if self._stop.wait(min(remaining, 1.0)):  # short waits: wall-clock jumps are noticed
                    return
            now = datetime.now(UTC)
            past_due = now >= schedule.next_after(due)  # a whole occurrence was missed (sleep, clock change)
            self._fire(self.function, past_due, f"Timer fired at {due.isoformat()}", self.last)
            self.last = due

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(max(timeout, 0.0))


# -------------------------------------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class _HttpReply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    close: bool = False


class _Body:
    """A request body, read from the connection once and only when first asked for."""

    def __init__(self, data: bytes | None, length: int = 0, stream: io.BufferedIOBase | None = None) -> None:
        self._data = data
        self._length = length
        self._stream = stream
        self._lock = threading.Lock()

    @property
    def unread(self) -> bool:
        return self._data is None and self._length > 0

    def read(self) -> bytes:
        with self._lock:
            if self._data is None:
                self._data = self._stream.read(self._length) if self._stream is not None and self._length else b""
            return self._data


class _StreamedRequest(func.HttpRequest):
    """``func.HttpRequest`` whose body comes from :class:`_Body` on first use."""

    def __init__(self, *args: Any, lazy_body: _Body, **kwargs: Any) -> None:
        super().__init__(*args, body=b"", **kwargs)
        self._lazy_body = lazy_body

    def get_body(self) -> bytes:
        return self._lazy_body.read()

    def get_json(self) -> Any:
        return json.loads(self.get_body().decode("utf-8"))


class _HttpServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: a burst of Graph deliveries must not wait for a connect retry

    def __init__(self, address: tuple[str, int], host: LocalFunctionsHost) -> None:
        self.host = host
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def close_connections(self) -> None:
        """Drop idle keep-alive connections so their handler threads end after stop()."""
        with self.connections_lock:
            for conn in list(self.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)


class _HttpServer6(_HttpServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "guestsync-local-functions"
    timeout = 120  # idle keep-alive connections
    server: _HttpServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without TCP_NODELAY, Nagle holds the body back until the
        # client's delayed ACK (about 40 ms on loopback).
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            total += size
            if total > MAX_REQUEST_BODY:
                raise OverflowError
            chunks.append(self.rfile.read(size))
            self.rfile.readline(3)

    def _body(self) -> _Body:
        """The request body: a chunked one is read now (its size is only known then); one with a
        Content-Length is read when the function first asks for it, so that a request refused on its headers
        (no key, a declared size over a function's limit) never has its body read."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return _Body(self._read_chunked())
        text = (self.headers.get("Content-Length") or "0").strip()
        if not (text.isascii() and text.isdigit()):
            raise ValueError("Content-Length is not a non-negative number")
        length = int(text)
        if length > MAX_REQUEST_BODY:
            raise OverflowError
        return _Body(None, length, self.rfile)

    def _handle(self) -> None:
        # In flight until the reply is written, so stop() does not close the connection under it.
        activity = self.server.host._activity
        activity.begin()
        try:
            try:
                body = self._body()
            except OverflowError:
                self._send(_HttpReply(413, close=True))
                self._linger()
                return
            except ValueError:
                self._send(_HttpReply(400, close=True))
                return
            headers: dict[str, str] = {}
            for key in dict.fromkeys(self.headers.keys()):
                headers[key] = ",".join(self.headers.get_all(key) or [])
            reply = self.server.host._serve_http(self.command, self.path, headers, body)
            if body.unread:  # the rest of the request is still on the connection: it cannot be reused
                reply = _HttpReply(reply.status, reply.headers, reply.body, close=True)
            self._send(reply)
            if body.unread:
                self._linger()
        finally:
            activity.end()

    def _linger(self) -> None:
        """A client still sending the body of a request answered without it (413 on its declared size, 401)
        would otherwise meet a connection reset by the close, and see a broken pipe instead of the answer:
        end our side, then read and drop what it still sends, bounded (LINGER_BYTES, LINGER_SECONDS)."""
        with contextlib.suppress(OSError):
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            deadline, left = time.monotonic() + LINGER_SECONDS, LINGER_BYTES
            while left > 0 and (remaining := deadline - time.monotonic()) > 0:
                self.connection.settimeout(min(0.25, remaining))
                try:
                    chunk = self.connection.recv(min(65536, left))
                except TimeoutError:
                    continue
                if not chunk:  # the client is done
                    return
                left -= len(chunk)

    def _send(self, reply: _HttpReply) -> None:
        self.send_response(reply.status)
        for key, value in reply.headers:
            self.send_header(key, value)
        has_body = reply.status >= 200 and reply.status not in (204, 304)
        if has_body:
            self.send_header("Content-Length", str(len(reply.body)))
        if reply.close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if has_body and self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _handle


def _render(value: Any) -> _HttpReply:
    """HttpResponse (or str) -> status, headers, body, as the Python worker's HTTP output converter does."""
    response = func.HttpResponse(value) if isinstance(value, str) else value
    if not isinstance(response, func.HttpResponse):
        raise TypeError(f"an HTTP function must return func.HttpResponse or str, not {type(value).__name__}")
    headers = [(str(k), str(v)) for k, v in response.headers.items()
               if str(k).lower() not in ("content-length", "transfer-encoding", "connection")]
    if not any(k.lower() == "content-type" for k, _ in headers):
        mimetype = str(response.mimetype)
        content_type = f"{mimetype}; charset={response.charset}" if mimetype.startswith("text/") else mimetype
        headers.append(("Content-Type", content_type))
    return _HttpReply(int(response.status_code), headers, response.get_body() or b"")


# -------------------------------------------------------------------------------------------------------- host


class LocalFunctionsHost:
    """Runs a ``FunctionApp``'s HTTP, queue and timer functions on this machine with the host's semantics.

    Deviations from the Azure Functions host, and why:

    * Auth levels are enforced like the host does it in Azure (Core Tools does not): ``function`` needs one of
      the ``function_keys`` (by default the value of the GUESTSYNC_WEBHOOK_KEY setting, which in Azure is also
      a host key) as ``?code=`` or ``x-functions-key``, else 401; ``admin`` always gets 401 (no master key).
    * A request body with a Content-Length is read when the function asks for it, not before (the host
      buffers it first): a function that answers on the headers alone never reads it (the connection is
      then closed), and a 401 never reads it either.
    * A known route called with a method it does not allow gets 405 with ``Allow``; the host answers 404.
    * An app that cannot be indexed completely raises :class:`FunctionIndexError` at construction; the host
      would run the healthy functions and mark the others "in error".
    * Bindings other than the trigger (and the HTTP response) are refused; retry policies are ignored; the
      timer ``use_monitor`` status is not persisted (``past_due`` is set when a whole occurrence was missed
      while running); ``functionTimeout`` is not enforced; schedules are in UTC (``WEBSITE_TIME_ZONE`` is
      ignored).
    * Queue: dequeued messages are leased for 10 minutes and renewed every 5 (as the host), but renewal
      happens on the poller thread, so it only runs while the host polls (``start(queues=True)`` or drain()).
    * HTTP: an HTTP function returning None (or anything but HttpResponse/str) is answered 500, as the
      Python worker fails to encode it; request bodies over 100 MB get 413.
    """

    def __init__(self, app: func.FunctionApp, *, env: Mapping[str, str] | None = None,
                 host_json: Path | None = None, http_host: str = "127.0.0.1", http_port: int | None = 0,
                 function_keys: Iterable[str] | None = None) -> None:
        self._env: Mapping[str, str] = env if env is not None else os.environ
        if function_keys is None:
            configured = _setting(self._env, FUNCTION_KEY_SETTING)
            function_keys = [configured] if configured else []
        self._function_keys = tuple(k for k in function_keys if k)
        self.options = HostOptions.load(host_json)
        # get_functions() validates names by registering them on the app: it works once per app object.
        http, queues, timers = _index(list(app.get_functions()), self._env, self.options)
        self._http = http
        self._queue_functions = queues
        self._timer_functions = timers
        self._http_host = http_host
        self._http_port = http_port
        self._threads = self._thread_count()
        self._host_id = uuid.uuid4().hex
        self._activity = _Activity()
        self._lock = threading.Lock()
        self._state: Literal["new", "running", "stopping", "stopped"] = "new"
        self._stopped = threading.Event()
        self._started_at = 0.0
        self._runtime: _Runtime | None = None
        self._io: concurrent.futures.ThreadPoolExecutor | None = None
        self._listeners: dict[str, _QueueListener] = {}
        self._timer_listeners: dict[str, _TimerListener] = {}
        self._polling = False
        self._server: _HttpServer | None = None
        self._server_thread: threading.Thread | None = None

    def _thread_count(self) -> int:
        """The Python worker's PYTHON_THREADPOOL_THREAD_COUNT (1-32), default min(32, CPUs + 4)."""
        value = _setting(self._env, "PYTHON_THREADPOOL_THREAD_COUNT")
        if value is None:
            return min(32, (os.cpu_count() or 1) + 4)
        if not value.isdigit() or not 1 <= int(value) <= 32:
            raise FunctionIndexError("PYTHON_THREADPOOL_THREAD_COUNT must be an integer from 1 to 32")
        return int(value)

    # -- introspection

    @property
    def functions(self) -> dict[str, FunctionInfo]:
        """Every indexed function by name, with a one-line description of its trigger."""
        out: dict[str, FunctionInfo] = {}
        prefix = f"/{self.options.route_prefix}" if self.options.route_prefix else ""
        for h in self._http:
            methods = ",".join(sorted(h.methods)) if h.methods else "*"
            out[h.entry.name] = FunctionInfo(h.entry.name, "http", f"[{methods}] {prefix}/{h.route.template}",
                                             h.entry.disabled)
        for q in self._queue_functions.values():
            out[q.entry.name] = FunctionInfo(q.entry.name, "queue", f"queue '{q.queue_name}' ({q.endpoint.setting})",
                                             q.entry.disabled)
        for t in self._timer_functions.values():
            detail = f"schedule '{t.schedule}'" + (" (run on startup)" if t.run_on_startup else "")
            out[t.entry.name] = FunctionInfo(t.entry.name, "timer", detail, t.entry.disabled)
        return out

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the HTTP listener (functions live under ``/<routePrefix>/``)."""
        if self._server is None:
            raise RuntimeError("the HTTP listener is not running (start() it, and pass an http_port)")
        address = self._server.server_address
        host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
        host_text = f"[{host}]" if ":" in host else host
        return f"http://{host_text}:{address[1]}"

    # -- lifecycle

    def start(self, *, http: bool = True, queues: bool = True, timers: bool = True) -> LocalFunctionsHost:
        """Start serving without blocking. Switch listeners off to drive them by hand in tests."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError(f"this host is {self._state}; create a new one (with a new app) to start again")
            self._state = "running"
        try:
            self._start(http=http, queues=queues, timers=timers)
        except BaseException:
            self.stop(timeout=5)
            raise
        self._log_banner()
        for timer in self._timer_listeners.values():
            timer.start()
        return self

    def _start(self, *, http: bool, queues: bool, timers: bool) -> None:
        with self._lock:
            self._started_at = time.monotonic()
            runtime = self._runtime = _Runtime(self._threads)
            q = self.options.queues
            self._io = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(4, min(32, q.batch_size + q.new_batch_threshold)), thread_name_prefix="queue-io")
            for name, qf in self._queue_functions.items():
                if not qf.entry.disabled:
                    self._listeners[name] = _QueueListener(qf, q, runtime, self._activity, self._io)
            if http and self._http_port is not None:
                server_class = _HttpServer6 if ":" in self._http_host else _HttpServer
                self._server = server_class((self._http_host, self._http_port), self)
                self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                                       name="functions-http", daemon=True)
                self._server_thread.start()
            if queues:
                self._polling = True
                for listener in self._listeners.values():
                    listener.start()
            if timers:
                for name, tf in self._timer_functions.items():
                    if not tf.entry.disabled:
                        self._timer_listeners[name] = _TimerListener(tf, self._fire_and_wait)

    def _log_banner(self) -> None:
        base = self.base_url if self._server is not None else ""
        log.info("Host started (%d functions)", len(self.functions))
        for info in self.functions.values():
            state = " [disabled]" if info.disabled else ""
            if info.trigger == "http" and base:
                methods, _, path = info.detail.partition(" ")
                log.info("  %s: %s %s%s%s", info.name, methods, base, path, state)
            else:
                log.info("  %s: %sTrigger, %s%s", info.name, info.trigger, info.detail, state)
        for tf in self._timer_functions.values():
            upcoming: list[str] = []
            moment = datetime.now(UTC)
            for _ in range(5):
                moment = tf.schedule.next_after(moment)
                upcoming.append(moment.isoformat())
            log.info("The next 5 occurrences of the '%s' schedule (Cron: '%s') will be: %s",
                     tf.entry.name, tf.schedule, ", ".join(upcoming))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop polling and accepting, let running invocations finish within ``timeout``, then shut down.

        Messages already received but not started are handed back to the queue at once (visible again);
        invocations still running after ``timeout`` are abandoned (their messages reappear after the lease).
        """
        with self._lock:
            if self._state != "running":
                if self._state == "new":
                    self._state = "stopped"
                    self._stopped.set()
                return
            self._state = "stopping"
        deadline = time.monotonic() + timeout
        runtime = self._runtime
        for listener in self._listeners.values():
            listener.stop()
        for timer in self._timer_listeners.values():
            timer.stop()
        if runtime is not None:
            runtime.close()
        if self._server is not None:
            self._server.shutdown()
        for listener in self._listeners.values():
            listener.join(deadline - time.monotonic())
        if not self._activity.wait_idle(deadline - time.monotonic()):
            log.warning("%d invocation(s) still running after %.0f s; stopping anyway", self._activity.active, timeout)
        for timer in self._timer_listeners.values():
            timer.join(max(0.5, deadline - time.monotonic()))
        if self._server is not None:
            self._server.server_close()
            self._server.close_connections()
        if runtime is not None:
            runtime.shutdown(max(1.0, deadline - time.monotonic()))
        if self._io is not None:
            self._io.shutdown(wait=False, cancel_futures=True)
        for listener in self._listeners.values():
            listener.close()
        with self._lock:
            self._state = "stopped"
        self._stopped.set()
        log.info("Host stopped")

    def run_forever(self) -> None:
        """Serve until SIGINT/SIGTERM (or stop() from another thread), then stop gracefully."""
        if self._state == "new":
            self.start()
        wake = threading.Event()
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, lambda *_: wake.set())
        try:
            while not wake.is_set() and not self._stopped.is_set():
                wake.wait(0.5)
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            log.info("Application is shutting down...")
            self.stop()

    def __enter__(self) -> LocalFunctionsHost:
        return self.start() if self._state == "new" else self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _require_running(self) -> _Runtime:
        if self._state != "running" or self._runtime is None:
            raise RuntimeError(f"the host is {self._state}: call start() first")
        return self._runtime

    # -- timers

    def _timer_request(self, function: _TimerFunction, past_due: bool, last: datetime | None) -> func.TimerRequest:
        now = datetime.now(UTC)
        status = {"Last": (last or now).isoformat(), "Next": function.schedule.next_after(now).isoformat(),
                  "LastUpdated": now.isoformat()}
        return func_timer.TimerRequest(past_due=past_due, schedule_status=status, schedule={"AdjustForDST": True})

    def _fire(self, function: _TimerFunction, past_due: bool, reason: str,
              last: datetime | None) -> concurrent.futures.Future[InvocationResult]:
        runtime = self._require_running()
        request = self._timer_request(function, past_due, last)
        return self._tracked(runtime.submit(function.entry, {function.entry.trigger_arg: request}, reason))

    def _fire_and_wait(self, function: _TimerFunction, past_due: bool, reason: str,
                       last: datetime | None) -> InvocationResult:
        try:
            future = self._fire(function, past_due, reason, last)
        except RuntimeError:  # stopping
            return InvocationResult(function.entry.name, "", "skipped")
        return future.result()

    def _tracked(
        self, future: concurrent.futures.Future[InvocationResult]
    ) -> concurrent.futures.Future[InvocationResult]:
        self._activity.begin()
        future.add_done_callback(lambda _: self._activity.end())
        return future

    def trigger_timer(self, name: str, *, past_due: bool = False, timeout: float | None = None) -> InvocationResult:
        """Fire a timer function now (as the host's admin API does) and wait for it to finish."""
        function = self._timer_functions.get(name)
        if function is None:
            raise KeyError(f"no timer function named {name!r} (timers: {sorted(self._timer_functions)})")
        listener = self._timer_listeners.get(name)
        future = self._fire(function, past_due, PROGRAMMATIC_REASON, listener.last if listener else None)
        return future.result(timeout)

    # -- queues

    def _listener(self, function_name: str) -> _QueueListener:
        self._require_running()
        listener = self._listeners.get(function_name)
        if listener is None:
            known = sorted(self._listeners)
            raise KeyError(f"no enabled queue-triggered function named {function_name!r} (queue functions: {known})")
        return listener

    def queue_name(self, function_name: str) -> str:
        """The resolved trigger queue of a queue function (its poison queue is this plus ``-poison``)."""
        return self._queue_functions[function_name].queue_name

    def invoke_queue_once(self, function_name: str, timeout: float = 10.0) -> QueueInvocation | None:
        """Receive one message for ``function_name`` and process it fully (invoke, then delete/retry/poison).

        Waits up to ``timeout`` for a message to become visible (None if none did) and up to ``timeout`` for
        its processing. Meant for a host started with ``queues=False``; with pollers running they compete
        for messages.
        """
        listener = self._listener(function_name)
        deadline = time.monotonic() + timeout
        while True:
            messages = listener.receive(1)
            if messages:
                return listener.dispatch(messages[0]).result(timeout)
            if time.monotonic() >= deadline:
                return None
            time.sleep(MIN_POLLING_INTERVAL)

    def drain(self, timeout: float = 30.0) -> None:
        """Wait until every trigger queue is empty and no invocation (HTTP, queue, timer) is in flight.

        "Empty" is the queue's approximate message count, which includes invisible messages: a message
        waiting out its visibilityTimeout before a retry keeps drain() waiting until it has succeeded or been
        poisoned. Poison queues are not trigger queues and do not count. Quiet means nothing started or ended
        while the counts were read. If the queue pollers are not running (``start(queues=False)``), drain()
        polls itself. Raises TimeoutError, saying what is left, after ``timeout``.
        """
        self._require_running()
        deadline = time.monotonic() + timeout
        counts: dict[str, int] = {}
        while True:
            if not self._polling:
                for listener in self._listeners.values():
                    listener.renew_due()
                    if listener.in_flight <= self.options.queues.new_batch_threshold:
                        with contextlib.suppress(Exception):
                            listener.poll_once()
            if self._activity.wait_idle(min(0.2, deadline - time.monotonic())):
                active, generation = self._activity.snapshot()
                counts = {name: listener.approximate_count() for name, listener in self._listeners.items()}
                if not any(counts.values()) and self._activity.snapshot() == (0, generation) and active == 0:
                    return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"drain() timed out after {timeout} s: {self._activity.active} invocation(s) in "
                                   f"flight, messages left per function: {counts}")
            time.sleep(0.05)

    # -- HTTP

    def _serve_http(self, method: str, target: str, headers: dict[str, str], body: _Body) -> _HttpReply:
        """One HTTP request: admin API, or route -> function -> response. Never raises."""
        if self._state != "running":
            return _HttpReply(503, close=True)
        try:
            return self._route_http(method, target, headers, body)
        except RuntimeError:  # stop() began meanwhile
            return _HttpReply(503, close=True)
        except Exception:
            log.exception("Unexpected error serving %s %s", method, urlsplit(target).path)
            return _HttpReply(500)

    def _route_http(self, method: str, target: str, headers: dict[str, str], body: _Body) -> _HttpReply:
        split = urlsplit(target)
        parts = [p for p in split.path.split("/")][1:]
        if parts and parts[-1] == "":
            parts.pop()  # trailing slash
        if not parts:
            return _HttpReply(200, [("Content-Type", "text/plain; charset=utf-8")],
                              b"Your Functions app is up and running (guestsync local host).\n")
        if parts[0].lower() == "admin":
            return self._serve_admin(method, parts[1:], body.read())
        prefix = [p for p in self.options.route_prefix.split("/") if p]
        if [p.lower() for p in parts[:len(prefix)]] != [p.lower() for p in prefix]:
            return _HttpReply(404)
        rest = parts[len(prefix):]
        allowed: set[str] = set()
        for function in self._http:
            if function.entry.disabled:
                continue
            route_params = function.route.match(rest)
            if route_params is None:
                continue
            if function.methods is not None and method.upper() not in function.methods:
                allowed |= function.methods
                continue
            params: dict[str, list[str]] = {}
            for key, value in parse_qsl(split.query, keep_blank_values=True):
                params.setdefault(key, []).append(value)
            if not self._authorized(function, params, headers):
                return _HttpReply(401)
            host_header = headers.get("Host") or next((v for k, v in headers.items() if k.lower() == "host"), "")
            url = f"http://{host_header or self.base_url.removeprefix('http://')}{target}"
            request = _StreamedRequest(
                method=method.upper(),
                url=url,
                headers=headers,
                params={k: ",".join(v) for k, v in params.items()},
                route_params=route_params,
                lazy_body=body,
            )
            return self._invoke_http(function, request)
        if allowed:
            return _HttpReply(405, [("Allow", ", ".join(sorted(allowed)))])
        return _HttpReply(404)

    def _authorized(self, function: _HttpFunction, params: dict[str, list[str]], headers: dict[str, str]) -> bool:
        """The host's key check: ``anonymous`` needs nothing; ``function`` a function or host key as the
        ``code`` query parameter or the ``x-functions-key`` header (compared in constant time); ``admin`` the
        master key, which this runner does not have."""
        if function.auth_level == "anonymous":
            return True
        if function.auth_level != "function" or not self._function_keys:
            return False
        given = [*params.get("code", []),
                 *(v for k, v in headers.items() if k.lower() == "x-functions-key")]
        matched = False
        for candidate in given:
            for key in self._function_keys:
                matched |= hmac.compare_digest(candidate.encode("utf-8"), key.encode("utf-8"))
        return matched

    def _invoke_http(self, function: _HttpFunction, request: func.HttpRequest) -> _HttpReply:
        runtime = self._require_running()
        out = _Out() if function.output_arg else None
        kwargs: dict[str, Any] = {function.entry.trigger_arg: request}
        if function.output_arg and out is not None:
            kwargs[function.output_arg] = out
        result = runtime.submit(function.entry, kwargs, PROGRAMMATIC_REASON).result()
        if result.status == "skipped":
            return _HttpReply(503, close=True)
        if not result.succeeded:
            return _HttpReply(500)
        try:
            return _render(out.get() if out is not None else result.value)
        except (TypeError, ValueError) as exc:
            log.error("Function 'Functions.%s' (Id=%s) returned an unusable HTTP response: %s",
                      function.entry.name, result.invocation_id, exc)
            return _HttpReply(500)

    def _serve_admin(self, method: str, parts: list[str], body: bytes) -> _HttpReply:
        """The host admin API subset Core Tools users rely on: status, ping, invoke a non-HTTP function."""
        lowered = [p.lower() for p in parts]
        json_type = [("Content-Type", "application/json; charset=utf-8")]
        if lowered == ["host", "status"] and method in ("GET", "HEAD"):
            status = {"id": self._host_id, "state": "Running", "version": "local",
                      "processUptime": int((time.monotonic() - self._started_at) * 1000)}
            return _HttpReply(200, json_type, json.dumps(status).encode())
        if lowered == ["host", "ping"] and method in ("GET", "POST", "HEAD"):
            return _HttpReply(200)
        if len(parts) == 2 and lowered[0] == "functions" and method == "POST":
            return self._admin_invoke(unquote(parts[1]), body)
        return _HttpReply(404)

    def _admin_invoke(self, name: str, body: bytes) -> _HttpReply:
        try:
            payload = json.loads(body or b"{}")
            text = payload.get("input", "") if isinstance(payload, dict) else None
            if not isinstance(text, str):
                raise ValueError
        except ValueError:
            return _HttpReply(400, [("Content-Type", "text/plain; charset=utf-8")],
                              b'expected a JSON body like {"input": "..."}\n')
        runtime = self._require_running()
        timer = self._timer_functions.get(name)
        if timer is not None:
            listener = self._timer_listeners.get(name)
            self._fire(timer, False, PROGRAMMATIC_REASON, listener.last if listener else None)
            return _HttpReply(202)
        queue = self._queue_functions.get(name)
        if queue is not None:
            now = datetime.now(UTC)
            message = func_queue.QueueMessage(  # type: ignore[no-untyped-call]
                id=str(uuid.uuid4()), body=text.encode("utf-8"), dequeue_count=1, insertion_time=now,
                time_next_visible=now, pop_receipt=None)
            self._tracked(runtime.submit(queue.entry, {queue.entry.trigger_arg: message}, PROGRAMMATIC_REASON))
            return _HttpReply(202)
        if any(h.entry.name == name for h in self._http):
            return _HttpReply(400, [("Content-Type", "text/plain; charset=utf-8")],
                              b"HTTP functions are invoked through their route\n")
        return _HttpReply(404)
