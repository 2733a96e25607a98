"""Console commands installed with the package: ``vlpeft <command> ...`` and ``vlpeft-run``.

They hand over to the same entry points as the repository's own commands, which stay as they are:

| console command                | same as                                     |
|--------------------------------|---------------------------------------------|
| ``vlpeft-run with ...``        | ``python run.py with ...``                  |
| ``vlpeft run with ...``        | ``python run.py with ...``                  |
| ``vlpeft search with ...``     | ``python run_search.py with ...``           |
| ``vlpeft train with ...``      | ``python run_train.py with ...``            |
| ``vlpeft evaluate ...``        | ``python -m vlpeft.evaluate ...``           |
| ``vlpeft report ...``          | ``python -m vlpeft.report ...``             |
| ``vlpeft export ...``          | ``python -m vlpeft.export ...``             |
| ``vlpeft convert ...``         | ``python -m vlpeft.peft_io ...`` (peft)     |
| ``vlpeft write-arrow ...``     | ``python -m write_arrow ...``               |
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

# command → (module, how it is called): "sacred" commands take the whole argv (sacred reads argv[0] as the program),
# "argparse" ones the arguments after the command.
COMMANDS = {
    "run": ("vlpeft.entrypoints", "sacred", None),
    "search": ("vlpeft.entrypoints", "sacred", "search"),
    "train": ("vlpeft.entrypoints", "sacred", "train"),
    "evaluate": ("vlpeft.evaluate", "argparse", None),
    "report": ("vlpeft.report", "argparse", None),
    "export": ("vlpeft.export", "argparse", None),
    "convert": ("vlpeft.peft_io", "argparse", None),
    "write-arrow": ("write_arrow.__main__", "argparse", None),
}


def usage() -> str:
    return ("usage: vlpeft {" + ",".join(COMMANDS) + "} ...\n"
            "  run / search / train take sacred's command line (`vlpeft run with <named configs> key=value`);\n"
            "  the others take their own options (`vlpeft <command> --help`).")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"error: unknown command {cmd!r}; use one of {', '.join(COMMANDS)}\n{usage()}", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as run.py: weights come from local paths
    module, kind, stage = COMMANDS[cmd]
    import importlib

    mod = importlib.import_module(module)
    if kind == "sacred":
        mod.run_command_line([f"vlpeft {cmd}", *rest], stage)
        return 0
    return int(mod.main(rest) or 0)


def run(argv: Sequence[str] | None = None) -> int:
    """``vlpeft-run``: ``python run.py`` as an installed command."""
    return main(["run", *(sys.argv[1:] if argv is None else argv)])
