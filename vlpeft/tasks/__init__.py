"""Tasks, the fourth axis of a run: one file per task (``vqa``, ``gqa``, ``snli_ve``, ``nlvr2``, ``irtr``, ``itm``,
``boolq``, ``scienceqa``, ``csqa``, ``gsm8k``, ``caption``, the video ``tvqa``, ``how2qa``, ``tvc``, ``yc2c``), each a ``Task`` registered in ``TASKS`` (``vlpeft.tasks._base``).

A new task is one file with a ``@register_task`` class, imported once (here for the built-in ones; a plugin or a
test imports its own file) before the config is read."""

# registration order = the loss_names key order of the originals (a run's tasks compute in this order)
from vlpeft.tasks import itm  # noqa: F401, I001  (registration, ordered)
from vlpeft.tasks import vqa  # noqa: F401
from vlpeft.tasks import nlvr2  # noqa: F401
from vlpeft.tasks import irtr  # noqa: F401
from vlpeft.tasks import gqa  # noqa: F401
from vlpeft.tasks import snli_ve  # noqa: F401
from vlpeft.tasks import caption  # noqa: F401
from vlpeft.tasks import boolq  # noqa: F401
from vlpeft.tasks import scienceqa  # noqa: F401
from vlpeft.tasks import csqa  # noqa: F401
from vlpeft.tasks import gsm8k  # noqa: F401
from vlpeft.tasks import tvqa  # noqa: F401
from vlpeft.tasks import how2qa  # noqa: F401
from vlpeft.tasks import tvc  # noqa: F401
from vlpeft.tasks import yc2c  # noqa: F401
from vlpeft.tasks._base import (TASKS, Task, TaskSettings, active_tasks, build_task_heads, build_tasks, compute,
                                register_task, settings_from_config, task_for)
from vlpeft.tasks.heads import build_heads, init_rank_output_from_itm, init_weights
from vlpeft.tasks.objectives import compute_tasks, score_for_search

__all__ = ["TASKS", "Task", "TaskSettings", "active_tasks", "build_heads", "build_task_heads", "build_tasks",
           "compute", "compute_tasks", "init_rank_output_from_itm", "init_weights", "register_task",
           "score_for_search", "settings_from_config", "task_for"]
