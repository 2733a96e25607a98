"""Tasks are an axis: no code outside ``vlpeft/tasks/<task>.py`` (and the named configs) knows a task by name, and a
new task is one file plus its registration, which runs through ``run.py`` (search, then train on its placement)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from task_axis_scan import import_cycles, scan_package, task_name_uses
from vlpeft.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]
# where a task name belongs: its own file, and the named configs (data: loss_names={"vqa": 1} of a named config)
OWN_FILES = [f"vlpeft/tasks/{n}.py" for n in TASKS.names()] + ["vlpeft/named_configs/"]
NAMED_CONFIG_CALLS = ("_loss_names",)  # config.py's named configs build their loss_names with it
# strings equal to a task name that are not task names: (file, name, why)
NOT_TASK_NAMES = [
    ("vlpeft/data/datasets.py", "caption", "the arrow column 'caption' (COCO / F30K files)"),
    ("vlpeft/tasks/caption_eval.py", "caption", "pycocoevalcap's record field 'caption'"),
    ("vlpeft/tasks/dumps.py", "caption", "the COCO results file's field 'caption'"),
]
# dataset keys that coincide with task names (the dataset axis: the 'vqa' files, not the 'vqa' task)
DATASET_AXIS = ["vlpeft/data/splits.py", "vlpeft/data/features.py"]


def _remaining() -> dict[str, list]:
    hits = scan_package(ROOT / "vlpeft", TASKS.names(), OWN_FILES + DATASET_AXIS, NAMED_CONFIG_CALLS)
    allowed = {(f, n) for f, n, _ in NOT_TASK_NAMES}
    return {f: [h for h in hs if (f, h[2]) not in allowed] for f, hs in hits.items()
            if any((f, h[2]) not in allowed for h in hs)}


def test_no_task_name_is_compared_outside_its_own_file():
    left = _remaining()
    assert left == {}, "task names compared / used as keys outside vlpeft/tasks/<task>.py:\n" + "\n".join(
        f"  {f}: {hs}" for f, hs in left.items())


def test_the_scan_finds_every_kind_of_task_name_use():
    """The old code's patterns (six kinds, a named tuple of task names included) are found; names that are not
    tasks, and named-config data, not."""
    src = textwrap.dedent('''
        if task == "vqa": pass
        if t.name in ("irtr", "itm"): pass
        HEADS = {"gqa": ("gqa_classifier",)}
        x = DATASETS["nlvr2"]
        y = config["loss_names"].get("snli_ve", 0)
        z = dict(boolq=1)
        ok = task == "vqa_gen" or name == f"{task}_loss"
        cfg = _loss_names({"scienceqa": 1})
        CLASSIFIED = ("vqa", "gqa")
        if t.name in CLASSIFIED: pass
        for t in CLASSIFIED: pass
    ''')
    hits = task_name_uses(src, TASKS.names(), NAMED_CONFIG_CALLS)
    assert [(line, n) for line, _, n in hits] == [(2, "vqa"), (3, "irtr"), (3, "itm"), (4, "gqa"), (5, "nlvr2"),
                                                  (6, "snli_ve"), (7, "boolq"), (11, "gqa"), (11, "vqa")]


def test_every_exempt_name_is_still_needed():
    """The allow-lists stay honest: each entry still matches something (else it hides a future comparison)."""
    for f, n, _ in NOT_TASK_NAMES:
        assert any(h[2] == n for h in task_name_uses((ROOT / f).read_text(), TASKS.names())), (f, n)


def test_the_tasks_package_is_in_no_import_cycle(tmp_path):
    """``tasks/_base.py`` no longer imports ``tasks/generative.py`` back (the cycle of issue 17); function-local
    imports count, as the scan of a two-module package that hides its cycle in a function shows."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.b import g\n")
    (pkg / "b.py").write_text("def g():\n    from pkg.a import x\n    return x\n")
    assert import_cycles(pkg) == [["pkg.a", "pkg.b"]]
    tangled = [c for c in import_cycles(ROOT / "vlpeft") if any(m.startswith("vlpeft.tasks") for m in c)]
    assert tangled == []


def test_evaluation_subcommands_are_the_tasks_official_scorers():
    """``python -m vlpeft.evaluate <task>`` exists for every task that declares ``Task.official``, and runs the
    scorer it names (a new task adds its subcommand from its own file)."""
    import vlpeft.evaluate as ev

    declared = {n: TASKS.build(n).official for n in TASKS.names() if TASKS.build(n).official}
    assert set(declared) >= {"vqa", "gqa", "snli_ve", "nlvr2"}
    subcommands = next(a for a in ev.build_parser()._actions if a.dest == "command").choices
    assert set(subcommands) == set(declared) | {"fill-vqa"}
    assert all(callable(getattr(ev, o.score, None)) for o in declared.values())


