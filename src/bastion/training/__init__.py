"""Defensive training: models that hold up against the attacks in `bastion.assess`."""
