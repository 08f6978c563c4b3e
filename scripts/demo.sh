#!/usr/bin/env bash
# The main job on the bundled image (or the image given): capability report and pyramid levels,
# a foveated render, an anti-aliased 75-degree warp, a relevance-driven token layout with its tokens
# (a TokenBatch), one viewer frame (headless), and a batch of views through a small ViT, coarse to fine by its
# class attention (glmip's own TokenClassifier: no timm in .venv). Everything lands in out/.
set -euo pipefail
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
image=("$@")
glmip build -v "${image[@]}" --method box --srgb -o out/coffee-levels.png
glmip render "${image[@]}" --gaze 0.45,0.35 -o out/coffee-foveated.png
glmip warp "${image[@]}" --tilt 75 -o out/coffee-warp.png
glmip tokens "${image[@]}" --gaze 0.45,0.35 --budget 256 --save-tokens out/coffee-tokens.pt -o out/coffee-layout.png
glmip view "${image[@]}" --headless --screenshot out/coffee-view.png --mode tokens --gaze 0.45,0.35
python examples/coarse_to_fine.py "${image[@]}"   # needs no timm: examples/vit_tokens.py is the timm one
