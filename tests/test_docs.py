"""The Markdown files hold no dangling references: every relative link names a file of the repository
and every #anchor a heading of that file; the README keeps the two commands CI runs."""

from __future__ import annotations

import glob
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKDOWN = sorted({*glob.glob(os.path.join(ROOT, "*.md")), *glob.glob(os.path.join(ROOT, "docs", "*.md")),
                   *glob.glob(os.path.join(ROOT, "deploy", "*.md")),
                   *glob.glob(os.path.join(ROOT, "inspector", "example", "*.md"))})
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lstrip("#").strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"```.*?```", "", f.read(), flags=re.DOTALL)  # no headings inside code blocks
    return {slug(line) for line in text.splitlines() if line.startswith("#")}


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_resolve(path):
    with open(path, encoding="utf-8") as f:
        links = LINK.findall(re.sub(r"```.*?```", "", f.read(), flags=re.DOTALL))
    for link in links:
        if re.match(r"[a-z]+:", link):  # http:, https:, mailto:
            continue
        target, _, anchor = link.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), target)) if target else path
        assert os.path.exists(resolved), f"{os.path.relpath(path, ROOT)}: {link} -> no such file"
        assert resolved.startswith(ROOT + os.sep), f"{link} points outside the repository"
        if anchor and resolved.endswith(".md"):
            assert anchor in anchors(resolved), f"{os.path.relpath(path, ROOT)}: {link} -> no such heading"


def test_the_readme_keeps_the_commands_ci_runs():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    for marker in ("<!-- ci:setup -->", "<!-- ci:test -->"):
        after = text.split(marker, 1)[1].lstrip()
        assert after.startswith("```bash\n") and ".venv/bin/" in after.split("\n")[1], marker


def test_the_operator_table_says_what_the_export_does():
    """docs/operators.md is `python -m onnx_tools ops`: every operator row there says what the code says
    for it (rows are compared op by op, so another onnx version with more operators does not matter), and
    every op with a gradient builder is in it as differentiated."""
    from onnx_tools.gradients.registry import supported_ops
    from onnx_tools.op_support import status_table

    with open(os.path.join(ROOT, "docs", "operators.md"), encoding="utf-8") as f:
        documented = {}
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 3 and cells[0] not in ("operator", "---"):
                documented[cells[0]] = (cells[1], cells[2])
    now = {op: (status, note) for op, status, note in status_table()}
    for op in documented.keys() & now.keys():
        assert documented[op] == now[op], f"{op}: run python -m onnx_tools ops > docs/operators.md"
    assert all(documented.get(op, ("",))[0] == "differentiated" for op in supported_ops())
