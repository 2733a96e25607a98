"""The DAS repo's search entry point: ``python run_search.py with <named configs> key=value ...``.

The same sacred experiment as ``run.py`` with ``stage=search`` forced; a command line that asks for the train
stage (``stage=train``, ``das_train``, ``dvp_adaption_*``) or ``test_only=True`` is refused.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on a hub

from vlpeft.entrypoints import main  # noqa: E402

if __name__ == "__main__":
    main("search")
