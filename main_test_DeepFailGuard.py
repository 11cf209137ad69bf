"""Step 4b: evaluate DeepFailGuard in real time: load versions and KDEs, attack the test inputs, select.

Same version sets, methods and CSV schema as the cached evaluation (step 4a), but every distance is
computed now by running DeepFool against the live networks; nothing is read from the test cache.

Examples:
    python main_test_DeepFailGuard.py --output dfg_results/realtime
    python main_test_DeepFailGuard.py --models resnet densenet --bugs 0 8 --device cuda
"""

from __future__ import annotations

from tqdm.auto import tqdm

import cli
import Evaluator
import ModelManager
from Attacker import DEFAULT_ATTACK_BATCH
from DatasetManager import DatasetCache
from DeepFailGuard import DeepFailGuardModule
from utils import find_kde_files, version_key


def main(argv=None) -> int:
    parser = cli.base_parser(__doc__.splitlines()[0])
    parser.set_defaults(output="dfg_results/realtime")
    args = parser.parse_args(argv)
    grid, device = cli.prepare(args, writable=[args.output])
    versions = cli.trained_versions(grid, args.model_root)
    datasets = DatasetCache(args.data_root)
    records_by_dataset = {d: {} for d in grid.datasets}
    truths_by_dataset = {d: {} for d in grid.datasets}
    for dataset, model_name, bug in tqdm(versions, desc="real-time versions", unit="version", disable=args.quiet):
        model = ModelManager.load_version(model_name, dataset, bug, device, model_root=args.model_root,
                                          data_root=args.data_root)
        correct_kde, wrong_kde = find_kde_files(args.info_root, model_name, dataset, bug)
        module = DeepFailGuardModule(model, correct_kde, wrong_kde, Evaluator.validation_accuracy(
            args.model_root, dataset, model_name, bug), device=device, name=version_key(model_name, dataset, bug))
        data = datasets.get(dataset, bug, grid.max_inputs)
        loader = data.at(image_size=model.metadata["image_size"],
                         batch_size=args.batch_size or DEFAULT_ATTACK_BATCH).test_loader
        result = module.attack_loader(loader, progress=not args.quiet)
        test_set = Evaluator.test_set_of(bug)
        truths_by_dataset[dataset][test_set] = data.y_test.numpy()
        records_by_dataset[dataset][(model_name, bug)] = Evaluator.VersionRecord(
            dataset, model_name, bug, result.labels, result.distances, module, test_set, result.probabilities)
    bugs_by_dataset = {d: sorted({b for (_, b) in records}) for d, records in records_by_dataset.items()}
    Evaluator.evaluate_and_report(records_by_dataset, truths_by_dataset, grid.models, bugs_by_dataset, args.output)
    return 0


if __name__ == "__main__":
    cli.run_main(main)
