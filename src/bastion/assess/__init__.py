"""Red-team assessments: simulate an attack on a model and measure what it would achieve."""
