"""Local Microsoft Graph simulator for tests and the demo."""

from devtools.graphsim.server import GraphSimulator

__all__ = ["GraphSimulator"]
