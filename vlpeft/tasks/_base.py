"""Tasks as registry entries: a ``Task`` subclass per file (``vqa.py``, ``gqa.py``, …) owns its heads, the step's
loss, metrics, predictions, the test dump it writes, the search score, the backbone capability it needs and what it
reads from the data (item fields, collate fields, generative prompt and lengths).

``TASKS.build(name) -> Task`` (a fresh instance); ``build_tasks`` binds the run's ``TaskSettings`` and picks the mode:
``classify`` (a head on the backbone's ``cls_feats``) or ``generate`` (the backbone's ``lm_loss`` / ``generate``) —
the mode is an option of one task (VQA on ViLT vs on VL-T5), not a second registry.

Nothing here knows a task by name: the generic code (Lightning module, metrics, collate, datamodule, dumps, the
config's ``loss_names`` keys) asks ``TASKS``. The task side never reads the flat sacred config: ``TaskSettings``
is built from it once per run (``settings_from_config``, through ``vlpeft.sections``) and passed in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft._init import init_weights_bert
from vlpeft._registry import Registry
from vlpeft.sections import key, options as entry_options, take

Infer = Callable[..., Mapping[str, torch.Tensor]]
IGNORE_INDEX = -100
MODES = ("classify", "generate")


# ---------------------------------------------------------------------------------------------- settings
def _int_or(fallback: int) -> Callable[[Any], int]:
    return lambda v: int(v or fallback)  # 0 / "" read as the fallback, as the originals' ``or`` defaults


@dataclass(frozen=True)
class TaskSettings:
    """The tasks' section of a run's config, typed, built once (``settings_from_config``, called by
    ``vlpeft.config.sections``). Each field reads the flat key of its name (``key(...)``: renamed or converted);
    the keys' defaults belong to other sections (``shared``): these are the fallbacks of a direct build.

    ``options[task]``: that task's own options (its ``Task.option_keys``: label sizes, dump options, …)."""

    head_hidden: int = key(convert=_int_or(0), default=0, shared=True)  # classifier inner width; 0 = 2 × hidden
    max_text_len: int = key(convert=_int_or(40), default=40, shared=True)
    # generate mode: beam width of validation / test decoding
    num_beams: int = key(convert=_int_or(1), default=1, shared=True)
    # generate mode: the originals' length flag (the backbone's ``new_tokens`` counts it as its original did) and the
    # caption target truncation
    gen_max_length: int = key(convert=_int_or(20), default=20, shared=True)
    # generate mode: the originals' textual task prefixes
    use_tasks_prompts: bool = key(convert=bool, default=True, shared=True)
    # retrieval: recall@k over the whole split at epoch end
    get_recall_metric: bool = key(convert=bool, default=False, shared=True)
    dump_dir: str = key("_dump_dir", convert=str, default="", shared=True)  # test dumps: the run folder (runner)
    dump_name: str = key("_dump_name", convert=str, default="", shared=True)  # <run>_v<version>_<checkpoint>
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, fallback in (("head_hidden", 0), ("max_text_len", 40), ("num_beams", 1), ("gen_max_length", 20),
                               ("dump_dir", ""), ("dump_name", "")):
            if getattr(self, name) is None:  # a config value None (the sections' reader skips converting it)
                object.__setattr__(self, name, fallback)
        bad = {k: v for k, v in (("num_beams", self.num_beams), ("gen_max_length", self.gen_max_length))
               if int(v) < 1}
        if bad:
            raise ValueError(f"generation options must be >= 1 (config num_beams / gen_max_length), got {bad}")

    def option(self, task: str, key: str, default: Any = None) -> Any:
        return (self.options.get(task) or {}).get(key, default)

    def with_option(self, task: str, key: str, value: Any) -> "TaskSettings":
        opts = {t: dict(o) for t, o in self.options.items()}
        opts.setdefault(task, {})[key] = value
        return replace(self, options=opts)

    def generation_options(self) -> dict[str, int]:
        """The originals' flags ``num_beams`` and ``gen_max_length``, as a generative backbone's ``__call__`` takes
        them (it turns the length into ``max_new_tokens`` the way its original counted it)."""
        return {"num_beams": int(self.num_beams or 1), "gen_max_length": int(self.gen_max_length or 20)}


