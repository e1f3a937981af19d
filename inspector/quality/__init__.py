"""How good the explanations are: synthetic surface defects with exact masks (synthetic), the metrics
against those masks (metrics), and `inspector evaluate` (evaluate)."""
