"""Red-team simulations: measure how far an attack gets against a model."""
