"""Aggregation of a sweep into the paper's tables and figures, and comparison of two sweeps.

    python -m analysis SWEEP_DIR [--csv FILE --latex FILE --figures DIR --cka]
    python -m analysis.compare DIR_A DIR_B [--metric test_accuracy --paired]

From Python (the Hydra end-of-sweep callback):

    from analysis import summarize, sweep_status
    print(summarize(sweep_dir))             # markdown table + missing / failed runs
    status = sweep_status(sweep_dir)        # finished / failed / unfinished / corrupt counts
    sys.exit(0 if status.ok else 1)

Only numpy, pandas and omegaconf are imported here (the end of every sweep prints the table);
scipy (compare), torch (CKA) and matplotlib (figures) are imported by the modules that need them.
"""

from analysis.load import MixedTestSetError, Sweep, SweepStatus, load_sweep, sweep_status
from analysis.metrics import COLUMNS, group_metrics
from analysis.tables import summarize, summary_frame

__all__ = [
    "COLUMNS",
    "MixedTestSetError",
    "Sweep",
    "SweepStatus",
    "group_metrics",
    "load_sweep",
    "summarize",
    "summary_frame",
    "sweep_status",
]
