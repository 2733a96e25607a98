"""Task heads, objectives, metrics and test dumps (VQA, GQA, SNLI-VE, NLVR2, IRTR)."""

from vlpeft.tasks.heads import active_tasks, build_heads, init_rank_output_from_itm, init_weights
from vlpeft.tasks.objectives import compute_tasks, score_for_search

__all__ = ["active_tasks", "build_heads", "compute_tasks", "init_rank_output_from_itm", "init_weights",
           "score_for_search"]
