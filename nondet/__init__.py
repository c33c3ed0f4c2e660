"""nondet: run-to-run variability of neural-network training, source by source (README.md)."""
