"""README.md's command blocks as a user runs them (issue 20): every command of a fenced ``bash`` block is either run
as written in a fresh shell (the small CPU workflow), or listed below with the reason CI cannot run it (a GPU,
real data, released weights) — and then at least resolved by ``run.py print_config`` with the same named configs
and keys, so a renamed key or config fails here. A command added to the README without either fails the test. The
"Paper → command" table's scripts, named configs and DATA.md links are checked the same way."""

from __future__ import annotations

import ast
import fnmatch
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DATA_MD = (ROOT / "DATA.md").read_text()

# The set-up commands: CI runs the test command itself (.ci/run), the demo is the README's first command.
SETUP = ("bash scripts/demo.sh", "bash scripts/test.sh")

# Run as written, in this order, in one fresh shell (README "The usual workflow, small, on a CPU").
SMALL_WORKFLOW = (
    "source .venv/bin/activate && export HF_HUB_OFFLINE=1",
    "python -m write_arrow synthetic --dst tiny/arrows --images 24",
    "python run.py with demo stage=search data_root=tiny/arrows log_dir=tiny/result max_epoch=2",
    "python run.py with demo stage=train data_root=tiny/arrows log_dir=tiny/result max_epoch=1 placement=latest",
    "python run.py with demo test_only=True data_root=tiny/arrows log_dir=tiny/result "
    "load_path=$(ls -t tiny/result/demo_seed0_from_scratch/version_*/checkpoints/last.ckpt | head -n 1) "
    """'data_splits={"vqa": {"test": ["vqav2_rest_val"]}}'""",
    "python -m vlpeft.report tiny/result",
)

_VILT = "a GPU, VQAv2 converted to ARROWS and ViLT's vilt_200k_mlm_itm.ckpt"
_LLAMA2 = "2 GPUs, BoolQ converted to ARROWS and LLaMA-7B weights"
_LLAMA8 = "8 GPUs, BoolQ converted to ARROWS and LLaMA-7B weights"
_BF = "data_root=ARROWS tokenizer=LLAMA_FOLDER num_gpus=8 per_gpu_batchsize=4 plm_dtype=bf16 grad_checkpointing=True"
_DVP = ("data_root=ARROWS tokenizer=LLAMA_FOLDER clip_model=CLIP num_gpus=8 per_gpu_batchsize=16 plm_dtype=bf16 "
        "grad_checkpointing=True strategy=fsdp")
_FEATS = ("""'visual_features={"vqa": "VL-T5/datasets/COCO/clip_features/data_clip_RN101_att", "coco": """
          """"VL-T5/datasets/COCO/clip_features/data_clip_RN101_att", "gqa": "VL-T5/datasets/VG/clip_features/"""
          """data_clip_RN101_att", "nlvr2": "VL-T5/datasets/nlvr/clip_features/data_clip_RN101_att"}'""")
# Not run in CI, with the reason; each is resolved by print_config below.
NOT_RUN = {
    "python run.py with data_root=ARROWS num_gpus=1 task_finetune_vqa_randaug das_search "
    "per_gpu_batchsize=64 load_path=vilt_200k_mlm_itm.ckpt max_epoch=3 skip_num=1": _VILT,
    "python run.py with data_root=ARROWS num_gpus=1 task_finetune_vqa_randaug "
    "per_gpu_batchsize=64 load_path=vilt_200k_mlm_itm.ckpt placement=latest": _VILT,
    "python run.py with das_search_llama_boolq data_root=ARROWS tokenizer=LLAMA_FOLDER per_gpu_batchsize=4 "
    "num_gpus=2": _LLAMA2,
    "python run.py with das_train_llama_boolq data_root=ARROWS tokenizer=LLAMA_FOLDER per_gpu_batchsize=4 "
    "num_gpus=2 placement=latest": _LLAMA2,
    "python run.py with vladapter_single_adapter data_root=ARROWS vl_model=BART_FOLDER tokenizer=BART_FOLDER "
    "num_gpus=8 per_gpu_batchsize=63 " + _FEATS: "8 GPUs, the four datasets, BART and VL-Adapter's CLIP features",
    f"python run.py with das_search_llama_boolq {_BF}": _LLAMA8,
    f"python run.py with das_train_llama_boolq {_BF} placement=latest": _LLAMA8,
    f"python run.py with das_search_llama_boolq {_BF} strategy=fsdp": _LLAMA8,
    f"python run.py with das_train_llama_boolq {_BF} strategy=fsdp placement=latest": _LLAMA8,
    f"python run.py with das_search_llama_boolq {_BF} strategy=deepspeed_stage_2": _LLAMA8 + ", deepspeed",
    f"python run.py with das_train_llama_boolq {_BF} strategy=deepspeed_stage_3 placement=latest":
        _LLAMA8 + ", deepspeed",
    f"python run.py with dvp_search_llama_vqa {_DVP}": "8 GPUs, VQAv2, LLaMA-7B and CLIP weights",
    f"python run.py with dvp_adaption_llama_vqa {_DVP} placement=latest use_adapter=True learning_rate=5e-4":
        "8 GPUs, VQAv2, LLaMA-7B and CLIP weights",
}


