"""Whether a fault bites: its versions' accuracies over seeds against the healthy recipe's, decided as DeepCrime
(Humbatova et al., ISSTA 2021) decides that a mutant is killed.

The test is SciPy's two-sided Mann-Whitney U on the two samples of test accuracies; the effect size is
Vargha and Delaney's A12, the probability that a healthy run scores above a faulty one (ties count half),
which is U / (n m). A12 rather than Cohen's d: it is the rank test's own effect size, it assumes nothing
of the accuracies' distribution (bounded, often skewed by one bad seed) and stays defined when a sample has
no spread, where d divides by zero. A fault is *killed* when p < ``ALPHA`` and A12 is at least the medium
effect ``MEDIUM_EFFECT`` in the harmful direction (faulty runs score lower: a "fault" that makes a version
better is no fault to tolerate); *trivial* when its mean accuracy is at or below chance + ``TRIVIAL_MARGIN``
(a wreck, which any detector catches). With three seeds a side the exact test's smallest p is 0.1, so a
kill needs at least four seeds a side (p = 0.029 when the samples do not overlap).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

import FaultInjector
from storage.files import atomic_write_table
from utils import SEED, UsageError

ALPHA = 0.05
#: Vargha and Delaney's (2000) thresholds on A12: 0.56 small, 0.64 medium, 0.71 large
MEDIUM_EFFECT = 0.64
TRIVIAL_MARGIN = 0.05
#: a row's identity: one fault of one architecture trained for a number of epochs (another recipe is another row)
KEY = ("dataset", "model", "bug", "epochs")
COLUMNS = ("dataset", "model", "bug", "fault", "seeds", "healthy_mean", "healthy_std", "faulty_mean", "faulty_std",
           "p_value", "effect_size", "killed", "trivial", "family", "parameter", "value", "epochs")
SEARCH_COLUMNS = ("dataset", "model", "bug", "fault", "parameter", "value", "seeds", "faulty_mean", "faulty_std",
                  "p_value", "effect_size", "killed", "trivial", "weakest_killing", "epochs")


def seed_list(count: int, first: int = SEED) -> tuple[int, ...]:
    """The seeds of a validation: ``count`` of them from the pipeline's seed up (so the first is the pipeline's
    own version, trained once for both)."""
    return tuple(range(first, first + count))


@dataclass(frozen=True)
class Comparison:
    """The rank test and effect size of one faulty sample against the healthy one."""

    p_value: float
    effect_size: float  # A12: P(healthy > faulty) + P(equal) / 2
    killed: bool


def compare(healthy, faulty) -> Comparison:
    """Mann-Whitney U (two-sided) and A12 of the healthy accuracies over the faulty ones; killed as the module
    says. Identical samples give p = 1 (SciPy's answer: no evidence of a difference)."""
    healthy, faulty = np.asarray(healthy, dtype=float), np.asarray(faulty, dtype=float)
    if len(healthy) == 0 or len(faulty) == 0:
        raise ValueError("each sample needs at least one accuracy")
    test = mannwhitneyu(healthy, faulty, alternative="two-sided")
    p_value = min(1.0, float(test.pvalue))
    effect = float(test.statistic) / (len(healthy) * len(faulty))
    return Comparison(p_value, effect, bool(p_value < ALPHA and effect >= MEDIUM_EFFECT))


def smallest_p(seeds: int) -> float:
    """The smallest two-sided p-value the exact rank test can give two samples of ``seeds`` accuracies (reached when
    they do not overlap): 2 / C(2n, n)."""
    return min(1.0, 2 / math.comb(2 * seeds, seeds))


def least_killing_seeds(alpha: float = ALPHA) -> int:
    """The fewest seeds a side with which a fault can be killed at all (4 at p < 0.05)."""
    seeds = 1
    while smallest_p(seeds) >= alpha:
        seeds += 1
    return seeds


def seeds_warning(seeds: int) -> str | None:
    """What a validation at ``seeds`` seeds a side cannot find (None: it can kill a fault)."""
    least = least_killing_seeds()
    if seeds >= least:
        return None
    return (f"--seeds {seeds}: no fault can be killed with fewer than {least} seeds a side (the rank test's smallest "
            f"p-value at {seeds} is {smallest_p(seeds):.3g}, not below {ALPHA}): every row will read killed False, "
            f"and --bugs validated will keep no fault; use --seeds {least} or more")


def is_trivial(faulty_mean: float, num_classes: int) -> bool:
    """A wreck: mean accuracy at or below chance plus ``TRIVIAL_MARGIN``."""
    return bool(faulty_mean <= 1.0 / num_classes + TRIVIAL_MARGIN + 1e-12)


def summary(dataset: str, model: str, bug: int, healthy, faulty, num_classes: int, epochs: int,
            value: float | None = None) -> dict:
    """One row of ``fault_validation.csv``: both samples' mean and standard deviation (ddof 1), the test, the
    verdicts, what the fault was (its family, a parametric fault's parameter and value) and the epochs trained."""
    fault = FaultInjector.FAULTS[bug]
    result = compare(healthy, faulty)
    faulty_mean = float(np.mean(faulty))
    return {"dataset": dataset, "model": model, "bug": bug, "fault": fault.name, "seeds": len(faulty),
            "healthy_mean": float(np.mean(healthy)), "healthy_std": _std(healthy), "faulty_mean": faulty_mean,
            "faulty_std": _std(faulty), "p_value": result.p_value, "effect_size": result.effect_size,
            "killed": result.killed, "trivial": is_trivial(faulty_mean, num_classes), "family": fault.family,
            "parameter": fault.parameter.name if fault.parameter else "", "value": value, "epochs": epochs}


def _std(values) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def merge_rows(path: Path, rows: list[dict], columns=COLUMNS, key=KEY) -> pd.DataFrame:
    """``rows`` written over the file's rows of the same key (the others kept: a validation run in parts
    accumulates), sorted by key, atomically."""
    table = pd.DataFrame(rows, columns=list(columns))
    if path.is_file():
        old = read_table(path, columns)
        kept = old[~old.set_index(list(key)).index.isin(table.set_index(list(key)).index)]
        table = pd.concat([kept, table], ignore_index=True) if len(kept) else table
    table = table.sort_values(list(key), kind="stable").reset_index(drop=True)
    atomic_write_table(path, table, columns)
    return table


def read_table(path: Path, columns=COLUMNS) -> pd.DataFrame:
    """A validation or search table, its columns checked (one clear line for a file of another kind)."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {path}: {exc}") from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise UsageError(f"{path} lacks the column(s) {', '.join(missing)}; rerun main_validate_faults.py --force")
    for flag in ("killed", "trivial", "weakest_killing"):  # every row, whichever rows a run reads
        if flag in table.columns:
            words = table[flag].astype(str).str.lower()
            _refuse_cells(path, table, flag, ~words.isin(["true", "false"]), "True or False")
            table[flag] = words == "true"
    for number in ("faulty_mean", "p_value", "effect_size", "bug", "seeds"):
        if number in table.columns:
            values = pd.to_numeric(table[number], errors="coerce")
            _refuse_cells(path, table, number, values.isna(), "a number")
            table[number] = values
    return table


def _refuse_cells(path: Path, table: pd.DataFrame, column: str, bad, expected: str) -> None:
    """A UsageError naming the first cell of ``column`` that is not ``expected`` (``bad`` marks them)."""
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        cell = table[column].iloc[row]
        shown = "an empty cell" if pd.isna(cell) else repr(str(cell))
        raise UsageError(f"{path}: row {row + 2}, column {column}: {shown} is not {expected} "
                         f"({int(bad.sum())} such cell(s)); the table is damaged: restore it, or delete it and rerun "
                         "main_validate_faults.py (finished seeds are skipped)")


def validated_faults(path: Path) -> dict[tuple[str, str, int], tuple[int, ...]]:
    """``(dataset, model, epochs) -> faults`` killed and not trivial, from ``fault_validation.csv``."""
    table = read_table(path)
    if table["epochs"].isna().any():
        raise UsageError(f"{path} has rows without their training epochs (an older table); rerun "
                         "main_validate_faults.py for them (finished seeds are skipped)")
    bites = table["killed"] & ~table["trivial"]
    return {(str(dataset).upper(), str(model).lower(), int(epochs)): tuple(sorted(int(b) for b in group["bug"][bites]))
            for (dataset, model, epochs), group in table.groupby(["dataset", "model", "epochs"], sort=True)}


# ---------------------------------------------------------------------------------------------
# --search: the weakest parameter value still killed
# ---------------------------------------------------------------------------------------------

def weak_end(parameter: FaultInjector.FaultParameter) -> float:
    """The bound at which the fault does the least (the healthy setting, or close to it)."""
    return parameter.low if parameter.stronger == "high" else parameter.high


def strong_end(parameter: FaultInjector.FaultParameter) -> float:
    return parameter.high if parameter.stronger == "high" else parameter.low


def midpoint(weak: float, strong: float, log: bool) -> float:
    """Halfway between two values, geometrically for a parameter searched on a log scale; rounded to three
    significant digits so that values (and their folders) read plainly."""
    middle = math.sqrt(weak * strong) if log else (weak + strong) / 2
    return float(f"{middle:.3g}")


def search_label(bug: int, value: float) -> str:
    """The folder name of a searched value's versions: ``bug14_weight_decay0.01``."""
    return f"bug{bug}_{FaultInjector.FAULTS[bug].parameter.name}{value:g}"


def bisect(parameter: FaultInjector.FaultParameter, default_killed: bool, killed_at, steps: int) -> float | None:
    """The weakest value found still killed, or None if none within the bounds is: ``killed_at(value)`` trains and
    tests one value (True, False, or None when it could not be measured, which stops the search).

    The default value's verdict (the validation's) places the first interval: killed, the answer lies between the
    weak end and the default; not killed, between the default and the strong end, which is measured first. Each
    of ``steps`` halvings then keeps the half whose ends disagree. The weak end is taken as not killed unmeasured:
    it is the healthy setting or next to it."""
    weak, strong = weak_end(parameter), parameter.default
    if not default_killed:
        weak, strong = parameter.default, strong_end(parameter)
        if not killed_at(strong):
            return None
    for _ in range(steps):
        middle = midpoint(weak, strong, parameter.log)
        if middle in (weak, strong):
            break
        verdict = killed_at(middle)
        if verdict is None:
            break
        weak, strong = (weak, middle) if verdict else (middle, strong)
    return strong


def dropped_faults(path: Path, wanted) -> list[str]:
    """Why ``--bugs validated`` leaves out each fault of ``fault_validation.csv`` it drops for the ``wanted``
    ``(dataset, model, epochs)``, one line per architecture: not killed (its p-value, effect size and seeds), or
    trivial (its accuracy)."""
    table = read_table(path)
    lines = []
    for (dataset, model, epochs), group in table.groupby(["dataset", "model", "epochs"], sort=True):
        if (str(dataset).upper(), str(model).lower(), int(epochs)) not in wanted:
            continue
        reasons = [f"{int(row.bug)} ({row.fault}: "
                   + (f"trivial, accuracy {row.faulty_mean:.3f}" if row.trivial else
                      f"not killed, p = {row.p_value:.3g} and A12 = {row.effect_size:.2f} at {int(row.seeds)} seeds")
                   + ")" for row in group.itertuples() if not row.killed or row.trivial]
        if reasons:
            lines.append(f"--bugs validated drops {model}'s fault(s) on {dataset} at {int(epochs)} "
                         f"epoch{'' if int(epochs) == 1 else 's'}: "
                         + ", ".join(reasons))
    return lines
