"""The on-premises agent's own runtime (``guestsync worker``): the export queue consumer, the timer lease,
heartbeats and its service wrappers. The local Functions runner (devtools/runner.py) is for tests and
``guestsync serve`` only."""

from shared.agent.runtime import run_agent

__all__ = ["run_agent"]
