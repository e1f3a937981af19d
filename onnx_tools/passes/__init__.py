"""Graph rewrites, one per module. Each takes the model (mutated in place) and what it needs."""
