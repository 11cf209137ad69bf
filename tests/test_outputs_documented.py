"""Every column the code writes is named in ``docs/outputs.md``, in the section of its file: the tables of the
session pipeline as written (results, summary, failure prediction, selective), and the column lists of the
tables the pipeline does not write (latency, the paper comparison, fault validation and search)."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from conftest import REPO

from evaluation import fault_validation, paper
from evaluation.deployment import LATENCY_COLUMNS
from evaluation.report import RESULT_COLUMNS
from evaluation.selective import COLUMNS as SELECTIVE_COLUMNS
from storage import layout

OUTPUTS = REPO / "docs" / "outputs.md"

#: the tables whose columns are fixed lists in the code
LISTED = {"results.csv": RESULT_COLUMNS, "selective.csv": SELECTIVE_COLUMNS, "latency.csv": LATENCY_COLUMNS,
          "paper_comparison.csv": paper.COMPARISON_COLUMNS, "fault_validation.csv": fault_validation.COLUMNS,
          "fault_search.csv": fault_validation.SEARCH_COLUMNS}
#: the tables of the session pipeline, read as written
WRITTEN = (layout.RESULTS_CSV, layout.SUMMARY_CSV, layout.FAILURE_PREDICTION_CSV, layout.SELECTIVE_CSV)


def section(name: str) -> str:
    """The text of the section of ``docs/outputs.md`` whose heading names ``name`` in backticks."""
    parts = re.split(r"^## ", OUTPUTS.read_text(), flags=re.M)
    found = [part for part in parts if part.startswith(f"`{name}`")]
    assert len(found) == 1, f"docs/outputs.md has no (or several) section ## `{name}`"
    return found[0]


def documented(text: str) -> list[re.Pattern]:
    """The column names a section gives in backticks, a ``{placeholder}`` standing for any name part
    (``auroc_{score}``, ``e{k}``)."""
    names = [token for token in re.findall(r"`([^`]+)`", text) if re.fullmatch(r"[a-z_][a-z0-9_]*(\{\w+\}[a-z0-9_]*)*",
                                                                                  token)]
    return [re.compile(re.sub(r"\\\{\w+\\\}", "[a-z0-9_]+", re.escape(name)) + "$") for name in names]


def undocumented(name: str, columns) -> list[str]:
    patterns = documented(section(name))
    return [column for column in columns if not any(pattern.match(column) for pattern in patterns)]


def test_the_placeholders_match_what_they_stand_for():
    patterns = documented("`auroc_{score}`, `e{k}` and `dataset`; not `--shifts` nor `fog:3`")
    assert [p.pattern for p in patterns] == ["auroc_[a-z0-9_]+$", "e[a-z0-9_]+$", "dataset$"]
    assert patterns[0].match("auroc_max_softmax") and not patterns[2].match("datasets")


@pytest.mark.parametrize("name", sorted(LISTED))
def test_every_listed_column_is_documented(name):
    assert undocumented(name, LISTED[name]) == [], f"docs/outputs.md, section {name}"


def test_every_column_the_pipeline_writes_is_documented(pipeline):
    for name in WRITTEN:
        columns = list(pd.read_csv(pipeline.out / name, nrows=0).columns)
        assert len(columns) > 5, name
        assert undocumented(name, columns) == [], f"docs/outputs.md, section {name}"
