"""Issue 17 item 3: a typed config that is read.

- every value check fires before a model is built and before a run folder (``version_N/``) is reserved;
- each registry entry with settings declares its keys and defaults once, on its dataclass's fields;
- the axes are resolved once per run;
- the flat dict is read by the front end and the section builders only (a source scan; the modules still
  pending are listed, with who owns them).
"""

from __future__ import annotations

import ast
import dataclasses
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run as run_py  # noqa: E402  (registers the sacred main)
from vlpeft import config as C  # noqa: E402
from vlpeft.backbones import BACKBONES  # noqa: E402
from vlpeft.backbones._settings import VlSeq2SeqSettings  # noqa: E402
from vlpeft.backbones.vilt import ViltSpec  # noqa: E402
from vlpeft.backbones.vl_seq2seq import VLSeqConfig  # noqa: E402
from vlpeft.data.section import DataSection  # noqa: E402
from vlpeft import api, runner  # noqa: E402
from vlpeft.lightning import VLPeftModule  # noqa: E402
from vlpeft.pet import PRESETS  # noqa: E402
from vlpeft.search import SEARCHES  # noqa: E402
from vlpeft.tasks import TaskSettings  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

QUIET = {"--loglevel": "ERROR"}


@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("typed_arrows")
    write_synthetic(root, seed=0, images=16, variants=("vqa",))
    return root


class _Built(Exception):
    """Raised where a model would be built: a check that reaches it fired too late."""


@pytest.fixture
def no_build(monkeypatch):
    def refuse(*a, **k):
        raise _Built("a model was built before the config was checked")

    monkeypatch.setattr(BACKBONES, "build", refuse)
    monkeypatch.setattr(VLPeftModule, "__init__", refuse)


def _run(arrows: Path, log_dir: Path, **updates):
    base = dict(data_root=str(arrows), log_dir=str(log_dir), per_gpu_batchsize=8, batch_size=8, num_workers=0,
                max_epoch=1, stage="train", das_warmup_epoch=0)
    return run_py.ex.run(named_configs=["demo"], config_updates={**base, **updates}, options=QUIET)


def _folders(log_dir: Path) -> list[Path]:
    return sorted(log_dir.rglob("version_*")) if log_dir.exists() else []


CHECKS = [
    (dict(per_gpu_batchsize=0), r"per_gpu_batchsize=0: set it to a positive integer"),
    (dict(per_gpu_batchsize=8, batch_size=12), r"batch_size=12 must be a positive multiple of .* = 8×1 = 8"),
    (dict(num_gpus=0, cpu_devices=0), r"cpu_devices=0 must be a positive integer"),
    (dict(val_check_interval=1.5), r"val_check_interval=1.5 must be a fraction of an epoch in \(0, 1\]"),
    (dict(stage="search", max_epoch=1, das_warmup_epoch=1, das_epoch=3),
     r"max_epoch=1 <= das_warmup_epoch=1: .*would run no round; set max_epoch > 1"),
    (dict(stage="search", max_epoch=3, das_warmup_epoch=2, das_epoch=2), r"das_epoch=2 <= das_warmup_epoch=2"),
]


@pytest.mark.parametrize("updates, words", CHECKS, ids=["per_gpu_batchsize", "batch_divisibility", "cpu_devices",
                                                       "val_check_interval", "search_no_round", "das_epoch"])
def test_value_checks_fire_before_any_build_and_any_run_folder(arrows, tmp_path, no_build, updates, words):
    log = tmp_path / "runs"
    with pytest.raises(C.ConfigError, match=words):
        _run(arrows, log, **updates)
    assert _folders(log) == []  # no version_N/ reserved (and none left behind)


def test_the_demo_checks_its_search_stage_before_its_first_stage(arrows, tmp_path, no_build):
    # the demo trains a stand-in pre-training first; a search that would run no round must stop it before that
    log = tmp_path / "runs"
    with pytest.raises(C.ConfigError, match=r"max_epoch=1 <= das_warmup_epoch=1"):
        _run(arrows, log, stage="demo", max_epoch=1, das_warmup_epoch=1, das_epoch=3)
    assert _folders(log) == []


def test_a_valid_config_reaches_the_build(arrows, tmp_path, no_build):
    # the fixture does stop a build: a good config gets there, past every check above
    with pytest.raises(_Built):
        _run(arrows, tmp_path / "runs")


