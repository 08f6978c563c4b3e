#!/usr/bin/env bash
# The main job on the bundled image (or the image given): capability report and pyramid levels,
# a foveated render, a relevance-driven token layout with its tokens, one viewer frame (headless),
# and the tokens through a ViT. Everything lands in out/.
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
image=("$@")
glmip build "${image[@]}" --method box --srgb -o out/coffee-levels.png
glmip render "${image[@]}" --gaze 0.45,0.35 -o out/coffee-foveated.png
glmip tokens "${image[@]}" --gaze 0.45,0.35 --budget 256 --save-tokens out/coffee-tokens.pt -o out/coffee-layout.png
glmip view "${image[@]}" --headless --screenshot out/coffee-view.png --mode tokens --gaze 0.45,0.35
python examples/vit_tokens.py "${image[@]}"
