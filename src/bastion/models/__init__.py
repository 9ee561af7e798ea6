"""Models: safe loading now; classifier adapters come with `bastion assess`."""

from bastion.models.loading import load

__all__ = ["load"]
