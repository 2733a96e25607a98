"""The sacred experiment's main command (``python run.py with …``, ``run_search.py``, ``run_train.py``, ``vlpeft
run``): it lives in the package, and ``run.py`` imports it (the package never imports the repository-root script).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from vlpeft.config import ex
from vlpeft.demo import run_demo
from vlpeft.runner import run
from vlpeft.sections import key, take

# Set by the command-line entry points: a refusal then ends the process with one line (exit 2) instead of sacred's
# traceback. Python callers of ``ex.run`` (the tests, notebooks) keep the exception.
ONE_LINE_REFUSALS = False


def _refusal(e: BaseException) -> bool:
    """A refusal of the project's own (a bad input, named with its fix): an error class defined in vlpeft or
    write_arrow. Anything else is a bug and keeps its traceback."""
    return type(e).__module__.split(".")[0] in ("vlpeft", "write_arrow")


@ex.main
def main(_config):
    try:
        return _main(dict(_config))
    except Exception as e:
        if not (ONE_LINE_REFUSALS and _refusal(e)):
            raise
        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@dataclass(frozen=True)
class _Stage:
    """What the main command reads to pick the stage (the rest goes to the stage's own section builders)."""

    stage: str = key(shared=True)
    test_only: bool = key(default=False, shared=True)


def _main(config: dict[str, Any]) -> dict[str, str]:
    k = take(_Stage, config)
    if k.stage == "demo" and not k.test_only:
        result = run_demo(config)
    else:
        if k.stage == "demo":  # test_only=True under the demo config: a test of load_path
            config = {**config, "stage": "train"}
        result = run(config)
    # what sacred's closing "Result:" shows: the files a run read its plan from and wrote (None ones left out)
    keep = ("stage", "run_dir", "placement_source", "placement_path", "checkpoint", "submission")
    return {k: str(v) for k, v in vars(result).items() if k in keep and v is not None}


__all__ = ["ONE_LINE_REFUSALS", "ex", "main"]