def test_axes_are_resolved_once_per_run(arrows, tmp_path, monkeypatch):
    calls = []
    real = C.resolve_axes

    def counted(config):
        calls.append(1)
        return real(config)

    monkeypatch.setattr(C, "resolve_axes", counted)
    r = _run(arrows, tmp_path / "runs", max_steps=1)
    assert Path(r.result["run_dir"]).is_dir()
    assert len(calls) == 1


def _registry_entries():
    for reg in (BACKBONES, PRESETS, SEARCHES):
        for name in reg.names():
            if not name.startswith("test_"):  # tiny test entries take their family's settings
                yield f"{reg.kind}:{name}", reg.get(name)


ENTRIES = dict(_registry_entries())
# Families whose builders still read the flat dict (their settings dataclass declares the keys and defaults only)
PENDING_FLAT_BUILDERS: set[str] = set()


@pytest.mark.parametrize("label", sorted(ENTRIES))
def test_every_entry_declares_its_keys_on_one_settings_dataclass(label):
    entry = ENTRIES[label]
    spec = getattr(entry, "spec", None)
    assert spec is not None and dataclasses.is_dataclass(spec), f"{label} is registered with a hand-written key dict"
    if getattr(entry, "flat_builder", False):
        assert label in PENDING_FLAT_BUILDERS, f"{label}'s builder must take its settings, not the flat dict"
    fields = {f.metadata.get("key") or f.name: f for f in dataclasses.fields(spec)}
    for k, default in entry.keys.items():
        assert k in fields, f"{label} declares {k!r} outside its settings dataclass"
        # written once: not again in the base config or the added keys, and the run's default is the field's
        assert k not in C.BASE_CONFIG and k not in C.NEW_KEYS, f"{label}: {k!r}'s default is written twice"
        assert C.DEFAULTS[k] == default


@pytest.mark.parametrize("reg, name, settings, key, value", [
    (PRESETS, "lora", "LoraSettings", "lora_r", 4),
    (BACKBONES, "vl_bart", "VlSeq2SeqSettings", "vl_grid", 3),
    (BACKBONES, "vl_t5", "VlSeq2SeqSettings", "vis_feat_dim", 16),
])
def test_a_typed_builder_gets_its_settings_not_the_flat_dict(monkeypatch, reg, name, settings, key, value):
    seen = []
    entry = reg.get(name)
    spy = dataclasses.replace(entry, build=lambda s: seen.append(s))  # records what the builder gets, builds nothing
    monkeypatch.setitem(reg._entries, name, spy)
    reg.build(name, {**C.DEFAULTS, key: value})
    assert type(seen[0]).__name__ == settings and getattr(seen[0], key) == value


def test_vl_seq2seq_settings_carry_the_shared_keys_its_config_reads():
    # VLSeqConfig reads the base config's tokenizer / transform keys and clip_plm's cache keys: the settings carry them
    flat = {**C.DEFAULTS, "vl_config": "test_vl_t5_tiny", "tokenizer": "t5-base", "clip_cache_max_items": 7,
            "train_transform_keys": ["clip_randaug"]}
    cfg = VLSeqConfig.from_config(BACKBONES.get("vl_t5").settings(flat))
    assert (cfg.tokenizer, cfg.clip_cache_max_items, cfg.train_transform_keys) == ("t5-base", 7, ("clip_randaug",))
    assert VLSeqConfig.from_config(VlSeq2SeqSettings(vl_config="test_vl_t5_tiny")) == VLSeqConfig(
        vl_config="test_vl_t5_tiny", vl_model="")


def test_the_datamodule_gets_the_runs_data_and_task_sections(arrows, tmp_path, monkeypatch):
    # built once by from_sacred (RunConfig.data / .tasks) and passed on: the datamodule never sees the flat dict
    got = []

    def spy(data, capabilities, false_images=0, tasks=None):
        got.append((data, tasks))
        raise _Built("stop before the build")

    monkeypatch.setattr(runner, "datamodule_for", spy)
    with pytest.raises(_Built):
        _run(arrows, tmp_path / "runs", vqav2_label_size=7, max_text_len=12)
    data, tasks = got[0]
    assert isinstance(data, DataSection) and (data.data_root, data.datasets, data.max_text_len) == (
        str(arrows), ["vqa"], 12)
    assert isinstance(tasks, TaskSettings) and tasks.option("vqa", "label_size") == 7


