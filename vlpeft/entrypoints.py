"""The DAS repo's entry points, ``run_search.py`` and ``run_train.py``: the same sacred experiment as ``run.py``
with the stage forced, so a search command line can never silently become a train run (or the reverse)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Sequence

from vlpeft import experiment  # registers the experiment's main command
from vlpeft.config import ALL_KEYS, NAMED_CONFIGS, ConfigError, ex, unknown_key_error

_SCRIPT = {"search": "run_search.py", "train": "run_train.py"}


def _named_config_stage(name: str) -> object:
    if name in NAMED_CONFIGS:
        return NAMED_CONFIGS[name].get("stage")
    if Path(name).is_file():  # sacred also takes a config file as a "named config"
        from sacred.config import load_config_file

        return (load_config_file(name) or {}).get("stage")
    return None


def forced_stage_argv(stage: str, argv: Sequence[str]) -> list[str]:
    """``argv`` with ``stage=<stage>`` added; ConfigError when the command line asks for another stage.

    Refused: ``stage=<anything else>`` on the command line; a named config (or config file) that sets the other
    stage (``das_train`` / ``dvp_adaption_*`` for a search, ``das_search`` / ``dvp_search_*`` for a train);
    ``test_only=True`` for a search. A named config with another stage value (``demo``) gets ``stage`` replaced.
    """
    from docopt import docopt
    from sacred.arg_parser import get_config_updates

    other = "train" if stage == "search" else "search"
    script = _SCRIPT[stage]
    argv = [str(a) for a in argv]
    args = docopt(ex.get_usage()[2], argv[1:], default_help=False)  # parsed as sacred parses it
    config_updates, named = get_config_updates(args["UPDATE"])
    if "stage" in config_updates and config_updates["stage"] != stage:
        raise ConfigError(f"{script} runs the {stage} stage, but the command line says stage="
                          f"{config_updates['stage']}; drop it, or use {_SCRIPT.get(other, 'run.py')} / run.py")
    for name in named:
        if _named_config_stage(name) == other:
            raise ConfigError(f"{script} runs the {stage} stage, but the named config {name!r} sets stage={other}; "
                              f"use {_SCRIPT[other]} for it, or drop {name!r}")
    if stage == "search" and config_updates.get("test_only") is True:
        raise ConfigError("run_search.py runs a search; evaluate a checkpoint with "
                          "run_train.py (or run.py) with test_only=True load_path=<checkpoint>")
    if "with" not in argv[1:]:
        return argv + ["with", f"stage={stage}"]
    i = argv.index("with", 1)
    return argv[: i + 1] + [f"stage={stage}"] + argv[i + 1:]


def check_command_line(argv: Sequence[str]) -> None:
    """Unknown config keys and named configs, named with the closest known one, before sacred sees them (sacred
    would say "Conflicting configuration values" / raise a KeyError)."""
    import difflib

    from docopt import DocoptExit, docopt
    from sacred.arg_parser import get_config_updates

    try:
        args = docopt(ex.get_usage()[2], [str(a) for a in argv[1:]], default_help=False)
    except DocoptExit:
        return  # not a "with" command line (help, print_config, …): sacred handles it
    updates, named = get_config_updates(args["UPDATE"] or [])
    for key in updates:
        if key not in ALL_KEYS and not key.startswith("_"):
            raise unknown_key_error(key)
    for name in named:
        if name not in NAMED_CONFIGS and not Path(name).is_file():
            close = difflib.get_close_matches(name, sorted(NAMED_CONFIGS), n=1)
            hint = f"did you mean {close[0]!r}?" if close else "see vlpeft/config.py for the named configs"
            raise ConfigError(f"unknown named config {name!r} ({hint})")


def run_command_line(argv: Sequence[str], stage: str | None = None):
    """``run.py`` / ``run_search.py`` / ``run_train.py``: check the command line, then hand it to sacred; errors
    about it go to stderr as one line (exit 2)."""
    argv = [str(a) for a in argv]
    try:
        check_command_line(argv)
        if stage is not None:
            argv = forced_stage_argv(stage, argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    experiment.ONE_LINE_REFUSALS = True
    return experiment.ex.run_commandline(argv)


def main(stage: str, argv: Sequence[str] | None = None):
    """Run the experiment (``vlpeft.experiment``) with ``stage`` forced (errors about the stage go to stderr, exit 2)."""
    return run_command_line(list(sys.argv if argv is None else argv), stage)
