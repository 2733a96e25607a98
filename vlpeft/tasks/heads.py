"""Task heads with the original parameter names (`vqa_classifier`, `nlvr2_classifier`, ...).

The heads live in one ``nn.ModuleDict`` keyed by those names, so an original checkpoint's
``vqa_classifier.0.weight`` maps to ``heads.vqa_classifier.0.weight`` by a plain prefix.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vlpeft._init import init_weights_bert as init_weights

# Tasks this package has objectives for, and the head entries each one builds.
TASK_HEADS: dict[str, tuple[str, ...]] = {
    "vqa": ("vqa_classifier",),
    "gqa": ("gqa_classifier",),
    "snli_ve": ("snli_ve_classifier",),
    "nlvr2": ("nlvr2_classifier",),
    "irtr": ("itm_score", "rank_output"),
    "itm": ("itm_score",),  # image-text matching (METER's: F30K / COCO retrieval trains it beside irtr)
    "caption": (),  # generative only: the backbone's LM head (vlpeft.tasks.generative)
    "boolq": ("boolq_classifier",),  # text-only yes/no QA (BoolQ; LaVIN-DAS's language-only setting)
    "scienceqa": ("scienceqa_classifier",),  # image+text multiple choice (ScienceQA; LaVIN-DAS's multimodal setting)
}
# the heads the optimiser gives lr × lr_mult (the originals' rule: the classifiers, not rank_output)
LR_MULT_HEADS: tuple[str, ...] = ("vqa_classifier", "nlvr2_classifier", "gqa_classifier", "snli_ve_classifier",
                                  "boolq_classifier", "scienceqa_classifier")
# top-level head names in original ViLT/METER checkpoints (pre-training heads too: loaded when built, else reported)
ORIGINAL_HEAD_PREFIXES: tuple[str, ...] = tuple(dict.fromkeys(
    [h for hs in TASK_HEADS.values() for h in hs] + ["itm_score", "mlm_score", "mpp_score"]))
SNLI_VE_CLASSES = 3  # contradiction 0, neutral 1, entailment 2
NLVR2_CLASSES = 2
BOOLQ_CLASSES = 2  # no 0, yes 1
SCIENCEQA_CHOICES = 5  # ScienceQA problems have 2..5 choices; logits past a problem's own count are masked


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
    unknown = [t for t in tasks if t not in TASK_HEADS]
    if unknown:
        raise ValueError(
            f"loss_names activates {unknown} but vlpeft implements only {sorted(TASK_HEADS)}; "
            f"set {', '.join(f'{t}=0' for t in unknown)} in loss_names"
        )
    return tasks


def _classifier(d_in: int, d_hidden: int, n_out: int) -> nn.Sequential:
    # Linear -> LayerNorm -> GELU -> Linear: indices 0..3 match the original state-dict names
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.LayerNorm(d_hidden), nn.GELU(), nn.Linear(d_hidden, n_out))


class ITMHead(nn.Module):
    """Image-text matching head (`itm_score.fc`): logits [no match, match]; seeds `rank_output` for IRTR."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def _positive_int(config: Mapping[str, Any], key: str, default: int | None = None) -> int:
    value = config.get(key, default)
    if value is None or isinstance(value, bool) or int(value) <= 0:
        raise ValueError(f"config[{key!r}] must be a positive int (the number of classes), got {value!r}")
    return int(value)


def build_heads(config: Mapping[str, Any], hidden_size: int, in_dim: int | None = None,
                only: Sequence[str] | None = None, gate: str = ">=1") -> nn.ModuleDict:
    """Heads for the active tasks of ``config["loss_names"]``, reading widths from ``hidden_size``.

    ``config["head_hidden"]`` (0 / missing = 2·hidden) sets the classifier's inner width; DVP-LLaMA uses 512.
    ``only``: the tasks to build heads for (``build.assemble`` passes the non-generative ones); None = all.
    ``gate``: the backbone family's task gate (``active_tasks``).
    All heads get ``init_weights`` (DVP-LLaMA's original left GQA/SNLI-VE heads at PyTorch's default init;
    we initialise every head the same way).
    """
    if int(hidden_size) <= 0:
        raise ValueError(f"hidden_size must be positive, got {hidden_size}")
    inner = int(config.get("head_hidden") or 0) or 2 * int(hidden_size)
    d = int(in_dim or hidden_size)  # the width of cls_feats (METER: [text; image] pooled, 2 × hidden)
    if "loss_names" not in config:
        raise KeyError("build_heads needs config['loss_names'] (a dict task -> gate, e.g. {'vqa': 1})")
    tasks = active_tasks(config["loss_names"], gate)
    if only is not None:  # generative tasks answer with the backbone's LM head: no classifier for them
        tasks = [t for t in tasks if t in set(only)]
    heads = nn.ModuleDict()
    for task in tasks:
        if task == "vqa":
            heads["vqa_classifier"] = _classifier(d, inner, _positive_int(config, "vqav2_label_size"))
        elif task == "gqa":
            heads["gqa_classifier"] = _classifier(d, inner, _positive_int(config, "gqa_label_size", 1843))
        elif task == "snli_ve":
            heads["snli_ve_classifier"] = _classifier(d, inner, SNLI_VE_CLASSES)
        elif task == "nlvr2":
            # input is [cls(image_0); cls(image_1)]
            heads["nlvr2_classifier"] = _classifier(2 * d, inner, NLVR2_CLASSES)
        elif task == "boolq":
            heads["boolq_classifier"] = _classifier(d, inner, BOOLQ_CLASSES)
        elif task == "scienceqa":
            heads["scienceqa_classifier"] = _classifier(d, inner, _positive_int(config, "scienceqa_label_size",
                                                                                SCIENCEQA_CHOICES))
        elif task in ("irtr", "itm"):  # one itm_score serves both (METER's F30K / COCO lines run the two)
            if "itm_score" not in heads:
                heads["itm_score"] = ITMHead(d)
            if task == "irtr":
                heads["rank_output"] = nn.Linear(d, 1)
    heads.apply(init_weights)
    if "rank_output" in heads:
        init_rank_output_from_itm(heads)
    return heads


@torch.no_grad()
def init_rank_output_from_itm(heads: nn.ModuleDict) -> None:
    """``rank_output`` := row 1 (the "match" logit) of ``itm_score.fc``; ``itm_score`` is frozen.

    Call again after loading a checkpoint that carries ``itm_score`` (heads are built before loading).
    The originals assign a view of the ITM row (``rank_output.weight.data = itm_score.fc.weight.data[1:]``), but
    moving the model to the GPU gives every parameter its own copy (``Module._apply`` sets ``param.data`` per
    parameter), so in their GPU runs ``itm_score`` stays at its loaded values while ``rank_output`` trains — as
    this copy does; METER's ITM loss (itm > 0 beside irtr) therefore scores with the frozen pre-trained head.
    """
    if "rank_output" not in heads or "itm_score" not in heads:
        raise KeyError("init_rank_output_from_itm needs heads 'itm_score' and 'rank_output' (irtr must be active)")
    fc, rank = heads["itm_score"].fc, heads["rank_output"]
    if rank.weight.shape[1] != fc.weight.shape[1]:
        raise ValueError(
            f"rank_output takes {rank.weight.shape[1]} features but itm_score.fc takes {fc.weight.shape[1]}"
        )
    rank.weight.copy_(fc.weight[1:2])
    rank.bias.copy_(fc.bias[1:2])
    for p in heads["itm_score"].parameters():
        p.requires_grad_(False)
