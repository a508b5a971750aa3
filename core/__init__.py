"""cbam-tui's training side: model, data, plan, trainer and run directory.

Nothing here imports a UI toolkit; importing this package imports no torch either,
so the CLI can answer ``--help`` at once.
"""

from __future__ import annotations

__version__ = "0.1.0"
