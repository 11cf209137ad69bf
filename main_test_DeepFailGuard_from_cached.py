"""Step 4a: evaluate DeepFailGuard from the cached test distances (ours or the paper's release).

Every combination of 2-5 distinct architectures, fault settings "all versions carry fault i" and
"one carries fault i, the rest are healthy"; methods: every registered one (``selection``: DeepFailGuard,
its ablations and DeepFailGuard+, voting, soft voting, stacking, the softmax scores, dynamic selection).
Writes ``{output}/results.csv``, ``summary.csv``, ``failure_prediction.csv`` and
``figures/methods_{DATASET}.png``; prints the summary.

``--configurations paper`` (implied by ``--preset paper``) evaluates exactly the configurations the paper
published and compares them with its figures in ``paper_comparison.csv``; ``--posterior paper`` uses
the paper's arithmetic (``evaluation/paper.py``). Datasets with no cached versions are skipped with a note. ``--shifts``
evaluates the test sets under those corruptions (each cached by main_cache_test_distances.py --shifts), every
row with its ``shift``; ``--fit-shifts`` uses the failure models fitted under those shifts.

Examples:
    python main_test_DeepFailGuard_from_cached.py
    python main_test_DeepFailGuard_from_cached.py --preset paper --info-root /path/to/paper/input_information
    python main_test_DeepFailGuard_from_cached.py --preset paper --posterior paper --info-root ...
    python main_test_DeepFailGuard_from_cached.py --distance feature --shifts none gaussian_noise:5 fog:3
"""

from __future__ import annotations

import argparse

from pipeline import flags


def build_parser() -> argparse.ArgumentParser:
    parser = flags.new_parser(__doc__)
    flags.add_grid_flags(parser)
    flags.add_configuration_flags(parser)
    flags.add_posterior_flag(parser)
    flags.add_distance_flag(parser)
    flags.add_shift_flags(parser)
    flags.add_abstention_flags(parser)
    flags.add_run_flags(parser, force=False)
    flags.add_root_flags(parser, "model", "info", "output")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from commands import evaluate  # deferred: the pipeline loads torch; --help and usage errors answer before it

    return evaluate.run(args)


if __name__ == "__main__":
    flags.run_main(main)
