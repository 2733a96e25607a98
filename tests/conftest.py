"""Shared test setup: offline hubs, the repository root on ``sys.path`` (``run.py``, ``write_arrow/``), synthetic
arrow files per test module (``arrows``, ``make_arrows``) and one quiet run of run.py's sacred experiment
(``sacred``)."""

import os
import sys
from pathlib import Path

import pytest

# Nothing is ever fetched from a model hub in tests; without this, hub look-ups retry for minutes.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker gets its share of the cores: N workers
# each starting a thread per core would oversubscribe them. Set before torch is imported (below) so it takes effect
# here, and inherited by the run.py / bench subprocesses the tests start.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
if _WORKERS > 1:
    _CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(max(1, _CORES // _WORKERS)))

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run.py and write_arrow/ sit at the repository root, whatever folder pytest runs in
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import run as run_py  # noqa: E402  (the sacred experiment the original command lines drive)
from vlpeft import runner  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

if _WORKERS > 1:  # in case a plugin imported torch before the variable was set
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# scripts/test.sh hands whole files to the xdist workers in collection order (--no-loadscope-reorder): the files
# whose end-to-end runs or subprocesses take minutes go first, so the suite does not end on one worker running one
# of them while the other idles. Only the order of files changes; within a file the order is pytest's.
SLOW_FILES_FIRST = ("test_readme_commands.py", "test_gpu_check.py", "test_das_lm.py", "test_api.py", "test_runner.py",
                    "test_rundirs.py", "test_generative_runpy.py", "test_messages.py", "test_inputs.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: other files keep their order


QUIET = {"--loglevel": "ERROR"}
SYNTHETIC_DEFAULTS = dict(seed=0, images=16, variants=("vqa",))


@pytest.fixture(scope="session")
def make_arrows(tmp_path_factory):
    """``make_arrows(name, **options) -> folder``: a fresh folder of ``write_synthetic`` arrow files
    (options: ``seed``, ``images``, ``variants``, ``image_px``; defaults ``SYNTHETIC_DEFAULTS``)."""

    def make(name: str = "arrows", **options) -> Path:
        root = tmp_path_factory.mktemp(name)
        write_synthetic(root, **{**SYNTHETIC_DEFAULTS, **options})
        return root

    return make


@pytest.fixture(scope="module")
def arrows(request, make_arrows) -> Path:
    """The test module's synthetic arrow files, written once per module: ``write_synthetic`` with the module's
    ``SYNTHETIC`` dict over ``SYNTHETIC_DEFAULTS`` (seed 0, 16 images, VQA only)."""
    return make_arrows(f"{request.module.__name__.rsplit('.', 1)[-1]}_arrows",
                       **getattr(request.module, "SYNTHETIC", {}))


@pytest.fixture(scope="session")
def sacred():
    """``sacred(*named_configs, **config_updates)``: one in-process run of run.py's sacred experiment, logging
    only errors; returns sacred's Run (``.result`` is what the stage returned)."""
    def run(*named: str, **updates):
        return run_py.ex.run(named_configs=list(named), config_updates=updates, options=QUIET)

    return run


@pytest.fixture(scope="session")
def demo(sacred):
    """``demo(**config_updates)``: a small training run of the ``demo`` named config (batch 8, one epoch, no loader
    workers; any key may be overridden)."""

    def run(**updates):
        return sacred("demo", **{**dict(per_gpu_batchsize=8, batch_size=8, num_workers=0, max_epoch=1,
                                        stage="train"), **updates})

    return run


@pytest.fixture
def trainer_callbacks(monkeypatch) -> list:
    """The Lightning callbacks every trainer that a run of this test builds also gets: put them in the returned list
    (``trainer_callbacks[:] = [recorder]`` before each run)."""
    added: list = []
    real = runner.build_trainer
    monkeypatch.setattr(runner, "build_trainer",
                        lambda *a, **kw: real(*a, **dict(kw, extra_callbacks=[*kw.get("extra_callbacks", ()), *added])))
    return added
