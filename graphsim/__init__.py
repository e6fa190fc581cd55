"""Local Microsoft Graph simulator for tests and the demo."""

from graphsim.server import GraphSimulator

__all__ = ["GraphSimulator"]
