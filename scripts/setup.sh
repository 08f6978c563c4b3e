#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian machine, sourced by scripts/demo.sh and scripts/test.sh:
# apt packages only where missing, a virtual environment in .venv, torch pinned (CPU build
# where there is no NVIDIA driver), glmip installed editable with its test and docs tools.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

apt_packages=(libegl1 libegl-mesa0 libgl1-mesa-dri libgles2 xvfb libgl1 libxtst6)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "glmip setup: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python_bin="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate

if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    pip install -q torch==2.13.0
  else
    # The CPU build: from a local wheel where pip's find-links has one, else PyTorch's CPU index.
    pip install -q "torch==2.13.0+cpu" 2>/dev/null ||
      pip install -q "torch==2.13.0+cpu" --index-url https://download.pytorch.org/whl/cpu
  fi
fi

stamp=".venv/.glmip-installed-$(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  pip install -q -e ".[test]"
  rm -f .venv/.glmip-installed-*
  touch "$stamp"
fi