def settings_from_config(config: Any) -> TaskSettings:
    """The tasks' section of a flat config (``vlpeft.config.sections`` builds it once per run; a RunConfig gives
    its own). The flat keys are read by ``vlpeft.sections`` only: each field from its key, each task's options
    from its ``option_keys``."""
    if isinstance(config, TaskSettings):
        return config
    if isinstance(getattr(config, "tasks", None), TaskSettings):  # a RunConfig
        return config.tasks
    opts = {name: entry_options(TASKS.build(name).option_keys, config) for name in TASKS.names()}
    return replace(take(TaskSettings, config), options=opts)


# ---------------------------------------------------------------------------------------------- shared pieces
def head(heads: nn.ModuleDict, name: str, task: str) -> nn.Module:
    if name not in heads:
        raise KeyError(f"task {task!r} needs head {name!r}; build heads with loss_names[{task!r}] active")
    return heads[name]


def batch_key(batch: Mapping[str, Any], key: str, task: str) -> Any:
    if key not in batch:
        raise KeyError(f"task {task!r} needs batch[{key!r}]; the datamodule/collate for this task must provide it")
    return batch[key]


def labels_of(batch: Mapping[str, Any], key: str, task: str, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(batch_key(batch, key, task), dtype=torch.long).to(device)


def ce_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy ignoring -100 and the batch accuracy over the kept samples.

    A batch without any label (e.g. a test split) gives loss 0 (still attached to the graph) and NaN accuracy,
    instead of cross_entropy's NaN loss.
    """
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        return logits.sum() * 0.0, torch.tensor(float("nan"), device=logits.device)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
    acc = (logits.detach().argmax(-1)[keep] == labels[keep]).float().mean()
    return loss, acc


CLASSIFIER_OUTPUT = "3"  # the output Linear of ``classifier`` (its width is the label count)


def classifier(d_in: int, d_hidden: int, n_out: int) -> nn.Sequential:
    # Linear -> LayerNorm -> GELU -> Linear: indices 0..3 match the original state-dict names
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(), nn.Linear(d_hidden, n_out))


def positive_int(value: Any, key: str) -> int:
    if value is None or isinstance(value, bool) or int(value) <= 0:
        raise ValueError(f"config[{key!r}] must be a positive int (the number of classes), got {value!r}")
    return int(value)


class CollateError(ValueError):
    """Dataset items the collate cannot turn into a batch (vlpeft.data.collate re-exports it)."""


def check_label_range(task: str, key: str, size: int | None, labels: Sequence[int]) -> int:
    """``size`` (the task's label size, config ``key``), refusing labels outside [0, size) with the fix."""
    if not size or size <= 0:
        raise CollateError(f"the collate needs the {task} label size (config {key}), got {size!r}")
    bad = [lab for lab in labels if not 0 <= lab < size]
    if bad:
        raise CollateError(f"{task} label ids {sorted(set(bad))[:10]} are outside [0, {size}); the label size "
                           f"does not match the arrow files' vocabulary")
    return int(size)


def split_rows(batch: Mapping[str, Any], split: str) -> torch.Tensor:
    """Which rows of the batch come from a file whose ``table_name`` contains ``split`` (dev / test)."""
    return torch.tensor([split in n for n in list(batch.get("table_name") or [])], dtype=torch.bool)


def value_of(values: Mapping[str, Any], key: str) -> float | None:
    """A metric value, None when absent or NaN (a metric that saw no sample)."""
    v = values.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


@dataclass(frozen=True)
class OfficialScorer:
    """A task's subcommand of ``python -m vlpeft.evaluate``: ``score`` names the files scorer in
    ``vlpeft.evaluate`` (a name, not an import: the evaluation CLI imports the tasks), called with the values of
    ``flags`` in order, then the predictions file."""

    help: str
    score: str
    flags: tuple[tuple[str, bool, str], ...] = ()  # (flag, required, help)


# ---------------------------------------------------------------------------------------------- the contract
class Task:
    """One task. Subclasses set the class attributes and override what differs; an instance carries the run's
    ``settings`` and its ``mode``. Keys a task writes into the step's output start with its name."""

    name: ClassVar[str] = ""
    test_backbone: ClassVar[str] = ""  # the tiny backbone the conformance tests run it on (tests/test_registries.py)
    modes: ClassVar[tuple[str, ...]] = ("classify",)  # the first is the default where a backbone offers several
    needs: ClassVar[frozenset[str]] = frozenset({"classify"})  # backbone capabilities in classify mode
    heads: ClassVar[tuple[str, ...]] = ()  # head names (original parameter names) it builds in classify mode
    lr_mult_heads: ClassVar[tuple[str, ...]] = ()  # its heads the optimiser gives lr × lr_mult
    single_pass: ClassVar[bool] = True  # one forward of the batch as given (forward_many's shared work applies)
    false_images: ClassVar[bool] = False  # reads batch["false_image_0"] (draw_false_image per item)
    option_keys: ClassVar[dict[str, tuple[str, Any]]] = {}  # option -> (flat config key, default)
    score_key: ClassVar[str] = ""  # the search score / selection metric in classify mode ("" = <name>_accuracy)
    answer_vocab_file: ClassVar[str] = ""  # json answer vocabulary next to the arrow files (class id -> answer)
    answer_vocab_option: ClassVar[str] = ""  # its option holding the label size (0 = read it from the vocabulary)
    submission: ClassVar[bool] = False  # its dump is the run's submission file (runner's result.submission)
    api_role: ClassVar[str] = ""  # vlpeft.api: "answer" (predict(image, question)) or "caption" (generate(image))
    official: ClassVar[OfficialScorer | None] = None  # its official scorer (``python -m vlpeft.evaluate <name>``)
    list_fields: ClassVar[tuple[str, ...]] = ()  # item fields the collate passes through as lists
    # generate mode: the originals' task prefix, their hard-coded token limits, multi-task batch-size ratio
    prompt: ClassVar[str] = ""
    text_max_length: ClassVar[int | None] = None  # None: max_text_len
    target_max_length: ClassVar[int | str | None] = "gen"  # "gen": gen_max_length; None: no truncation
    multitask_ratio: ClassVar[tuple[int, int]] = (1, 1)
    eval_per_image: ClassVar[bool] = False  # val / test items: one per image with every reference (captioning)
    # generate mode on a decoder-only LM (LaVIN): prompt + answer tokenised as one text between BOS and EOS, cut at
    # the prompt's own token count, both truncated together to max_text_len (LaVIN's ``tokenize``)
    joint_tokens: ClassVar[bool] = False
    generate_needs: ClassVar[frozenset[str]] = frozenset({"generate"})

    def __init__(self, settings: TaskSettings | None = None, mode: str | None = None):
        self.settings = settings or TaskSettings()
        self.mode = mode or self.modes[0]
        if self.mode not in self.modes:
            raise ValueError(f"task {self.name} has no {self.mode!r} mode (it has {list(self.modes)})")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, mode={self.mode!r})"

    def __eq__(self, other: object) -> bool:
        return (type(other) is type(self) and (self.mode, self.settings, self.generation)
                == (other.mode, other.settings, other.generation))

    def __hash__(self) -> int:
        return hash((type(self), self.mode))

    # ------------------------------------------------------------------ options
    @property
    def generative(self) -> bool:
        return self.mode == "generate"

    @property
    def required(self) -> frozenset[str]:
        """The backbone capabilities this task needs in its mode."""
        return self.generate_needs if self.generative else self.needs

    @property
    def generation(self) -> dict[str, int]:
        return self.settings.generation_options()

    def option(self, key: str) -> Any:
        default = self.option_keys[key][1] if key in self.option_keys else None
        return self.settings.option(self.name, key, default)

    def configured(self, settings: TaskSettings | None = None, mode: str | None = None) -> "Task":
        return type(self)(self.settings if settings is None else settings, mode or self.mode)

    def for_backbone(self, capabilities: frozenset[str] | set[str] | Sequence[str],
                     settings: TaskSettings | None = None) -> "Task":
        """This task as a backbone with ``capabilities`` runs it: generate where the backbone generates and cannot
        classify (or the task exists only as generation), else its first mode."""
        caps = set(capabilities)
        mode = self.modes[0]
        if "generate" in caps and "generate" in self.modes and ("classify" not in caps or mode == "generate"):
            mode = "generate"
        return self.configured(settings, mode)

    @property
    def loss_key(self) -> str:
        return f"{self.name}_loss"

    # ------------------------------------------------------------------ heads
    def head_names(self) -> tuple[str, ...]:
        return () if self.generative else self.heads

    def build_heads(self, in_dim: int, inner: int) -> dict[str, nn.Module]:
        """Its heads (classify mode), widths from the backbone's ``cls_feats`` width ``in_dim``."""
        return {}

    def init_heads(self, heads: nn.ModuleDict) -> None:
        """After every head got ``init_weights`` (and again after a checkpoint loads)."""

    # ------------------------------------------------------------------ the step
    def compute(self, infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any],
                generate: bool = False) -> dict[str, Any]:
        if self.generative:
            return self.generate_step(infer, batch, generate)
        return self.classify_step(infer, heads, batch)

    def classify_step(self, infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError(f"task {self.name} has no classify step")

    def generate_step(self, infer: Infer, batch: Mapping[str, Any], generate: bool) -> dict[str, Any]:
        """``lm_loss`` of the batch's ``target_ids`` → ``<task>_loss``; with ``generate`` (validation, test) the
        decoded strings → ``<task>_generated``, scored by ``score_generated``."""
        out: dict[str, Any] = {}
        if "target_ids" in batch:  # absent at test time and for caption evaluation (one sample per image)
            feats = infer(batch)
            if "lm_loss" not in feats:
                raise KeyError(f"generative task {self.name!r}: the backbone returned no 'lm_loss' for a batch with "
                               f"target_ids (see vlpeft.backbones._generative)")
            out[self.loss_key] = feats["lm_loss"]
        if not generate:
            return out
        generated = list(infer(batch, generate=True, **self.generation)["generated"])
        out[f"{self.name}_generated"] = generated
        out.update(self.score_generated(generated, batch))
        return out

    def score_generated(self, generated: list[str], batch: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def input_text(self, text: str, prompt: str) -> str:
        """The generative input of one sample: the task prefix, then the text (VL-Adapter's image tasks); the
        video tasks put it after the text."""
        return f"{prompt}{text}"

    def owns(self, batch: Mapping[str, Any], n_tasks: int) -> bool:
        """Whether this task computes on ``batch``: in a multi-task generative run a batch is one task's."""
        own = batch.get("task") if isinstance(batch, Mapping) else None
        return not (own and n_tasks > 1 and self.generative and own != self.name)

    # ------------------------------------------------------------------ search score and selection metric
    def selection_key(self) -> str:
        return self.score_key or f"{self.name}_accuracy"

    def search_score(self, out: Mapping[str, Any]) -> float:
        """The search reward: classify mode the batch score (percent); generate mode minus the LM loss."""
        if self.generative:
            if self.loss_key not in out:
                raise KeyError(f"search reward of generative task {self.name!r} needs {self.loss_key!r} (a batch "
                               f"with target_ids)")
            return -float(out[self.loss_key])
        key = self.selection_key()
        if key not in out:
            raise KeyError(f"search score of task {self.name!r} needs {key!r} in the step's output; got {sorted(out)}")
        return float(out[key]) * 100.0

    def selection(self, values: Mapping[str, Any]) -> list[tuple[str, float]]:
        """The named metrics of ``values`` this task adds to ``the_metric`` (absent / NaN ones left out)."""
        v = value_of(values, self.selection_key())
        return [] if v is None else [(self.selection_key(), v)]

    # ------------------------------------------------------------------ metrics
    def make_metrics(self) -> dict[str, nn.Module]:
        return {}

    def update_metrics(self, metrics: Mapping[str, nn.Module], out: Mapping[str, Any],
                       batch: Mapping[str, Any]) -> None:
        pass

    def epoch_metrics(self, module: Any, split: str) -> dict[str, float]:
        """Metrics computed over a whole split at epoch end (retrieval recall); none by default."""
        return {}

    # ------------------------------------------------------------------ data
    def collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any], label_size: int | None) -> None:
        """Its collate fields from the dataset items (classification batches)."""

    def generative_collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any]) -> None:
        """Its collate fields in a generative batch (beyond text, targets and images)."""

    def blank_targets(self) -> dict[str, Any]:
        """Item fields of an unannotated question (a test split's, or ``vlpeft.api.predict``'s input)."""
        return {}

    def label_size(self) -> int | None:
        return int(self.option(self.answer_vocab_option) or 0) if self.answer_vocab_option else None

    def shape_fix_hint(self, head_key: str) -> str | None:
        """The fix when a checkpoint's ``head_key`` (a name inside the heads) does not fit: the output layer of a head
        whose width is the label-size option names that option."""
        output = any(head_key.startswith(f"{h}.{CLASSIFIER_OUTPUT}.") for h in self.heads)
        if not (self.answer_vocab_option and output):
            return None
        key = self.option_keys[self.answer_vocab_option][0]
        return f"set {key} to the checkpoint's label count ({key}=… on the command line)"

    # ------------------------------------------------------------------ predictions and dumps
    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        return []

    def question_predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any], id_key: str,
                             as_id: Callable[[Any], Any]) -> list[dict]:
        """The rows of a QA dump: ``{id_key: qid, pred}`` (class id; the dump maps it through the vocabulary) or
        ``{id_key: qid, answer}`` (generated); ``as_id`` types the id as the official format has it."""
        if self.generative:
            gen = out.get(f"{self.name}_generated")
            return [] if gen is None else [{id_key: as_id(q), "answer": a} for q, a in zip(batch["qid"], gen)]
        pred = out[f"{self.name}_logits"].detach().argmax(-1).cpu().tolist()
        return [{id_key: as_id(q), "pred": p} for q, p in zip(batch["qid"], pred)]

    def dump_options(self) -> dict[str, Any]:
        """Options its dump writer reads (e.g. VQA's fill questions), resolved once at test end."""
        return {}

    def write_dump(self, rows: Sequence[Mapping[str, Any]], out_dir: Path, run_name: str,
                   vocab: Mapping[int, str] | Sequence[str] | None, expected: Any = None,
                   **options: Any) -> Path | None:
        return None


