"""Training that defends: differentially private training (and adversarial training)."""
