#!/usr/bin/env bash
# The main job on the bundled image: capability report, then the pyramid's levels as a PNG contact sheet.
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
glmip build --method box --srgb -o out/coffee-levels.png "$@"
