#!/usr/bin/env bash
# The main job: synthetic data → small ViLT stand-in pre-training → DAS search → train on the searched
# placement → test dump (VQAv2 submission JSON), on the CPU, in a few minutes.
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"
exec python run.py with demo "$@"
