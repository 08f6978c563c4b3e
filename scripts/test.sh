#!/usr/bin/env bash
# The test suite: lint; the docs site (mkdocs.yml, into site/: a broken link, nav entry or docstring fails it);
# then every test for real on the machine's OpenGL (Mesa llvmpipe without a GPU), then the integration
# stage (timm, open_clip, triton beside a CUDA build of torch, in .venv-integration).
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
ruff check glmip tests bench examples
NO_MKDOCS_2_WARNING=1 mkdocs build --strict  # not --quiet: it hides the warnings strict counts
python -m pytest -q "$@"
bash scripts/integration.sh
