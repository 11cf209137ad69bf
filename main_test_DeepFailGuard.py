"""Step 4b: evaluate DeepFailGuard in real time: load versions and KDEs, attack the test inputs, select.

Same version sets, methods and CSV schema as the cached evaluation (step 4a), but every distance is
computed now by running DeepFool against the live networks; nothing is read from the test cache (the
validation outputs the fit step kept are read, for the methods that learn from them).

Examples:
    python main_test_DeepFailGuard.py --output dfg_results/realtime
    python main_test_DeepFailGuard.py --models resnet densenet --bugs 0 8 --device cuda
"""

from __future__ import annotations

import argparse

from tqdm.auto import tqdm

import cli
import Evaluator
import layout
import ModelManager
import paper
from DatasetManager import DatasetCache
from DeepFailGuard import DeepFailGuardModule


def build_parser() -> argparse.ArgumentParser:
    parser = cli.attack_step_parser(__doc__)
    paper.add_posterior_flag(parser)
    cli.add_run_flags(parser, force=False)
    cli.add_root_flags(parser, "data", "model", "info", "output")
    parser.set_defaults(output=layout.DEFAULT_REALTIME_OUTPUT)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    grid, device = cli.prepare(args, writable=[args.output])
    attack = cli.attack_settings(args, grid)
    roots = cli.roots_of(args)
    versions = cli.trained_versions(grid, roots.model)
    datasets = DatasetCache(roots.data)
    records_by_dataset = {d: {} for d in grid.datasets}
    truths_by_dataset = {d: {} for d in grid.datasets}
    for dataset, model_name, bug in tqdm(versions, desc="real-time versions", unit="version", disable=args.quiet):
        model = ModelManager.load_version(model_name, dataset, bug, device, roots=roots)
        module = DeepFailGuardModule.of_version(model, roots.info, roots.model, dataset, model_name, bug,
                                                device=device, deepfool=attack.deepfool)
        module.posterior_rule = paper.posterior_rule(args.posterior)
        data = datasets.get(dataset, bug, attack.max_inputs)
        result = module.attack_loader(ModelManager.loader_for(model, data, "test", attack.batch_size),
                                      progress=not args.quiet)
        test_set = layout.test_set_of(bug)
        truths_by_dataset[dataset][test_set] = data.y_test.numpy()
        records_by_dataset[dataset][(model_name, bug)] = Evaluator.VersionRecord(
            dataset, model_name, bug, result.labels, result.distances, module, test_set, result.probabilities,
            result.logits, layout.read_validation_outputs(roots.info, model_name, dataset, bug, data.num_classes,
                                                          attack.deepfool.mode))
    bugs_by_dataset = {d: sorted({b for (_, b) in records}) for d, records in records_by_dataset.items()}
    Evaluator.evaluate_and_report(records_by_dataset, truths_by_dataset, grid.models, bugs_by_dataset, args.output,
                                  progress=not args.quiet)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
