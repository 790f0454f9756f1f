"""A local stand-in for Amazon Bedrock Runtime that enforces real token quotas.

Used by tests, benchmarks and the demo; ``create_simulator_app`` gives an ASGI app.
"""

from gateway.simulator.app import SimulatorApp, create_simulator_app
from gateway.simulator.config import PoolOverride, SimulatorConfig, load_config

__all__ = ["PoolOverride", "SimulatorApp", "SimulatorConfig", "create_simulator_app", "load_config"]
