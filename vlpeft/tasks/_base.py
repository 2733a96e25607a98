"""Tasks as registry entries: each owns its heads, loss, metrics, predictions and search score, and declares the
backbone capability it needs (``classify``, ``pair_images``, ``score_pairs``, ``text_only``).

``TASKS.build(name) -> Task``. The objective functions live in ``objectives.py``, the heads in ``heads.py``
(``TASK_HEADS`` is the one place head names are listed), metrics in ``metrics.py``, dump writers in ``dumps.py``.
The retrieval task also owns its epoch-end evaluation (recall@k over every image-caption pair) through the
backbone's ``encode_images`` / ``forward(..., image_cache=…)`` capability, never a backbone's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch

from vlpeft._registry import Registry
from vlpeft.tasks import metrics as tm
from vlpeft.tasks import objectives as obj
from vlpeft.tasks.heads import TASK_HEADS


@dataclass(frozen=True)
class Task:
    name: str
    compute: Callable[..., dict[str, torch.Tensor]]  # (infer, heads, batch) -> outputs with "<name>_loss"
    needs: frozenset[str] = frozenset({"classify"})
    single_pass: bool = True  # one forward of the batch as given (so forward_many's shared work applies)
    score_key: str = ""  # the search score (percent) for KAB: the batch VQA score or accuracy
    generative: bool = False  # compute(infer, heads, batch, generate=...) also decodes answers in val/test
    false_images: bool = False  # reads batch["false_image_0"]: the datamodule draws draw_false_image per item

    @property
    def heads(self) -> tuple[str, ...]:
        return TASK_HEADS[self.name]

    def search_score(self, out: Mapping[str, Any]) -> float:
        return obj.score_for_search(self.name, out)

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        return tm.predictions(out, batch, [self.name]).get(self.name, [])

    def epoch_metrics(self, module: Any, split: str) -> dict[str, float]:
        """Metrics computed over a whole split at epoch end (retrieval recall); none by default."""
        return {}


class RetrievalTask(Task):
    def epoch_metrics(self, module: Any, split: str) -> dict[str, float]:
        """IR/TR recall@1/5/10 over every (image, caption) pair of the split (``get_recall_metric=True``): each
        image is encoded once and scored against every caption batch; every rank scores the whole split (small
        next to training), so no gather is needed."""
        if not module.config["get_recall_metric"] or module.trainer.sanity_checking:
            return {}
        dm, bb, dev = module.trainer.datamodule, module.backbone, module.device
        texts = [module.transfer_batch_to_device(b, dev, 0)
                 for b in dm.recall_loader(dm.recall_text_dataset(split), batch_size=64)]
        txt_iids = torch.cat([b["iid"] for b in texts]).cpu()
        plan = module.plan()
        rows, img_iids = [], []
        for ib in dm.recall_loader(dm.recall_image_dataset(split), batch_size=1):
            cache = bb.encode_images(module.transfer_batch_to_device(ib, dev, 0))
            scores = [module.heads["rank_output"](bb(tb, plan, image_cache=cache)["cls_feats"])[:, 0].float().cpu()
                      for tb in texts]
            rows.append(torch.cat(scores))
            img_iids.append(int(ib["iid"][0]))
        recalls = tm.recall_at_k(torch.stack(rows), img_iids, txt_iids)
        if module.trainer.is_global_zero:
            print(f"[vlpeft] {split} recall: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(recalls.items())),
                  flush=True)
        return recalls


TASKS: Registry[Task] = Registry("task", "loss_names")
# each task's test entry: the tiny backbone the conformance tests run it on (tests/test_registries.py)
_TEST_BACKBONE = {"vqa": "test_vilt", "gqa": "test_vilt", "snli_ve": "test_vilt", "nlvr2": "test_vilt",
                  "irtr": "test_vilt", "itm": "test_meter", "boolq": "test_plm_bert", "scienceqa": "test_clip_llama"}
for _task in (Task("vqa", obj.compute_vqa), Task("gqa", obj.compute_gqa), Task("snli_ve", obj.compute_snli_ve),
              Task("nlvr2", obj.compute_nlvr2, needs=frozenset({"classify", "pair_images"}), single_pass=False),
              RetrievalTask("irtr", obj.compute_irtr, needs=frozenset({"score_pairs"}), single_pass=False),
              # METER's ITM (its F30K / COCO lines: itm=0.5 beside irtr); its pairs are not the batch as given
              Task("itm", obj.compute_itm, needs=frozenset({"itm"}), single_pass=False, false_images=True),
              # boolq batches carry no image: only a backbone that reads text alone (plm) can take them
              Task("boolq", obj.compute_boolq, needs=frozenset({"classify", "text_only"})),
              Task("scienceqa", obj.compute_scienceqa)):
    TASKS.register(_task.name, test=dict(backbone=_TEST_BACKBONE[_task.name]))(lambda t=_task: t)
# captioning exists only as generation: on a classifying backbone it is refused for lacking "generate"
TASKS.register("caption", test=dict(backbone="test_vit_gpt2"))(
    lambda: Task("caption", lambda *a, **k: {}, needs=frozenset({"generate"}), generative=True))


def task_for(name: str, capabilities: frozenset[str] | set[str] | tuple[str, ...],
             generate_options: Mapping[str, int] | None = None) -> Task:
    """Task ``name`` as a backbone with ``capabilities`` runs it: the generative variant when the backbone can
    ``generate`` and not ``classify`` (or the task exists only as generation), else the registered task."""
    from vlpeft.tasks.generative import GEN_TASKS

    caps = set(capabilities)
    task = TASKS.build(name)
    # caption has no classifying form: a backbone that can generate always runs the generative one
    if "generate" in caps and name in GEN_TASKS and ("classify" not in caps or task.generative):
        return GEN_TASKS.build(name).with_options(**(generate_options or {}))
    return task


def build_tasks(loss_names: Mapping[str, float], capabilities: frozenset[str], backbone_name: str,
                generate_options: Mapping[str, int] | None = None, gate: str = ">=1") -> list[Task]:
    """The active tasks (``gate``: the backbone family's rule, ``vlpeft.backbones.task_gate``: ">=1" ViLT / DVP,
    ">0" METER); refuses one whose capability the backbone lacks, naming it.

    A backbone that can ``generate`` and not ``classify`` (vl_bart, vl_t5, vit_gpt2) gets the generative variant
    of vqa / gqa / nlvr2 (``vlpeft.tasks.generative``); ``caption`` is generative only. ``generate_options``:
    ``num_beams`` / ``max_new_tokens`` for decoding (``generative.generation_options(config)``)."""
    from vlpeft.tasks.heads import active_tasks

    tasks = [task_for(t, capabilities, generate_options) for t in active_tasks(loss_names, gate)]
    for t in tasks:
        missing = sorted(t.needs - set(capabilities))
        if missing:
            raise ValueError(f"task {t.name} needs the backbone capability {missing} which backbone={backbone_name} "
                             f"lacks (it has {sorted(capabilities)}); choose another backbone or task")
    return tasks


def compute(tasks: list[Task], infer: Callable, heads, batch: Mapping[str, Any],
            generate: bool = False) -> dict[str, torch.Tensor]:
    """Every task's outputs; ``loss`` = the unweighted sum of every value whose key contains "loss" (the originals).
    ``generate``: generative tasks also decode their answers (validation and test; see ``backbones._generative``).
    In a multi-task run a batch belongs to one task (``batch["task"]``): only that task computes."""
    out: dict[str, torch.Tensor] = {}
    own = batch.get("task") if isinstance(batch, Mapping) else None
    for t in tasks:
        gen = getattr(t, "generative", False)
        if own and len(tasks) > 1 and gen and own != t.name:
            continue
        out.update(t.compute(infer, heads, batch, generate=generate) if gen else t.compute(infer, heads, batch))
    out["loss"] = sum(v for k, v in out.items() if "loss" in k)
    return out


__all__ = ["TASKS", "RetrievalTask", "Task", "build_tasks", "compute", "task_for"]
