#!/usr/bin/env bash
# The CUDA checks, in one go, on a GPU machine (about 6 minutes on an H100, plus up to 12 for the audit
# throughput): `inspector doctor` and `inspector explain` with CUDA first, the gpu-marked tests,
# benchmarks/sise_engine.py in the configurations docs/benchmarks.md quotes, and
# benchmarks/audit_throughput.py on the GPU. Needs onnxruntime-gpu, a CUDA build of torch,
# onnxconverter-common and sqlalchemy (the results store) importable, and runs from the repository root:
#     bash benchmarks/gpu_check.sh [OUTDIR]        # log in OUTDIR/gpu_check.log (default: gpu-check/)
# Every step has a time limit and the script goes on after a failing step (each one's exit code is logged).
set -u
out=${1:-gpu-check}
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore::UserWarning

step() {
  local limit=$1
  shift
  echo "=== $* (limit ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@"
  echo "=== exit $? after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import onnxruntime as o, onnx, numpy; print('onnxruntime', o.__version__, o.get_available_providers(), 'onnx', onnx.__version__, 'numpy', numpy.__version__)"

sed -e "s#^model: .*#model: $PWD/inspector/example/defect_resnet.sise.onnx#" \
    -e "s#^runtime: .*#runtime: {providers: [CUDAExecutionProvider, CPUExecutionProvider]}#" \
    inspector/example/config.yaml > "$out/cuda.yaml"
step 120 python3 -m inspector doctor -c "$out/cuda.yaml"
explained=$(mktemp -d)  # not under OUTDIR: 24 files
step 120 python3 -m inspector explain -c "$out/cuda.yaml" $(ls inspector/example/samples/*.png | grep -v _mask) \
    --out "$explained"
python3 - "$explained" <<'EOF'
import json, pathlib, sys
for f in sorted(pathlib.Path(sys.argv[1]).glob("images/*.json")):  # explain writes its files into <out>/images
    j = json.loads(f.read_text())
    print(f.name, j.get("settings", {}).get("provider"), j["prediction"]["name"], j["timings_s"])
EOF

bench() { step 240 python3 benchmarks/sise_engine.py --provider cuda "$@"; }
# the issue's bar: full SISE of a ResNet-50 at 224x224 in fp16, and the PyTorch reference on the same GPU
bench --fp16 --chunk 128 --images 5 --cuda-option prefer_nhwc=1
step 400 python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_cuda.py
step 240 python3 benchmarks/cuda_vs_cpu.py
# fp32, with the fp32 PyTorch reference
bench --chunk 128 --images 3
# what each choice is worth: no NHWC preference, no padding of the last chunk, another chunk size, presets
bench --fp16 --chunk 128 --images 3 --no-reference
bench --fp16 --chunk 128 --images 5 --no-reference --cuda-option prefer_nhwc=1 --no-pad
bench --fp16 --chunk 256 --images 3 --no-reference --cuda-option prefer_nhwc=1
bench --fp16 --chunk 128 --images 3 --no-reference --cuda-option prefer_nhwc=1 --presets
# inspector audit's images per second on the GPU: one at a time, 8 together, Ray with 2 workers sharing it
# (the bundled model, then a ResNet-50 at 224x224 in fp16); needs ray[data] importable for the Ray line
step 300 python3 benchmarks/audit_throughput.py --provider cuda --images 200
step 400 python3 benchmarks/audit_throughput.py --provider cuda --model resnet50 --fp16 --images 100
echo "=== gpu_check done"