TASKS: Registry[Task] = Registry("task", "loss_names")

# config keys the generate mode and its data read (collected by vlpeft.config.registry_keys)
GENERATIVE_KEYS: dict[str, Any] = {
    "num_beams": 1,  # beam width of validation / test decoding (VL-Adapter scripts: 5)
    "gen_max_length": 20,  # most generated tokens, and the caption target truncation (the originals' flag)
    "use_tasks_prompts": True,  # the originals' textual task prefixes ("vqa: ", "gpa: ", "nlvr: ", "caption: ")
    "visual_features": "",  # VL-Adapter .h5 features: a folder / file, or {dataset: folder}; "" = images
    "n_boxes": 36,  # visual tokens per image (grid features max-pooled to this square grid)
    "multitask_sampling": "roundrobin",  # roundrobin | balanced (VL-Adapter's --multitask_sampling)
}


_REGISTERED: list[str] = []  # registration order: the order of the loss_names keys (hence of a run's tasks)


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: registers ``cls`` under ``cls.name`` with its option keys (so sacred knows them)."""
    keys = {key: default for key, default in cls.option_keys.values()}
    if "generate" in cls.modes:
        keys.update(GENERATIVE_KEYS)
    TASKS.register(cls.name, keys=keys, doc=(cls.__doc__ or "").strip(),
                   test=dict(backbone=cls.test_backbone) if cls.test_backbone else None)(cls)
    _REGISTERED.append(cls.name)
    return cls


# ---------------------------------------------------------------------------------------------- gates, runs
# Which loss_names weights switch a task on, per original family (its ``set_task``): ViLT and DVP take v >= 1 (so
# ViLT's F30K / COCO itm=0.5 is off), METER takes v > 0 (so METER's itm=0.5 trains beside irtr). A backbone family
# names its rule with the registry meta ``task_gate`` (``vlpeft.backbones.task_gate``); the weight only gates, the
# losses are summed unweighted (as every original).
TASK_GATES: dict[str, Any] = {">=1": lambda v: v >= 1, ">0": lambda v: v > 0}


def active_tasks(loss_names: Mapping[str, float], gate: str = ">=1") -> list[str]:
    """Tasks whose weight passes ``gate`` (``TASK_GATES``: ">=1" ViLT / DVP, ">0" METER)."""
    if not isinstance(loss_names, Mapping):
        raise TypeError(f"config['loss_names'] must be a dict task -> gate, got {type(loss_names).__name__}")
    if gate not in TASK_GATES:
        raise ValueError(f"task gate {gate!r} is not one of {sorted(TASK_GATES)}")
    tasks = [t for t, v in loss_names.items() if v is not None and TASK_GATES[gate](float(v))]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(
            f"loss_names activates {unknown} but vlpeft implements only {TASKS.names()}; "
            f"set {', '.join(f'{t}=0' for t in unknown)} in loss_names"
        )
    return tasks


def any_active_needs(loss_names: Mapping[str, float], capability: str, gate: str = ">=1") -> bool:
    """Whether a registered task that ``loss_names`` switches on (``gate``, as ``active_tasks``) needs ``capability``
    from the backbone in classify mode: ViLT / METER size their token-type table by it (a third row for the second
    image of ``pair_images`` tasks). Keys that are no task (the pre-training losses) are ignored here."""
    on = TASK_GATES[gate]
    return any(capability in TASKS.build(t).needs for t, v in (loss_names or {}).items()
               if t in TASKS and v is not None and on(float(v)))


def task_for(name: str, capabilities: frozenset[str] | set[str] | Sequence[str],
             settings: TaskSettings | None = None) -> Task:
    """Task ``name`` in the mode a backbone with ``capabilities`` runs it (``Task.for_backbone``)."""
    return TASKS.build(name).for_backbone(capabilities, settings)


def build_tasks(loss_names: Mapping[str, float], capabilities: frozenset[str] | Sequence[str], backbone_name: str,
                settings: TaskSettings | None = None, gate: str = ">=1") -> list[Task]:
    """The active tasks (``gate``: the backbone family's rule, ``vlpeft.backbones.task_gate``), each in the mode the
    backbone runs it; refuses one whose capability the backbone lacks, naming it."""
    tasks = [task_for(t, capabilities, settings) for t in active_tasks(loss_names, gate)]
    for t in tasks:
        missing = sorted(t.required - set(capabilities))
        if missing:
            raise ValueError(f"task {t.name} needs the backbone capability {missing} which backbone={backbone_name} "
                             f"lacks (it has {sorted(capabilities)}); choose another backbone or task")
    return tasks


def build_task_heads(tasks: Sequence[Task], hidden_size: int, in_dim: int | None = None,
                     head_hidden: int = 0) -> nn.ModuleDict:
    """Every task's heads in one ``ModuleDict`` keyed by the original parameter names; ``head_hidden`` (0 =
    2·hidden) sets the classifier's inner width; ``in_dim`` the width of ``cls_feats`` (METER: 2 × hidden).
    All heads get ``init_weights`` (DVP-LLaMA's original left GQA/SNLI-VE heads at PyTorch's default init;
    we initialise every head the same way), then each task's ``init_heads`` (IRTR's rank_output from ITM)."""
    if int(hidden_size) <= 0:
        raise ValueError(f"hidden_size must be positive, got {hidden_size}")
    inner = int(head_hidden or 0) or 2 * int(hidden_size)
    d = int(in_dim or hidden_size)
    heads = nn.ModuleDict()
    for t in tasks:
        if t.generative:  # generate mode answers with the backbone's LM head: no head of its own
            continue
        for name, module in t.build_heads(d, inner).items():
            if name not in heads:  # a head two tasks share (itm_score: irtr and itm) is built once
                heads[name] = module
    heads.apply(init_weights_bert)
    for t in tasks:
        t.init_heads(heads)
    return heads


def compute(tasks: Sequence[Task], infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any],
            generate: bool = False) -> dict[str, torch.Tensor]:
    """Every task's outputs; ``loss`` = the unweighted sum of every value whose key contains "loss" (the originals).
    ``generate``: generative tasks also decode their answers (validation and test). In a multi-task run a batch
    belongs to one task (``batch["task"]``): only that task computes."""
    out: dict[str, torch.Tensor] = {}
    for t in tasks:
        if t.owns(batch, len(tasks)):
            out.update(t.compute(infer, heads, batch, generate=generate))
    out["loss"] = sum(v for k, v in out.items() if "loss" in k)
    return out


def all_tasks() -> list[Task]:
    """One instance of every registered task (default settings)."""
    return [TASKS.build(n) for n in TASKS.names()]


def loss_keys() -> tuple[str, ...]:
    """The ``loss_names`` keys tasks answer to, in registration order (the config adds the originals'
    pre-training losses)."""
    return tuple(_REGISTERED)


def head_names() -> tuple[str, ...]:
    """Every head any task builds (classify mode), in registration-independent (sorted task) order."""
    return tuple(dict.fromkeys(h for t in all_tasks() for h in t.heads))


def lr_mult_heads() -> tuple[str, ...]:
    return tuple(dict.fromkeys(h for t in all_tasks() for h in t.lr_mult_heads))


__all__ = ["GENERATIVE_KEYS", "IGNORE_INDEX", "MODES", "TASKS", "TASK_GATES", "OfficialScorer", "Task", "TaskSettings",
           "active_tasks", "all_tasks", "any_active_needs", "build_task_heads", "build_tasks", "ce_and_accuracy",
           "classifier", "compute", "head_names", "loss_keys", "lr_mult_heads", "register_task",
           "settings_from_config", "task_for"]
