"""The shell scripts a user runs from a fresh shell: each enters the project's environment itself, parses, and
finds the checkpoint to test under the log folder the user named (not a hard-coded ``result/``)."""
import re
import subprocess
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
USER_SCRIPTS = sorted(p for p in SCRIPTS.glob("*.sh") if p.name != "_env.sh")


@pytest.mark.parametrize("script", USER_SCRIPTS, ids=lambda p: p.name)
def test_script_parses_and_enters_the_environment(script):
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text()
    if re.search(r"(^|[\s;(])python3? ", text, re.M):
        # a bare `python` in a fresh shell is the system one, without sacred / torch
        assert "_env.sh" in text, f"{script.name} calls python without sourcing scripts/_env.sh"
    assert "ls -t result/" not in text and "ls -t ./result/" not in text, \
        f"{script.name} looks for checkpoints under result/ whatever log_dir says"


@pytest.mark.parametrize("args,expected", [
    ([], "result"),
    (["max_epoch=1", "log_dir=/tmp/my runs"], "/tmp/my runs"),
    (["log_dir=a", "seed=1", "log_dir=b"], "b"),  # the last one wins, as sacred's key=value updates
])
def test_log_dir_of_the_script_arguments(args, expected):
    # define the function only (sourcing the whole _env.sh would install / cd)
    env_sh = (SCRIPTS / "_env.sh").read_text()
    fn = env_sh[env_sh.index("vlpeft_log_dir() {"):]
    out = subprocess.run(["bash", "-c", fn + '\nvlpeft_log_dir "$@"', "x", *args],
                         check=True, capture_output=True, text=True).stdout
    assert out == expected + "\n"
