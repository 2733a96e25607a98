"""Entry point: ``python run.py with <named configs> key=value ...`` (a sacred experiment, as ViLT/DAS/DVP)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on a hub

from vlpeft.config import ex  # noqa: E402


@ex.main
def main(_config):
    config = dict(_config)
    if config["stage"] == "demo" and not config["test_only"]:
        from vlpeft.demo import run_demo  # the demo chains the stages; the runner knows nothing of it

        result = run_demo(config)
    else:
        from vlpeft.runner import run

        if config["stage"] == "demo":  # test_only=True under the demo config: a test of load_path
            config["stage"] = "train"
        result = run(config)
    return {k: str(v) for k, v in vars(result).items() if k in ("stage", "run_dir", "placement_path", "submission")}


if __name__ == "__main__":
    import sys

    from vlpeft.entrypoints import run_command_line

    run_command_line(sys.argv)
