"""Ray job entrypoint for sweeps (thin: parse arguments, call weaktok).

    ray job submit --working-dir . -- python ray_jobs/sweep.py --config demo \\
        --space cluster/sweeps/default.yaml --out /shared/sweeps/s1 data.shards=/shared/shards/demo
"""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the working dir Ray ships is the repo root

from weaktok.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
