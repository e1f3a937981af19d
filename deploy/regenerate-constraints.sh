#!/usr/bin/env bash
# Write deploy/constraints-cpu.txt and deploy/constraints-gpu.txt: every package the images install
# (deploy/Dockerfile.cpu, deploy/Dockerfile.gpu and its Ray variant), pinned to the versions pip picks
# today for Python 3.12 on Linux x86_64 (the images' Python and platform). Run it on such a machine, with
# PyPI reachable, from anywhere:
#
#   deploy/regenerate-constraints.sh            # PYTHON=python3.12 by default
#
# It builds this checkout's wheel, then asks pip what it would install into an empty environment
# (`pip install --dry-run --ignore-installed --report`) and keeps name==version for each package.
# pip's own configuration applies (PIP_INDEX_URL, pip.conf): point it at the index the images use.
# Review the diff (`git diff deploy/constraints-*.txt`) before committing: a new onnxruntime, numpy or
# opencv is a new engine; run the test suite on it.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
python=${PYTHON:-python3.12}
"$python" -c 'import platform, sys
ok = sys.version_info[:2] == (3, 12) and sys.platform == "linux" and platform.machine() == "x86_64"
sys.exit(0 if ok else 1)' || {
    echo "regenerate-constraints.sh: needs Python 3.12 on Linux x86_64 (PYTHON=$python is" \
         "$("$python" -c 'import platform, sys; print(sys.version.split()[0], sys.platform, platform.machine())' 2>&1))" >&2
    exit 1
}

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m venv "$work/venv"
pip="$work/venv/bin/pip"
"$pip" install --quiet --upgrade pip
mkdir "$work/src"  # what the Dockerfiles copy; a build in a copy leaves no build/ in the checkout
cp -r "$root/pyproject.toml" "$root/README.md" "$root/inspector" "$root/onnx_tools" "$work/src/"
"$pip" wheel --quiet --no-deps -w "$work/dist" "$work/src"
wheel="$(ls "$work"/dist/sise_inspector-*.whl)"

# resolve NAME DOCKERFILE COVERS REQUIREMENT...: writes deploy/constraints-NAME.txt
resolve() {
    local name=$1 dockerfile=$2 covers=$3
    shift 3
    "$pip" install --dry-run --ignore-installed --quiet --report "$work/$name.json" "$@"
    local reqs
    reqs="$(printf '%s ' "$@" | sed "s|$wheel|.|g")"
    "$work/venv/bin/python" - "$work/$name.json" "$here/constraints-$name.txt" "$dockerfile" "$covers" "$reqs" <<'EOF'
import datetime
import json
import re
import sys

import pip

report, out, dockerfile, covers, reqs = sys.argv[1:]
pins = {}
for item in json.load(open(report))["install"]:
    meta = item["metadata"]
    name = re.sub(r"[-_.]+", "-", meta["name"]).lower()
    if name != "sise-inspector":
        pins[name] = meta["version"]
header = f"""\
# Constraints for {dockerfile} (`pip install -c`): every package the image installs, pinned.
# Covers {covers}.
# Resolved by pip {pip.__version__} for Python 3.12 on Linux x86_64 on {datetime.date.today()}, for
#   {reqs.strip()}
# Regenerate with deploy/regenerate-constraints.sh (Python 3.12 on Linux x86_64, PyPI reachable); it writes
# both constraints files from `pip install --dry-run --ignore-installed --report`. Versions only, no hashes.
"""
with open(out, "w") as f:
    f.write(header)
    for name in sorted(pins):
        f.write(f"{name}=={pins[name]}\n")
print(f"{out}: {len(pins)} packages")
EOF
}

# pip and setuptools: the images first install this pip, then build the project with this setuptools
# (--build-constraint), so the build is pinned too.
resolve cpu deploy/Dockerfile.cpu "EXTRAS=cpu (the default) and EXTRAS=cpu,postgres" \
    "$wheel[cpu,postgres]" pip setuptools
resolve gpu deploy/Dockerfile.gpu \
    "EXTRAS=gpu (the default), and the Ray image: EXTRAS=gpu,postgres,ray PACKAGES=ray[default]" \
    "$wheel[gpu,postgres,ray]" "onnxruntime-gpu>=1.27" "ray[default]" pip setuptools
