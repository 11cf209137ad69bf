"""What the evaluation's tie rule decides, on cached versions: every method that picks one member's answer is
run twice on every version set of the grid, members in canonical order, once with DESlib's (and the paper's)
rule — a tie goes to the first member — and once with the evaluation's — to the member with the higher
validation accuracy. Prints, per method, how many answers differ (each one a tie, by construction), in how
many sets, and the mean accuracy per N under either rule.

    python benchmarks/tie_rule.py --preset demo
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import evaluation  # noqa: E402
from pipeline import cli, flags  # noqa: E402
from selection import METHODS, PREFERRED_MEMBER, SetContext, preference_by_validation_accuracy  # noqa: E402


def build_parser():
    parser = flags.new_parser(__doc__)
    flags.add_grid_flags(parser)
    flags.add_distance_flag(parser)
    flags.add_run_flags(parser, force=False)
    flags.add_root_flags(parser, "model", "info")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    grid, _ = cli.prepare(args)
    member_methods = [name for name, method in METHODS.items() if method.ties.startswith(PREFERRED_MEMBER)]
    for dataset in grid.datasets:
        versions = grid.versions(dataset)
        records, truths, _ = evaluation.load_cached_versions(args.info_root, args.model_root, dataset, versions,
                                                             args.distance)
        num_classes = evaluation.compute.dataset_classes(records, truths)
        differing, sets_touched = defaultdict(int), defaultdict(int)
        accuracy = defaultdict(list)  # (method, rule, N) -> accuracies
        answers = 0
        regions = {}
        for _, members in evaluation.version_sets(grid.models, sorted({bug for _, bug in versions})):
            if not all(member in records for member in members):
                continue
            chosen = [records[member] for member in members]
            test_set = chosen[0].test_set
            regions.setdefault(test_set, evaluation.region_of(records, test_set))
            truth = truths[test_set]
            answers += len(truth)
            by_rule = {}
            for rule, preference in (("first", None), ("accuracy", preference_by_validation_accuracy(chosen))):
                by_rule[rule] = evaluation.predict_set(chosen, SetContext(num_classes, regions[test_set], preference))
            for name in member_methods:
                if name not in by_rule["first"]:
                    continue
                changed = int((by_rule["first"][name] != by_rule["accuracy"][name]).sum())
                differing[name] += changed
                sets_touched[name] += changed > 0
                for rule in by_rule:
                    accuracy[name, rule, len(members)].append(float(np.mean(by_rule[rule][name] == truth)))
        sizes = sorted({n for _, _, n in accuracy})
        print(f"{dataset}: {answers} answers per method over the grid's sets; answers the tie rule changes, sets "
              "touched, mean accuracy per N (ties to the first member -> to the higher validation accuracy)")
        for name in member_methods:
            if (name, "first", sizes[0]) not in accuracy:
                continue
            cells = "  ".join(f"N={n} {np.mean(accuracy[name, 'first', n]):.4f}"
                              f"->{np.mean(accuracy[name, 'accuracy', n]):.4f}" for n in sizes)
            print(f"  {name:<15}{differing[name]:>6} answers {sets_touched[name]:>4} sets   {cells}")
    return 0


if __name__ == "__main__":
    flags.run_main(main)
