#!/usr/bin/env bash
# The test command: installs the environment if needed, then runs the whole test suite on the CPU, one pytest-xdist
# worker per core (at most 4: each holds its own models) with whole test files per worker, so a module's fixtures
# are built once. VLPEFT_TEST_WORKERS=N sets the count (0: one process); any pytest option may follow.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
CORES="$(nproc 2>/dev/null || echo 1)"
WORKERS="${VLPEFT_TEST_WORKERS:-$(( CORES < 4 ? CORES : 4 ))}"
exec python -m pytest -q -p no:cacheprovider -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@" tests
