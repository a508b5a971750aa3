"""One training process of a multi-process run started by torchrun or srun:

    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
        -m tui.worker --run-dir /shared/runs/big --batch-size 64 ...

takes the options of ``cbam-tui run`` (always headless: rank 0 prints the run's lines
and writes the run directory; ``cbam-tui watch DIR`` is its dashboard).
"""

from __future__ import annotations

import sys

from tui import cli


def main() -> None:
    sys.argv = ["cbam-tui", "run", "--headless", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
