"""Function bindings as blueprints: thin decorated functions that hand over to the services.

``function_app.py`` registers these on the app the Functions host loads; the on-premises agent
(``guestsync worker``) registers only the export blueprint on an app of its own and runs it through the
local runner, so both worker modes run the same code with the same queue semantics.
"""

from __future__ import annotations

import asyncio
import logging
import os

import azure.functions as func

from shared import observability
from shared.adapters.queues import StoragePoisonQueues, leave_for_newer_reader
from shared.bootstrap import services
from shared.core.messages import (
    NewerSchemaError,
    SubscriptionEventMessage,
    read_change_queue_message,
)
from shared.core.notifications import SubscriptionEventBatch
from shared.core.records import utcnow
from shared.observability import guest_context, new_correlation_id
from shared.services import alerts, apply, reconcile, subscriptions, webhook

log = logging.getLogger("guestsync.functions")

#: Loggers that speak at INFO for every HTTP request (azure-core logs each storage request's and answer's headers,
#: httpx each Graph call): in the Functions worker, which logs at Information, that is two records per request,
#: each scrubbed and shipped to Application Insights. Their warnings and errors still get through.
QUIET_LOGGERS = ("azure.core.pipeline.policies.http_logging_policy", "httpx")
CHANGE_QUEUE = "%GUESTSYNC_CHANGE_QUEUE%"
EXPORT_QUEUE = "%GUESTSYNC_EXPORT_QUEUE%"
STORAGE = "AzureWebJobsStorage"


def _http(reply: webhook.Reply) -> func.HttpResponse:
    return func.HttpResponse(reply.body, status_code=reply.status, mimetype=reply.mimetype,
                             headers=dict(reply.headers))


