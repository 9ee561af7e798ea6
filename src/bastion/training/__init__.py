"""Defensive training: adversarial training and differentially private training."""
