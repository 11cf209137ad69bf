"""Every Python snippet of the README runs as pasted: each block in a fresh interpreter, in a folder whose
``dfg_results`` holds the session pipeline's results (demo-sized data), with the repository importable; a
block that registers a name leaves it in its registry."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import REPO, SCRIPT_ENV

pytestmark = pytest.mark.slow

README = REPO / "README.md"
#: after a block, what its registrations left in the registries
PROBE = ("\nimport ModelManager, selection\n"
         "print('REGISTERED', *ModelManager.MODELS, *selection.METHODS, *selection.SCORES)\n")


def python_blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def registered_names(block: str) -> set[str]:
    """The names a block registers: a class's ``name = "…"``, a ``name="…"`` argument, a one-liner's first
    argument."""
    return set(re.findall(r'name\s*=\s*"(\w+)"', block)) | set(re.findall(r'torchvision_architecture\("(\w+)"', block))


def test_the_readme_has_python_snippets():
    blocks = python_blocks()
    assert len(blocks) >= 3
    assert any("dfg_results/" in block for block in blocks)  # one reads the outputs
    assert any(registered_names(block) for block in blocks)  # one adds plugins


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_a_readme_snippet_runs_as_pasted(pipeline, tmp_path, index):
    block = python_blocks()[index]
    shutil.copytree(pipeline.out, tmp_path / "dfg_results")
    env = {**os.environ, **SCRIPT_ENV, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", block + PROBE], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, f"README block {index} failed:\n{block}\n{result.stderr[-3000:]}"
    registered = set(result.stdout.split("REGISTERED", 1)[1].split())
    assert registered_names(block) <= registered, block