def test_vilt_defaults_have_one_source():
    # ViLT's keys were written in config.BASE_CONFIG, backbones.VILT_KEYS and ViltSpec: now only on ViltSpec
    for f in dataclasses.fields(ViltSpec):
        if f.metadata.get("derived"):
            continue
        assert f.name not in C.BASE_CONFIG
        assert C.DEFAULTS[f.name] == f.default
    assert ViltSpec.from_config(C.DEFAULTS) == ViltSpec(token_type_rows=2)


def test_the_api_reads_a_checkpoints_config_through_the_section_builder():
    # vlpeft.api on a module loaded from a checkpoint: its saved flat config gives the data section (batch size,
    # transform, tokenizer, vocabulary files) through vlpeft.config.sections, as the run itself had it
    saved = {**C.DEFAULTS, "per_gpu_batchsize": 5, "image_size": 96, "data_root": "/somewhere"}
    rc = api._sections(SimpleNamespace(config=saved))
    assert isinstance(rc, C.RunConfig)
    assert (rc.data.per_gpu_batchsize, rc.data.image_size, rc.data.data_root) == (5, 96, "/somewhere")
    assert api._sections(SimpleNamespace(rc=rc, config={})) is rc  # a built module's own sections


# ---------------------------------------------------------------------------------------------- the flat dict
# The only modules that read the flat dict by key: the sacred front end with the builder of the run's sections
# (config.py: validation, from_sacred, sections) and the reader the section builders share (sections.py: take,
# options). Everything else (experiment, runner, build, Lightning module, tasks, data, api, backbones) gets a
# section, or hands the flat dict to a registry / ``take``, which types it.
FLAT_READERS = {"vlpeft/config.py", "vlpeft/sections.py"}
# names a flat config travels under in the project's modules
_FLAT_NAMES = {"config", "c", "flat", "self.config", "module.config", "self.hparams", "hparams", "_config",
               "rc.flat", "self.rc.flat", "module.rc.flat"}


def _flat_reads(path: Path) -> list[tuple[int, str]]:
    """(line, key) of each read of the flat config by key in ``path``: ``x["key"]``, ``x.get("key")``,
    ``x.pop("key")`` for a config key on a name a flat config travels under, and a read by a variable key of
    ``flat`` or a RunConfig's ``.flat`` (a task's option key is a variable)."""
    keys = set(C.ALL_KEYS)
    out = []
    for n in ast.walk(ast.parse(path.read_text())):
        k = base = None
        if isinstance(n, ast.Subscript):
            k, base = n.slice, n.value
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in ("get", "pop") and n.args:
            k, base = n.args[0], n.func.value
        if base is None:
            continue
        name = ast.unparse(base)
        if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value in keys and name in _FLAT_NAMES:
            out.append((n.lineno, k.value))
        elif (name.endswith(".flat") or name == "flat") and not isinstance(k, ast.Constant):
            out.append((n.lineno, ast.unparse(k)))
    return out


def _readers() -> dict[str, list[tuple[int, str]]]:
    readers = {}
    for p in sorted((ROOT / "vlpeft").rglob("*.py")):
        hits = _flat_reads(p)
        if hits:
            readers[p.relative_to(ROOT).as_posix()] = hits
    return readers


def test_the_flat_dict_is_read_only_by_the_front_end_and_the_section_builders():
    readers = _readers()
    assert len(FLAT_READERS) <= 3  # issue 17: the sacred front end and the builders of the typed sections
    # the scan sees the front end (else it would pass vacuously)
    assert "vlpeft/config.py" in readers
    outside = {m: h[:3] for m, h in readers.items() if m not in FLAT_READERS}
    assert not outside, f"modules reading the flat config by key (give them a typed section): {outside}"


@pytest.mark.parametrize("source", ['def f(config):\n    return config["data_root"]\n',
                                    'def f(c):\n    return c.get("per_gpu_batchsize", 8)\n',
                                    'def f(rc, key):\n    return rc.flat.get(key, 1)\n',
                                    'class M:\n    def f(self):\n        return self.config["tokenizer"]\n'],
                         ids=["subscript", "get", "rc.flat by a variable key", "self.config"])
def test_the_scan_finds_a_new_module_that_reads_the_flat_dict(tmp_path, source):
    # what the test above would report for a module added to vlpeft/ (so it fails for a new reader)
    p = tmp_path / "new_module.py"
    p.write_text(source)
    assert _flat_reads(p)
