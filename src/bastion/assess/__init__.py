"""Red-team simulations: measure what an attacker could do to a model (membership, inversion)."""
