#!/usr/bin/env bash
# Install SISE Inspector into a virtual environment and check it with `inspector doctor`.
#
#   deploy/edge/install.sh [--prefix DIR] [--source PATH_OR_SPEC] [--flavour auto|cpu|gpu] [--cuda 12|13]
#                          [--constraints FILE] [--config FILE] [--station]
#
# --prefix       where the virtual environment goes (default /opt/sise-inspector)
# --source       what to install: this repository (default), a wheel, or a package spec
# --flavour      onnxruntime flavour; auto = gpu when an NVIDIA driver answers (nvidia-smi), else cpu.
#                Exactly one of onnxruntime / onnxruntime-gpu is installed (they share one package).
# --cuda         gpu flavour: the box's CUDA major version. 12 takes onnxruntime-gpu < 1.27 (CUDA 12
#                builds), 13 takes >= 1.27 (CUDA 13 builds, driver >= 580). Default: no bound (the newest).
# --constraints  a pip constraints file for every package, pip and the build backend included, e.g.
#                deploy/constraints-cpu.txt or -gpu.txt: the images' exact versions (Python 3.12, x86_64;
#                the gpu file pins a CUDA 13 build of onnxruntime-gpu)
# --config       config for the final `inspector doctor` check (default: the bundled example)
# --station      also install the review station's extra (`inspector station`)
set -euo pipefail

prefix=/opt/sise-inspector
source_spec="$(cd "$(dirname "$0")/../.." && pwd)"
flavour=auto
config=""
extras=""
cuda=""
constraints=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --source) source_spec="$2"; shift 2 ;;
        --flavour) flavour="$2"; shift 2 ;;
        --cuda) cuda="$2"; shift 2 ;;
        --constraints) constraints="$2"; shift 2 ;;
        --config) config="$2"; shift 2 ;;
        --station) extras=",station"; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

if [ "$flavour" = auto ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        flavour=gpu
    else
        flavour=cpu
    fi
fi
case "$flavour" in
    cpu|gpu) ;;
    *) echo "install.sh: --flavour must be auto, cpu or gpu (got $flavour)" >&2; exit 2 ;;
esac
case "$cuda" in
    "") ort_gpu=onnxruntime-gpu ;;
    12) ort_gpu="onnxruntime-gpu<1.27" ;;
    13) ort_gpu="onnxruntime-gpu>=1.27" ;;
    *) echo "install.sh: --cuda must be 12 or 13 (got $cuda)" >&2; exit 2 ;;
esac
if [ -n "$cuda" ] && [ "$flavour" != gpu ]; then
    echo "install.sh: --cuda is for the gpu flavour (this is $flavour)" >&2; exit 2
fi
pip_c=()
if [ -n "$constraints" ]; then
    [ -f "$constraints" ] || { echo "install.sh: --constraints $constraints: no such file" >&2; exit 2; }
    constraints="$(cd "$(dirname "$constraints")" && pwd)/$(basename "$constraints")"
    pip_c=(-c "$constraints")
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
    echo "install.sh: Python 3.10 or newer is needed ($("$python" --version 2>&1))" >&2; exit 1; }

echo "install.sh: flavour $flavour, prefix $prefix, source $source_spec"
"$python" -m venv "$prefix"
"$prefix/bin/pip" install --quiet --upgrade "${pip_c[@]}" pip
if [ -n "$constraints" ] && "$prefix/bin/pip" install --help | grep -q -- --build-constraint; then
    pip_c+=(--build-constraint "$constraints")  # the build backend (setuptools) pinned too
fi
if [ -d "$source_spec" ]; then
    "$prefix/bin/pip" install --quiet "${pip_c[@]}" "$source_spec[$flavour$extras]" \
        ${cuda:+"$ort_gpu"}
else
    "$prefix/bin/pip" install --quiet "${pip_c[@]}" "$source_spec${extras:+[${extras#,}]}" \
        "$([ "$flavour" = gpu ] && echo "$ort_gpu" || echo onnxruntime)"
fi
echo "install.sh: installed; running inspector doctor"
if [ -n "$config" ]; then
    exec "$prefix/bin/inspector" doctor -c "$config"
else
    exec "$prefix/bin/inspector" doctor
fi
