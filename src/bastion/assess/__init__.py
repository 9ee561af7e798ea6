"""Red-team assessments: simulate an attack on a model and measure how far it holds."""
