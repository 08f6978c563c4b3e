#!/usr/bin/env bash
# The one command for a lent NVIDIA GPU machine (see ../shared/device/README.md and DEVELOPERS.md). Modes:
#   pipeline (default, ~5 minutes): `glmip info`, the interop/bridge/context/tokenize/batch tests, the crash check,
#            the batch pipeline table (bench.pipeline: from CUDA uint8 tensors and host arrays at 256², 1024², 2048²
#            against the torch-on-CUDA peer and the host->device copy), end to end against dense for a
#            ViT-B-sized encoder (dim 768, depth 12), the bridge and pyramid benchmarks;
#   learn (~6.5 minutes): the learning study at 512²;
#   all: both (~11 minutes: two calls are safer).
# Every stage has its own time limit and writes under $OUT (8 files at most) even when a stage fails.
#
# Once, here (not on the GPU machine):
#   mkdir -p .git/info && ../shared/device/prepare.sh pypng    # .gl/ (GL/EGL loaders) and .whl/ (moderngl, glcontext,
#                                                              # glfw, pypng for Python 3.12); the image has the rest
# Then with the `run` tool: carry [".gl", ".whl"], command `bash scripts/gpu-run.sh [pipeline|learn]`, timeout_s 400;
# give_back after.
# Results come back under files_at: copy the JSON/PNG into bench/results/ and docs/ (names carry the device).
set -uo pipefail
only=${1:-pipeline}  # pipeline | learn | all
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
begin=$(date +%s)
stage() { echo; echo "=== $1 ($(( $(date +%s) - begin )) s in)"; }

# The preamble of ../shared/device/README.md: GL loaders, NVIDIA's EGL vendor, the carried wheels.
stage preamble
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

stage info
[ "$only" = learn ] || timeout 60 python3 - <<'PY' > "$OUT/info.json"
import importlib.util, json
missing = [m for m in ("torch", "numpy", "moderngl", "glcontext", "PIL", "png", "pytest", "hypothesis", "tqdm",
                       "matplotlib", "timm", "cuda.bindings", "cuda.core")
           if importlib.util.find_spec(m.split(".")[0]) is None]
import torch
import glmip
from glmip.gl import raw
report = {"missing_modules": missing, "torch": torch.__version__, "cuda": torch.version.cuda,
          "cuda_devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
          "torch_uuids": [str(getattr(torch.cuda.get_device_properties(i), "uuid", None))
                          for i in range(torch.cuda.device_count())]}
try:
    report["egl_devices"] = raw.egl_devices()
    with glmip.Context(cuda_device=0) as ctx:
        report["context_info"] = ctx.info()
except Exception as error:  # reported; the tests below say more
    report["context_error"] = f"{type(error).__name__}: {error}"
print(json.dumps(report, indent=1, default=str))
PY
[ "$only" = learn ] || head -60 "$OUT/info.json"

if [ "$only" != pipeline ]; then
stage "learning study"
# one step count for every input, chosen from their timed steps so the study ends within its limit
learn_s=375
TQDM_DISABLE=1 timeout $learn_s python3 -m bench.learn --device cuda --precision bf16 --workers 15 --size 512 \
  --budgets 64 100 256 --code-length 4 --train 20000 --val 500 --test 1000 --batch 64 --lr 2e-3 \
  --dim 128 --depth 4 --heads 4 --steps 20000 --train-budget-s 1000 --deadline-s $((learn_s - 25)) \
  --out "$OUT/learn.json" --plot "$OUT/learn.png" 2>&1 | tail -40
fi
[ "$only" = learn ] && exit 0

stage "interop, bridge, context, tokenize and batch tests"
timeout 90 python3 -m pytest -p no:cacheprovider -q -ra -x --timeout 40 tests/test_interop.py tests/test_bridge.py \
  tests/test_context.py tests/test_tokenize.py tests/test_batch.py > "$OUT/tests.log" 2>&1
echo "pytest exit $?"; tail -30 "$OUT/tests.log"

stage "crash check: Context, then timm and torch.compile"
timeout 50 python3 - <<'PY' 2>&1 | tail -5
import torch, glmip
ctx = glmip.Context()
import timm
model = timm.create_model("vit_tiny_patch16_224", pretrained=False).cuda().eval()
compiled = torch.compile(model)
with torch.no_grad():
    out = compiled(torch.randn(2, 3, 224, 224, device="cuda"))
print("crash check: ok", tuple(out.shape), ctx.info()["renderer"])
ctx.close()
PY

stage "batch pipeline: from CUDA tensors and host arrays, against torch on CUDA and the plain copy"
TQDM_DISABLE=1 timeout 75 python3 -m bench.pipeline --sizes 256 1024 2048 --batches 64 64 16 --repeats 5 \
  --out "$OUT/pipeline.json" 2>&1 | tail -12
stage "end to end against dense, ViT-B-sized encoder"
timeout 75 python3 -m bench.end_to_end --size 1024 --budget 256 --batch 64 --repeats 3 --dim 768 --depth 12 \
  --heads 12 --out "$OUT/end_to_end.json" 2>&1 | tail -12
stage "bridge and pyramid benchmarks"
timeout 40 python3 -m bench.bridge --sizes-mib 4 64 256 --repeats 5 --out "$OUT/bridge.json" 2>&1 | tail -12
timeout 25 python3 -m bench.pyramid --sizes 1024 4096 8192 --repeats 3 --budget-s 5 --out "$OUT/pyramid.json" 2>&1 \
  | tail -12
stage done
ls -la "$OUT"
