"""Bastion: secure machine-learning systems end to end."""

from bastion.supplychain.scan import ScanResult, scan

__version__ = "0.1.0"
__all__ = ["ScanResult", "__version__", "scan"]
