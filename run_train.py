"""The DAS repo's train entry point: ``python run_train.py with <named configs> key=value ...``.

The same sacred experiment as ``run.py`` with ``stage=train`` forced; a command line that asks for the search
stage (``stage=search``, ``das_search``, ``dvp_search_*``) is refused. ``test_only=True`` evaluates, as in run.py.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights come from local paths; never wait on a hub

from vlpeft.entrypoints import main  # noqa: E402

if __name__ == "__main__":
    main("train")