def make_ingest_blueprint(*, export_in_process: bool = False) -> func.Blueprint:
    """Webhook, lifecycle notifications, apply and subscription upkeep: the cloud half of guestsync.

    Both HTTP endpoints need a Functions key (auth level FUNCTION) on top of clientState: the host refuses a
    call without it (401) before any code of ours runs. The URLs guestsync subscribes with carry it.

    ``export_in_process`` (worker mode function): apply exports each guest it changed itself, right after saving
    its state, instead of queueing the export for another function: one queue hop instead of two, so an invite
    becomes an account without a second wait for the export queue's listener (and its three storage
    transactions). The export queue still carries what this cannot finish (a DC outage, an unexpected error)
    and the reconcile's exports."""
    bp = func.Blueprint()  # type: ignore[no-untyped-call]

    @bp.function_name("graph_notifications")
    @bp.route(route="graph/notifications", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
    def graph_notifications(req: func.HttpRequest) -> func.HttpResponse:
        s = services()  # services() installs log scrubbing with the settings' secrets
        refused = webhook.screen(req.params, req.headers)  # before the body is read
        if refused is not None:
            return _http(refused)
        return _http(
            webhook.receive_changes(req.get_body(), dict(req.params), s.settings.webhook, s.change_commit)
        )

    @bp.function_name("graph_lifecycle")
    @bp.route(route="graph/lifecycle", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
    def graph_lifecycle(req: func.HttpRequest) -> func.HttpResponse:
        s = services()
        refused = webhook.screen(req.params, req.headers)
        if refused is not None:
            return _http(refused)
        received_at = utcnow().isoformat()

        def handle(batch: SubscriptionEventBatch) -> None:
            # Lifecycle work needs Graph calls: queue it so the answer stays fast (one message per subscription
            # and event of the POST; the queue side coalesces the catch-ups across POSTs).
            for event in batch.accepted:
                s.webhook_queue.send(
                    SubscriptionEventMessage(event.subscription_id, event.event, received_at,
                                             correlation_id=new_correlation_id()).to_json()
                )

        return _http(webhook.receive_lifecycle(req.get_body(), dict(req.params), s.settings.webhook, handle,
                                               lambda: subscriptions.our_subscription_ids(s.state)))

    @bp.function_name("apply_change")
    @bp.queue_trigger(arg_name="msg", queue_name=CHANGE_QUEUE, connection=STORAGE)
    async def apply_change(msg: func.QueueMessage) -> None:
        s = services()
        try:
            change = read_change_queue_message(msg.get_body())
        except NewerSchemaError as newer:  # written by a newer agent's reconcile: not ours to guess at
            leave_for_newer_reader(s.change_queue, msg.get_body(), newer)
            return
        if isinstance(change, SubscriptionEventMessage):
            await subscriptions.on_subscription_event(
                s.graph, s.state, s.settings, change.subscription_id, change.event,
                received_at=change.received, token=change.correlation_id or msg.id or "",
                reconcile=lambda: reconcile.Reconciler(s.graph, s.state, s.export_queue.send,
                                                       s.settings.deprovisioning).run(),
                defer=lambda delay: s.change_queue.send(change.to_json(), delay_seconds=delay))
            return
        exports: list[str] = []
        with guest_context(None if change.more_user_ids else change.user_id, change.correlation_id or None):
            await apply.apply_or_defer(change, s.graph, s.state,
                                       exports.append if export_in_process else s.export_queue.send,
                                       lambda body, delay: s.change_queue.send(body, delay_seconds=delay),
                                       scope_group_id=s.settings.deprovisioning.scope_group_id)
        if exports:  # state is saved (pending): a crash from here on is repaired by this message's retry
            await asyncio.gather(*(s.export_in_process(body) for body in exports))

    @bp.function_name("maintain_subscription")
    @bp.timer_trigger(arg_name="timer", schedule="%GUESTSYNC_SUBSCRIPTION_SCHEDULE%", run_on_startup=False)
    async def maintain_subscription(timer: func.TimerRequest) -> None:
        s = services()
        await subscriptions.ensure_subscription(s.graph, s.settings, state=s.state)

    return bp


def create_app_from_environment() -> func.FunctionApp:
    """The app as function_app.py gives it to the Functions host, worker mode from GUESTSYNC_WORKER_MODE;
    also what ``guestsync serve`` runs, so an installed package (without function_app.py) serves the same app."""
    return create_app(os.environ.get("GUESTSYNC_WORKER_MODE", "agent").strip().lower())


def create_app(worker_mode: str = "agent", *, mail_alerts: bool | None = None) -> func.FunctionApp:
    """The function app: ingest always; the AD worker too when it runs in Azure (worker mode function); the
    alerts timer when alerts are mailed (``mail_alerts``; by default when GUESTSYNC_MAIL is not ``none``)."""
    observability.install()  # scrub secrets from every log record, tag records with the guest
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if mail_alerts is None:
        mail_alerts = (os.environ.get("GUESTSYNC_MAIL") or "none").strip().lower() != "none"
    app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)
    app.register_functions(make_ingest_blueprint(export_in_process=worker_mode == "function"))
    if worker_mode == "function":
        app.register_functions(make_worker_blueprint())
    if mail_alerts:
        app.register_functions(make_alerts_blueprint())
    if worker_mode == "agent":
        app.register_functions(make_agent_health_blueprint())
    return app


def make_agent_health_blueprint() -> func.Blueprint:
    """Worker mode agent: warn (log, metric, mail when mail is on) when no agent has been seen for 10 minutes or
    the oldest export message is older than 10 minutes (shared.agent.health)."""
    bp = func.Blueprint()  # type: ignore[no-untyped-call]

    @bp.function_name("agent_health")
    @bp.timer_trigger(arg_name="timer", schedule="%GUESTSYNC_ALERT_SCHEDULE%", run_on_startup=False)
    async def agent_health(timer: func.TimerRequest) -> None:
        from shared.adapters.storage import queue_client
        from shared.agent.health import watch_agents

        s = services()
        client = queue_client(s.settings.storage, s.settings.export_queue)
        try:
            await watch_agents(s.state, client, s.mailer)
        finally:
            client.close()

    return bp


def make_alerts_blueprint() -> func.Blueprint:
    """Mail about poison messages (peeked, never consumed: they stay for the operator) and send the alert
    digests collected since the last mail."""
    bp = func.Blueprint()  # type: ignore[no-untyped-call]

    @bp.function_name("alerts")
    @bp.timer_trigger(arg_name="timer", schedule="%GUESTSYNC_ALERT_SCHEDULE%", run_on_startup=False)
    async def alerts_timer(timer: func.TimerRequest) -> None:
        s = services()
        await alerts.watch_poison(s.state, s.mailer, StoragePoisonQueues(s.settings.storage),
                                  (s.settings.change_poison_queue, s.settings.export_poison_queue))

    return bp


def make_worker_blueprint() -> func.Blueprint:
    """The AD worker: one export message -> one guest's shadow account brought in line; and the reconcile
    timer, which needs AD too (in agent mode it runs on-premises with the worker)."""
    bp = func.Blueprint()  # type: ignore[no-untyped-call]

    @bp.function_name("export_to_ad")
    @bp.queue_trigger(arg_name="msg", queue_name=EXPORT_QUEUE, connection=STORAGE)
    async def export_to_ad(msg: func.QueueMessage) -> None:
        s = services()
        # LDAP is blocking: the export runs on the export threads, each with a pooled connection of its own. A DC
        # outage must not use up the message's dequeues (the host would poison it after 5): it is sent back.
        await s.handle_export_message(msg.get_body(), on_outage=s.send_export_back)

    @bp.function_name("reconcile")
    @bp.timer_trigger(arg_name="timer", schedule="%GUESTSYNC_RECONCILE_SCHEDULE%", run_on_startup=False)
    async def reconcile_timer(timer: func.TimerRequest) -> None:
        s = services()
        report = await reconcile.Reconciler(s.graph, s.state, s.export_queue.send, s.settings.deprovisioning,
                                            directory=s.directory).run()
        log.info("reconcile done: %s", dict(report.actions) or "no drift")

    return bp
