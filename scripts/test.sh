#!/usr/bin/env bash
# The test command: installs the environment if needed, then runs the whole test suite on the CPU.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec python -m pytest -q -p no:cacheprovider "$@" tests
