"""The evaluation, in one flow: load (``records``: read and check what each version answered) → compute
(``compute``: version sets, every registered method and score) → report (``report``: tables, statistics,
``methods.json``, figures). The two evaluation scripts and the paper's comparison call :func:`run_evaluation`."""

from __future__ import annotations

import pandas as pd

from evaluation.compute import (
    DEEPFAILGUARD,
    Evaluation,
    MethodLog,
    dataset_classes,
    evaluate_datasets,
    evaluate_set,
    evaluate_sets,
    evaluate_shifts,
    failure_prediction_rows,
    predict_set,
    region_of,
    set_columns,
    version_sets,
)
from evaluation.records import (
    VersionRecord,
    canonical,
    canonical_key,
    check_dataset,
    load_cached_record,
    load_cached_versions,
)
from evaluation.report import (
    RESULT_COLUMNS,
    format_summary,
    format_takeaway,
    format_whereabouts,
    provenance,
    summarize,
    write_evaluation,
)
from evaluation.selective import Abstention
from storage.shifts import NO_SHIFT

__all__ = ["DEEPFAILGUARD", "RESULT_COLUMNS", "Abstention", "Evaluation", "MethodLog", "VersionRecord", "canonical",
           "canonical_key", "check_dataset", "dataset_classes", "evaluate_and_report", "evaluate_datasets",
           "evaluate_set", "evaluate_sets", "evaluate_shifts", "failure_prediction_rows", "format_summary",
           "format_takeaway", "format_whereabouts",
           "load_cached_record",
           "load_cached_versions", "predict_set", "provenance", "region_of", "run_evaluation", "set_columns",
           "summarize", "version_sets", "write_evaluation"]


def run_evaluation(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                   output, sets_by_dataset: dict | None = None, progress: bool = False,
                   abstention: Abstention | None = None, by_shift: dict | None = None) -> pd.DataFrame:
    """Evaluate every dataset's version sets and write results, summary, failure prediction, ``methods.json``
    and figures; returns the summary.

    ``sets_by_dataset``: explicit ``(setting, members)`` per dataset (the paper's configurations) instead
    of the grid of ``models`` × ``bugs_by_dataset``. Everything is computed before anything is written,
    so a failure leaves no partial CSV. ``by_shift`` (shift → ``(records_by_dataset, truths_by_dataset)``) evaluates
    the test sets under several shifts instead (the two dicts are then not read).
    """
    by_shift = by_shift or {NO_SHIFT: (records_by_dataset, truths_by_dataset)}
    evaluation = evaluate_shifts(by_shift, models, bugs_by_dataset, sets_by_dataset, progress, abstention)
    return write_evaluation(evaluation, records_by_dataset, truths_by_dataset, output, by_shift)


def evaluate_and_report(records_by_dataset: dict, truths_by_dataset: dict, models: list[str], bugs_by_dataset: dict,
                        output, progress: bool = False, abstention: Abstention | None = None,
                        by_shift: dict | None = None) -> None:
    """:func:`run_evaluation`, then the summary table and where the files went, on stdout."""
    summary = run_evaluation(records_by_dataset, truths_by_dataset, models, bugs_by_dataset, output,
                             progress=progress, abstention=abstention, by_shift=by_shift)
    print(format_summary(summary))
    print(format_takeaway(summary))
    print(format_whereabouts(output))
