"""Open-relay probing of the customers who send through us (issue 11, seed 003)."""
