"""nondet: run-to-run variability of neural-network training, source by source (README.md)."""

import os

# Idle OpenMP threads (torch's intra-op pool and MKL's GEMMs, both on libgomp) sleep instead of
# spinning. On cores shared with other work, spinning threads made a pack's epoch several times
# slower (docs/benchmarks.md, "Threads on shared cores"); the same threads split the same work
# either way, so the results are the same bits. libgomp reads this when it loads (with torch),
# so the package sets it on import; an OMP_WAIT_POLICY of your own is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
