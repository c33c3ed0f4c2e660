"""Runnable examples of measuring your own model, data and training loop (README: "Measure your own model")."""
