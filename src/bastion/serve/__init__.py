"""`bastion serve`: a hardened gateway in front of a model (API keys, limits, output
hardening, an extraction monitor, an audit trail)."""

from bastion.serve.app import GatewayConfig, create_app

__all__ = ["GatewayConfig", "create_app"]
