"""Entry point: ``python run.py with <named configs> key=value ...`` (a sacred experiment, as ViLT/DAS/DVP)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on a hub

from vlpeft.config import ex  # noqa: E402


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
        import sys

        print(f"error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _main(config):
    if config["stage"] == "demo" and not config["test_only"]:
        from vlpeft.demo import run_demo  # the demo chains the stages; the runner knows nothing of it

        result = run_demo(config)
    else:
        from vlpeft.runner import run

        if config["stage"] == "demo":  # test_only=True under the demo config: a test of load_path
            config["stage"] = "train"
        result = run(config)
    # what sacred's closing "Result:" shows: the files a run read its plan from and wrote (None ones left out)
    keep = ("stage", "run_dir", "placement_source", "placement_path", "checkpoint", "submission")
    return {k: str(v) for k, v in vars(result).items() if k in keep and v is not None}


if __name__ == "__main__":
    import sys

    from vlpeft.entrypoints import run_command_line

    run_command_line(sys.argv)
