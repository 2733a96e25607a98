"""Entry point: ``python run.py with <named configs> key=value ...`` (a sacred experiment, as ViLT/DAS/DVP).

The experiment and its main command live in the package (``vlpeft.experiment``); this script only starts them.
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on a hub

from vlpeft.entrypoints import run_command_line  # noqa: E402
from vlpeft.experiment import ex, main  # noqa: E402,F401  (``run.ex``: what tests and notebooks drive)

if __name__ == "__main__":
    run_command_line(sys.argv)