def _blocks(text: str, lang: str) -> list[str]:
    """The bodies of the fenced blocks of ``lang`` (those indented inside list items too), dedented."""
    out = []
    for m in re.finditer(rf"^( *)```{lang}\n(.*?)^\1```", text, re.S | re.M):
        indent = len(m.group(1))
        out.append("".join(line[indent:] if line[:indent].isspace() else line
                           for line in m.group(2).splitlines(keepends=True)))
    return out


def _commands(block: str) -> list[str]:
    """The command lines of a bash block: continuation lines joined, comment lines and trailing comments dropped."""
    joined = re.sub(r"\s*\\\n\s*", " ", block)
    cmds = []
    for line in joined.splitlines():
        line = re.sub(r"\s{2,}#.*$", "", line).strip()
        if line and not line.startswith("#"):
            cmds.append(line)
    return cmds


def _all_commands() -> list[str]:
    return [c for b in _blocks(README, "bash") for c in _commands(b)]


def test_every_readme_command_is_run_or_listed():
    cmds = _all_commands()
    known = set(SETUP) | set(SMALL_WORKFLOW) | set(NOT_RUN)
    new = [c for c in cmds if c not in known]
    assert not new, ("README commands neither run by tests/test_readme_commands.py nor listed in its NOT_RUN with "
                     f"the reason CI cannot run them: {new}")
    stale = sorted(known - set(cmds))
    assert not stale, f"listed in tests/test_readme_commands.py but no longer in the README: {stale}"
    assert len(cmds) == len(set(cmds)) == len(known)


HEAVY_MARK = "**Heavy commands.**"
# an UPPER-CASE word that is not an environment variable being set: a path the user fills in
_PLACEHOLDER = re.compile(r"(?<![\w/.-])[A-Z][A-Z0-9_]{3,}(?![\w=])")


def test_only_commands_the_readme_calls_heavy_are_resolved_instead_of_run():
    """The README says, before them, which command blocks are heavy (real data, released weights, GPUs): exactly the
    ``bash`` blocks after its "Heavy commands" paragraph are the resolved ones; every block before it is run as
    written, and only the heavy ones name paths the user must fill in."""
    assert README.count(HEAVY_MARK) == 1
    cut = README.index(HEAVY_MARK)
    before = [c for b in _blocks(README[:cut], "bash") for c in _commands(b)]
    after = [c for b in _blocks(README[cut:], "bash") for c in _commands(b)]
    assert set(before) == set(SETUP) | set(SMALL_WORKFLOW)
    assert set(after) == set(NOT_RUN)
    assert not [c for c in before if _PLACEHOLDER.search(c)], "a command run as written names a placeholder path"
    unmarked = [c for c in after if not _PLACEHOLDER.search(c)]
    assert not unmarked, f"heavy commands without an UPPER-CASE placeholder for the user's data: {unmarked}"
    # the paragraph says the suite resolves them, and by which command
    paragraph = README[cut:README.index("\n\n", cut)]
    assert "print_config" in paragraph and "tests/test_readme_commands.py" in paragraph


def test_the_set_up_commands_are_the_first_block_and_ci_runs_them():
    first = _commands(_blocks(README, "bash")[0])
    assert tuple(first) == SETUP
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()  # CI runs the test command as written
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "_env.sh" in demo and re.search(r"python run\.py with demo\b", demo)
    # the small workflow is one block of its own, in the order above
    assert tuple(_commands(next(b for b in _blocks(README, "bash") if "tiny/arrows" in b))) == SMALL_WORKFLOW


