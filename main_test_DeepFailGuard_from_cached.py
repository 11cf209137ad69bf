"""Step 4a: evaluate DeepFailGuard from the cached test distances (ours or the paper's release).

Every combination of 2-5 distinct architectures, fault settings "all versions carry fault i" and
"one carries fault i, the rest are healthy"; methods: DeepFailGuard, its two ablations, majority
voting, soft voting and max softmax. Writes ``{output}/results.csv``, ``summary.csv``,
``failure_prediction.csv`` and ``figures/methods_{DATASET}.png``; prints the summary.

Examples:
    python main_test_DeepFailGuard_from_cached.py
    python main_test_DeepFailGuard_from_cached.py --preset paper --info-root /path/to/paper/input_information
"""

from __future__ import annotations

import sys

import cli
import Evaluator
import layout
from DatasetManager import get_dataset


def main(argv=None) -> int:
    parser = cli.base_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)
    grid, _ = cli.prepare(args, writable=[args.output], needs_data=False)
    records_by_dataset, truths_by_dataset, bugs_by_dataset = {}, {}, {}
    for dataset in grid.datasets:
        unsupported = get_dataset(dataset).unsupported_faults
        bugs = [bug for bug in grid.bugs if bug not in unsupported]
        records, missing = {}, []
        for model in grid.models:
            for bug in bugs:
                record = Evaluator.load_cached_record(args.info_root, args.model_root, dataset, model, bug)
                if record is None:
                    missing.append(f"{model}/bug{bug}")
                else:
                    records[(model, bug)] = record
        if missing:
            print(f"note: {dataset}: no cache for {len(missing)} version(s): {', '.join(missing[:6])}"
                  f"{' ...' if len(missing) > 6 else ''}", file=sys.stderr)
        truths_by_dataset[dataset] = {test_set: layout.read_ground_truth(args.info_root, dataset, test_set)
                                      for test_set in {r.test_set for r in records.values()}}
        records_by_dataset[dataset], bugs_by_dataset[dataset] = records, bugs
    Evaluator.evaluate_and_report(records_by_dataset, truths_by_dataset, grid.models, bugs_by_dataset, args.output)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
