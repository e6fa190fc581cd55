"""Azure Functions entry point (Python v2 model): bindings only; the logic lives in ``shared/``.

Worker mode ``agent`` (default): the AD worker runs on-premises as ``guestsync worker``.
Worker mode ``function``: the AD worker is a queue-triggered function here (needs VNet integration).
"""

from shared.functions import create_app_from_environment

app = create_app_from_environment()