def _fresh_shell(script: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    """``bash -c script`` with nothing of this process's environment but PATH (no venv on it), HOME and
    HF_HUB_OFFLINE, as a new terminal."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(cwd)), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> dict:
    """A copy of the repository (so the runs write nowhere in the checkout), with ``.venv`` the environment this
    suite runs in, and the README's small workflow run in it as written, in one fresh shell."""
    repo = tmp_path_factory.mktemp("readme") / "vlpeft"
    skip = {".git", ".venv", "tests", "bench", "result", "demo_out", "tiny", "__pycache__", ".pytest_cache"}
    shutil.copytree(ROOT, repo, ignore=lambda d, names: [n for n in names if n in skip or n.endswith(".egg-info")])
    venv = Path(sys.prefix)
    assert (venv / "bin" / "activate").is_file(), f"the suite must run in a virtual environment ({venv})"
    (repo / ".venv").symlink_to(venv, target_is_directory=True)
    block = next(b for b in _blocks(README, "bash") if "tiny/arrows" in b)
    proc = _fresh_shell("set -e\n" + block, repo, timeout=1200)
    return dict(repo=repo, proc=proc, out=proc.stdout + proc.stderr)


def test_the_small_workflow_runs_as_written_in_a_fresh_shell(small):
    assert small["proc"].returncode == 0, small["out"][-4000:]
    out, repo = small["out"], small["repo"]
    runs = repo / "tiny" / "result" / "demo_seed0_from_scratch"
    placement = json.loads((runs / "version_0" / "placement.json").read_text())
    assert len(placement["skip"]) == 1  # the demo config skips one block
    assert f"placement=latest → tiny/result/demo_seed0_from_scratch/version_0/placement.json" in out
    assert (runs / "version_1" / "checkpoints" / "last.ckpt").is_file()
    assert re.search(r"search run done: val vqa_score \d+\.\d %", out)
    assert re.search(r"train run done: val vqa_score \d+\.\d %", out)
    # data_splits on the command line: the test run scores the held-out split that has answers
    assert re.search(r"test run done: test vqa_score \d+\.\d %", out)
    dumps = list((repo / "tiny" / "result").glob("demo_seed0_test_last/version_0/vqa_submit_*.json"))
    assert len(dumps) == 1 and len(json.loads(dumps[0].read_text())) > 0
    # the report: one row per run, the score named, in percent
    rows = [line for line in out.splitlines() if line.startswith("| demo_seed0_")]
    assert [r.split("|")[2].strip() for r in rows] == ["search", "train", "test"]
    assert "val vqa_score" in rows[0] and "test vqa_score" in rows[2]


def test_the_python_api_example_runs_on_the_small_workflows_run(small):
    """The README's one ``python`` block, as written, on the small workflow's runs placed where the demo puts its
    own (``demo_out/arrows``, ``demo_out/result/demo_train_*``): the demo itself is a set-up command."""
    assert small["proc"].returncode == 0, small["out"][-4000:]
    (example,) = _blocks(README, "python")
    repo = small["repo"]
    (repo / "demo_out" / "result").mkdir(parents=True)
    (repo / "demo_out" / "arrows").symlink_to(repo / "tiny" / "arrows", target_is_directory=True)
    (repo / "demo_out" / "result" / "demo_train_seed0_from_tiny").mkdir()
    (repo / "demo_out" / "result" / "demo_train_seed0_from_tiny" / "version_0").symlink_to(
        repo / "tiny" / "result" / "demo_seed0_from_scratch" / "version_1", target_is_directory=True)
    (repo / "readme_example.py").write_text(example)
    proc = _fresh_shell("set -e\nsource .venv/bin/activate\npython readme_example.py", repo, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    vocab = set(json.loads((repo / "tiny" / "arrows" / "vqav2_label_vocab.json").read_text()))
    one, two = lines[-2], ast.literal_eval(lines[-1])
    assert one in vocab
    assert isinstance(two, list) and len(two) == 2 and set(two) <= vocab and two[0] == one


# --- resolving what CI cannot run -----------------------------------------------------------------------------

_DRIVER = r"""
import contextlib, io, json, runpy, sys
out = []
for argv in json.load(open(sys.argv[1])):
    sys.argv = list(argv[1:]) if argv[0] == "-m" else list(argv)
    buf, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(err):
        try:
            if argv[0] == "-m":  # python -m MODULE ARGS
                runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception as e:  # noqa: BLE001  (reported to the test, which names the command)
            code = repr(e)
    out.append({"argv": argv, "code": code, "stdout": buf.getvalue(), "stderr": err.getvalue()})
print("@@RESULT@@" + json.dumps(out))
"""


def _print_config_argv(cmd: str) -> list[str]:
    tokens = shlex.split(cmd)
    assert tokens[0] == "python" and tokens[1] in ("run.py", "run_search.py", "run_train.py") and tokens[2] == "with", \
        f"not a run.py command line, so nothing here resolves it: {cmd}"
    return [tokens[1], "print_config", "with", *tokens[3:]]


def _expand(pattern: str) -> list[str]:
    """Brace alternatives as the shell expands them: ``a_{x,y}_b`` → ``a_x_b``, ``a_y_b``."""
    parts = re.split(r"\{([^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def _paper_table() -> list[list[str]]:
    start = README.index("## Paper → command")
    section = README[start:README.index("\n## ", start + 3)]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| paper")]
    # split on the column bars, not on the escaped ones (\|) inside a command
    return [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]


def _table_named_configs() -> list[str]:
    names = []
    for row in _paper_table():
        for code in re.findall(r"`([^`]+)`", row[2]):
            names += _expand(code)
    return names


def _inline_module_commands() -> list[str]:
    """The ``python -m MODULE …`` commands written inline (in backquotes) in README.md and DATA.md, whitespace
    joined (a span may wrap a line)."""
    spans = re.findall(r"`(python -m [^`]+)`", README + "\n" + DATA_MD)
    return sorted({" ".join(s.split()) for s in spans})


def _help_argv(cmd: str) -> list[str]:
    """``-m MODULE [SUBCOMMAND] --help``: the subcommand (or write_arrow's dataset) is the first lower-case word."""
    words = cmd.split()[2:]
    module, rest = words[0], words[1:]
    sub = rest[:1] if rest and re.fullmatch(r"[a-z][a-z0-9_-]*", rest[0]) else []
    return ["-m", module, *sub, "--help"]


# a key typo must fail the resolution: the check would be worthless otherwise
_TYPO = "python run.py with das_search_llama_boolq data_root=ARROWS per_gpu_batchsze=4"


@pytest.fixture(scope="module")
def resolved(tmp_path_factory) -> dict:
    """Every NOT_RUN command and every named config of the paper table through ``run.py print_config``, all in one
    process (one interpreter start-up), each as its own command line."""
    jobs = [_print_config_argv(c) for c in NOT_RUN] + [_print_config_argv(_TYPO)]
    jobs += [["run.py", "print_config", "with", name] for name in _table_named_configs()]
    jobs += [_help_argv(c) for c in _inline_module_commands()]
    path = tmp_path_factory.mktemp("resolve") / "jobs.json"
    path.write_text(json.dumps(jobs))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(path)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(proc.stdout.split("@@RESULT@@", 1)[1])
    return {" ".join(r["argv"]): r for r in results}


def _result(resolved: dict, argv: list[str]) -> dict:
    r = dict(resolved[" ".join(argv)])
    r["stdout"] = re.sub(r"\x1b\[[0-9;]*m", "", r["stdout"])  # sacred colours the modified keys
    return r


@pytest.mark.parametrize("cmd", sorted(NOT_RUN))
def test_each_command_not_run_resolves(cmd, resolved):
    r = _result(resolved, _print_config_argv(cmd))
    assert r["code"] == 0, f"{cmd}\n(not run in CI: {NOT_RUN[cmd]}) does not resolve:\n{r['stderr'][-2000:]}"
    # the named configs and keys took effect: every plain numeric key=value is in the printed config
    for key, value in re.findall(r"(?:^|\s)([a-z_0-9]+)=(\d+)(?=\s|$)", cmd):
        assert re.search(rf"^\s*{key} = {value}\b", r["stdout"], re.M), f"{key}={value} not in print_config of {cmd}"


def test_every_inline_python_m_command_names_a_module_subcommand_and_options_that_exist(resolved):
    """The one-line ``python -m …`` commands of README.md / DATA.md (placeholders for the user's files) are not run;
    their module, subcommand (or dataset) and every ``--option`` they name must exist: ``--help`` of that
    subcommand exits 0 and lists each option."""
    cmds = _inline_module_commands()
    assert {c.split()[2] for c in cmds} >= {"write_arrow", "vlpeft.evaluate", "vlpeft.report", "vlpeft.export",
                                             "vlpeft.peft_io"}
    for cmd in cmds:
        r = _result(resolved, _help_argv(cmd))
        assert r["code"] == 0, f"`{cmd}` (README / DATA.md): {' '.join(_help_argv(cmd))} fails:\n{r['stderr'][-1500:]}"
        for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", cmd):
            assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", r["stdout"]), \
                f"`{cmd}` (README / DATA.md): {option} is not an option of {' '.join(_help_argv(cmd)[1:-1])}"


def test_a_typo_in_such_a_command_fails_to_resolve(resolved):
    r = _result(resolved, _print_config_argv(_TYPO))
    assert r["code"] == 2 and "unknown config key 'per_gpu_batchsze'" in r["stderr"]


def test_the_paper_table_names_scripts_that_take_its_arguments():
    rows = _paper_table()
    assert len(rows) >= 8
    seen = set()
    for row in rows:
        for code in re.findall(r"`([^`]+)`", row[1]):
            if not code.startswith("scripts/"):
                continue
            script, first = code.replace("\\|", "|").split()[:2]
            path = ROOT / script
            assert path.is_file(), f"paper table: {script} does not exist"
            # the experiment argument must be one the script's `case` accepts
            labels = [p for line in re.findall(r"^\s*([\w*|.-]+)\)", path.read_text(), re.M) for p in line.split("|")]
            for choice in first.split("|"):
                assert any(fnmatch.fnmatchcase(choice, p) for p in labels if p != "*"), \
                    f"paper table: {script} does not accept {choice!r} (its cases: {labels})"
            seen.add(script)
    assert seen == {f"scripts/{s}.sh" for s in ("das", "das_meter", "das_lm", "das_lavin", "dvp", "vl_adapter",
                                                "routing")}


def test_the_paper_table_says_where_each_weight_is_published():
    """Each row names its weights by release name and says where each is published, with a link to the file or
    model page (a row may refer to the row above: "as VL-Adapter", "as above")."""
    for row in _paper_table():
        weights = row[4]
        assert " — " in weights, f"paper table: no 'release name — where published' in {row[0]}"
        linked = re.findall(r"\]\((https://[^)\s]+)\)", weights)
        assert linked or weights.startswith("as "), f"paper table: {row[0]} links no published weights"
        for url in linked:
            assert re.match(r"https://(github\.com/[\w.-]+/[\w.-]+/releases/download/|huggingface\.co/[\w.-]+/[\w.-]+$|"
                            r"openaipublic\.azureedge\.net/clip/models/|forms\.gle/|drive\.google\.com/)", url), url
    text = "\n".join(r[4] for r in _paper_table())
    for name in ("vilt_200k_mlm_itm.ckpt", "meter_clip16_288_roberta_pretrain.ckpt", "ViT-B-16.pt", "LLaMA-7B",
                 "facebook/bart-base", "google-t5/t5-base", "google-bert/bert-base-uncased",
                 "google/vit-base-patch16-224-in21k", "openai-community/gpt2", "FacebookAI/roberta-base",
                 "clip_features"):
        assert name in text, f"paper table: the weights {name} are not named"


def test_every_named_config_of_the_paper_table_resolves(resolved):
    names = _table_named_configs()
    assert {"das_search", "dvp_adaption_llama_snli_ve", "vlpet_middle_y_t5", "routing_vit_gpt2_lora",
            "vladapter_video_single_prompt", "vlpet_large_video"} <= set(names)
    bad = [n for n in names if _result(resolved, ["run.py", "print_config", "with", n])["code"] != 0]
    assert not bad, f"paper table: named configs that do not resolve: {bad}"


def test_readme_links_into_data_md_land_on_an_anchor():
    links = re.findall(r"\]\(DATA\.md#([\w-]+)\)", README)
    assert len(links) >= 10
    anchors = set(re.findall(r'<a id="([\w-]+)"></a>', DATA_MD))
    missing = sorted(set(links) - anchors)
    assert not missing, f"README links to DATA.md anchors that do not exist: {missing}"


def test_the_user_documents_point_to_no_document_outside_the_repository():
    # the project's design notes and specs are not shipped: README, DATA.md, bench/README.md and the scripts a user
    # reads must not send them there
    outside = re.compile(r"\.\./shared|/work/|seeds\.md|spec(s/| §)|ARCHITECTURE\.md|contracts\.md|"
                         r"search_algorithms\.md")
    docs = [ROOT / "README.md", ROOT / "DATA.md", ROOT / "bench" / "README.md", *sorted((ROOT / "scripts").iterdir()),
            *sorted((ROOT / "write_arrow").glob("*.py"))]
    found = [f"{p.relative_to(ROOT)}:{i}" for p in docs if p.is_file()
             for i, line in enumerate(p.read_text().splitlines(), 1) if outside.search(line)]
    assert not found, f"references to documents outside the repository: {found}"
