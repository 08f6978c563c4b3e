#!/usr/bin/env bash
# What runs on the lent NVIDIA GPU machine for issue 6 (see ../shared/device/README.md): the
# CUDA-GL interop tests and the GPU benchmarks, everything written under $OUT (8 files at most).
#
# Once, here (not on the GPU machine):
#   mkdir -p .git/info   # prepare.sh appends to .git/info/exclude and stops when the folder is missing
#   ../shared/device/prepare.sh pytest pluggy iniconfig hypothesis attrs sortedcontainers tqdm pillow \
#       kornia kornia-rs matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six packaging
# Then, with the `run` tool, carry [".gl", ".whl"] and the command (one machine start serves both;
# each stays under the 10-minute limit of one command):
#   bash scripts/gpu-run.sh tests     # ~2 min: pytest tests/test_interop.py tests/test_bridge.py tests/test_context.py
#   bash scripts/gpu-run.sh bench     # ~8 min: bridge, pyramid (1024..8192), sampling, end_to_end
# Results come back under files_at: copy the JSON/PNG into bench/results/ (names carry the device).
set -uo pipefail
stage=${1:-all}
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"

# The preamble of ../shared/device/README.md: GL loaders, NVIDIA's EGL vendor, the carried wheels.
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit 1

python3 - <<'EOF' | tee "$OUT/info.json"
import importlib.util, json
missing = [m for m in ("torch", "numpy", "moderngl", "glcontext", "PIL", "pytest", "hypothesis", "tqdm", "kornia",
                       "matplotlib", "cuda.bindings") if importlib.util.find_spec(m.split(".")[0]) is None]
import torch, glmip
from glmip import _gl
report = {"missing_modules": missing, "torch": torch.__version__, "cuda": torch.version.cuda,
          "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
          "torch_uuids": [str(getattr(torch.cuda.get_device_properties(i), "uuid", None))
                          for i in range(torch.cuda.device_count())],
          "egl_devices": _gl.egl_devices()}
try:
    with glmip.Context(cuda_device=0) as ctx:
        report["context_info"] = ctx.info()
except Exception as error:  # reported, the tests below say more
    report["context_error"] = f"{type(error).__name__}: {error}"
print(json.dumps(report, indent=1, default=str))
EOF

status=0
if [ "$stage" = tests ] || [ "$stage" = all ]; then
  python3 -m pytest -p no:cacheprovider -ra -v tests/test_interop.py tests/test_bridge.py tests/test_context.py \
    2>&1 | tee "$OUT/tests.log"
  status=${PIPESTATUS[0]}
fi
if [ "$stage" = bench ] || [ "$stage" = all ]; then
  python3 -m bench.bridge --sizes-mib 4 16 64 256 --repeats 7 --out "$OUT/bridge.json" --plot "$OUT/bridge.png"
  python3 -m bench.pyramid --sizes 1024 2048 4096 8192 --repeats 5 --budget-s 8 --out "$OUT/pyramid.json" \
    --plot "$OUT/pyramid.png"
  python3 -m bench.sampling --sizes 1024 4096 --repeats 3 --budget-s 10 --out "$OUT/sampling.json"
  python3 -m bench.end_to_end --size 1024 --budget 256 --batch 64 --repeats 5 --out "$OUT/end_to_end.json"
fi
exit "$status"
