"""nondet's Hydra launcher plugin: hydra-submitit-launcher's launchers, sweep-aware (launcher.py)."""
