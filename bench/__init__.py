"""The benchmarks (``make bench``): scripts that print figures, never timed tests.

- ``python -m bench``: all of them, one table into bench/results.md;
- ``python -m bench.service``: the Jobs service under a simulated fleet;
- ``python -m bench.memory``: memory per job type and board profile;
- ``python -m bench.delta``: delta OTA figures;
- ``python -m bench.latency``: create-job → IN_PROGRESS, the agent against awsiotsdk.

Run from the checkout (``make bench`` does). They drive jobsctl and the test harness
(tests/harness: the fault proxy counts bytes on the wire); the ``ota_*.py`` and
``delta_apply.py`` here are MicroPython programs the Unix port runs.
"""

import sys

from jobsctl.checkout import ROOT

if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))
