#!/usr/bin/env bash
# Install SISE Inspector into a virtual environment and check it with `inspector doctor`.
#
#   deploy/edge/install.sh [--prefix DIR] [--source PATH_OR_SPEC] [--flavour auto|cpu|gpu] [--config FILE]
#                          [--station]
#
# --prefix   where the virtual environment goes (default /opt/sise-inspector)
# --source   what to install: this repository (default), a wheel, or a package spec
# --flavour  onnxruntime flavour; auto = gpu when an NVIDIA driver answers (nvidia-smi), else cpu.
#            Exactly one of onnxruntime / onnxruntime-gpu is installed (they share one package).
# --config   config for the final `inspector doctor` check (default: the bundled example)
# --station  also install the review station's extra (`inspector station`)
set -euo pipefail

prefix=/opt/sise-inspector
source_spec="$(cd "$(dirname "$0")/../.." && pwd)"
flavour=auto
config=""
extras=""
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) prefix="$2"; shift 2 ;;
        --source) source_spec="$2"; shift 2 ;;
        --flavour) flavour="$2"; shift 2 ;;
        --config) config="$2"; shift 2 ;;
        --station) extras=",station"; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
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

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' || {
    echo "install.sh: Python 3.10 or newer is needed ($("$python" --version 2>&1))" >&2; exit 1; }

echo "install.sh: flavour $flavour, prefix $prefix, source $source_spec"
"$python" -m venv "$prefix"
"$prefix/bin/pip" install --quiet --upgrade pip
if [ -d "$source_spec" ]; then
    "$prefix/bin/pip" install --quiet "$source_spec[$flavour$extras]"
else
    "$prefix/bin/pip" install --quiet "$source_spec${extras:+[${extras#,}]}" \
        "$([ "$flavour" = gpu ] && echo onnxruntime-gpu || echo onnxruntime)"
fi
echo "install.sh: installed; running inspector doctor"
if [ -n "$config" ]; then
    exec "$prefix/bin/inspector" doctor -c "$config"
else
    exec "$prefix/bin/inspector" doctor
fi
