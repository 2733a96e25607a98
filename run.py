"""Entry point: ``python run.py with <named configs> key=value ...`` (a sacred experiment, as ViLT/DAS/DVP)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on a hub

from vlpeft.config import ex  # noqa: E402
from vlpeft.runner import run  # noqa: E402


@ex.automain
def main(_config):
    result = run(dict(_config))
    return {k: str(v) for k, v in vars(result).items() if k in ("stage", "run_dir", "placement_path", "submission")}
