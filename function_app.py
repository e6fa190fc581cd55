"""Azure Functions entry point (Python v2 model): bindings only, the logic lives in ``shared/``."""

import os

import azure.functions as func

from shared.functions import make_ingest_blueprint, make_worker_blueprint

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)
app.register_functions(make_ingest_blueprint())

# Worker mode "function": the AD worker runs here too (needs VNet integration reaching the DCs).
# Worker mode "agent" (default): `guestsync worker` runs it on-premises, polling the export queue.
if os.environ.get("GUESTSYNC_WORKER_MODE", "agent").strip().lower() == "function":
    app.register_functions(make_worker_blueprint())
