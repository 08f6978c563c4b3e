#!/usr/bin/env bash
# The integration stage: glmip beside a CUDA build of torch (which ships triton), timm and open_clip,
# in its own virtual environment .venv-integration (the main .venv keeps the CPU torch). Runs the
# tests that need them: real timm ViTs, open_clip queries, and the process tests, among them
# triton/timm/torch.compile after a Context (a segfault before glmip preloaded triton's LLVM).
# Idempotent: the venv is built once and reinstalled only when pyproject.toml or this script change.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

torch_pins=(torch==2.14.1 torchvision==0.29.1)  # PyPI's CUDA builds; they run on the CPU too
tests=(tests/test_process.py tests/test_query_openclip.py tests/test_nn_timm.py tests/test_nn.py tests/test_data_torchvision.py tests/test_fpn.py)

venv=.venv-integration
python_bin="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python_bin" -m venv "$venv"
py="$venv/bin/python"

stamp="$venv/.glmip-installed-$(cat pyproject.toml "${BASH_SOURCE[0]}" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  echo "glmip integration: installing ${torch_pins[*]}, timm, open_clip_torch into $venv" >&2
  "$py" -m pip install -q "${torch_pins[@]}"
  "$py" -m pip install -q -e ".[integration]" "${torch_pins[@]}"
  "$py" -c "import torch, torchvision, triton, timm, open_clip"  # each of them imports, or the stage fails here
  rm -f "$venv"/.glmip-installed-*
  touch "$stamp"
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
"$py" -m pytest -q -p no:cacheprovider -rs "${tests[@]}" "$@" | tee "$log"
# A skip here means a dependency this stage exists for did not load: that is a failure.
if grep -Eq "[0-9]+ skipped" "$log"; then
  echo "glmip integration: tests were skipped (see above); this stage must run all of them" >&2
  exit 1
fi