def test_a_checkpoint_head_of_another_width_names_its_tasks_label_size_key():
    """The fix named for a head that does not fit comes from the task that owns the head (ScienceQA's too)."""
    from torch import nn

    from vlpeft.checkpoint import _shape_hint

    sized = {n: TASKS.build(n) for n in TASKS.names() if TASKS.build(n).answer_vocab_option}
    assert {"vqa", "gqa", "scienceqa"} <= set(sized)
    for t in sized.values():
        key = t.option_keys[t.answer_vocab_option][0]
        hint = _shape_hint(nn.Module(), [], f"heads.{t.heads[0]}.3.weight")
        assert f"set {key} to the checkpoint's label count" in hint
        assert key not in _shape_hint(nn.Module(), [], f"heads.{t.heads[0]}.0.weight")  # the input layer: not it


_TOY_RUN = r'''
import json, sys
sys.path.insert(0, {tests!r})
import toy_task  # (one file: registers the task and its dataset before the config is read)
import run
from write_arrow.synthetic import write_synthetic

write_synthetic({arrows!r}, seed=0, images=16, variants=("vqa",))
common = dict(data_root={arrows!r}, log_dir={log!r}, datasets=["toy_qtype"], loss_names={{"toy_qtype": 1, "vqa": 0}},
              per_gpu_batchsize=16, batch_size=16, max_epoch=1, das_epoch=2, das_turn=1, num_workers=0)
quiet = {{"--loglevel": "ERROR"}}
s = run.ex.run(named_configs=["demo"], config_updates=dict(common, stage="search", max_epoch=2), options=quiet)
t = run.ex.run(named_configs=["demo"], config_updates=dict(common, stage="train", placement="latest"), options=quiet)
best = sorted(p for p in __import__("pathlib").Path(t.result["run_dir"]).glob("checkpoints/best*.ckpt"))[0]
e = run.ex.run(named_configs=["demo"], config_updates=dict(common, stage="train", test_only=True,
               load_path=str(best)), options=quiet)
sub = str(e.result["submission"])
print("RESULT " + json.dumps({{"search": s.result["placement_path"], "train": t.result["run_dir"],
                               "test": e.result["run_dir"], "submission": sub, "classes": toy_task.CLASSES,
                               "rule": [toy_task.question_type(r["text"]) for r in json.load(open(sub))]}}))
'''


def test_a_toy_task_in_one_file_runs_search_and_train_through_run_py(tmp_path):
    """tests/toy_task.py (a dataset and a Task in one file) registers before the config is read; run.py then takes
    loss_names={"toy_qtype": 1} through DAS search (test_vilt_small), train on placement.json, and test."""
    code = _TOY_RUN.format(tests=str(ROOT / "tests"), arrows=str(tmp_path / "arrows"), log=str(tmp_path / "result"))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    # every run's closing line reports the task's own score (no list of task metrics elsewhere to extend)
    assert "train run done: val toy_qtype_accuracy" in proc.stdout
    assert "test run done: test toy_qtype_accuracy" in proc.stdout
    placement = json.loads(Path(result["search"]).read_text())
    assert placement["method"] == "das" and len(placement["skip"]) == 1
    # the train run trained and saved the task's own head, under its own name, on the searched placement
    train_dir = Path(result["train"])
    run_info = json.loads((train_dir / "run.json").read_text())
    assert Path(run_info["placement_source"]) == Path(result["search"])
    state = torch.load(next(train_dir.glob("checkpoints/best*.ckpt")), map_location="cpu",
                       weights_only=True)["state_dict"]
    assert state["heads.toy_qtype_classifier.3.weight"].shape[0] == result["classes"]
    train_metrics = json.loads((train_dir / "metrics.json").read_text())
    assert {"toy_qtype_loss", "toy_qtype_accuracy"} <= set(train_metrics["val"])
    # the test run wrote the task's dump (the run's submission): every test question, labelled by the rule, and the
    # reported accuracy is the dump's
    dump = Path(result["submission"])
    assert dump.name.startswith("toy_qtype_predict_")
    rows = json.loads(dump.read_text())
    assert len({r["qid"] for r in rows}) == len(rows) > 0
    assert [r["label"] for r in rows] == result["rule"]
    assert len({r["label"] for r in rows}) > 1  # the rule splits the synthetic questions
    assert all(0 <= r["pred"] < result["classes"] for r in rows)
    test_metrics = json.loads((Path(result["test"]) / "metrics.json").read_text())["test"]
    accuracy = sum(r["pred"] == r["label"] for r in rows) / len(rows)
    assert test_metrics["toy_qtype_accuracy"] == pytest.approx(accuracy)
