"""What ``main_test_DeepFailGuard.py`` does once its command line is parsed (the script builds the parser, and its
docstring says what the step is)."""


from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

import evaluation
import ModelManager
import utils
from DatasetManager import DatasetCache
from DeepFailGuard import DeepFailGuardModule
from distances import costs
from distances.concurrent import attack_concurrently
from distances.feature import training_feature_mean
from evaluation import deployment, paper, selective
from evaluation.records import recorded_warnings
from mydataset import corruptions
from pipeline import cli, grids
from pipeline.attack_steps import flip_warnings, test_inputs
from selection import METHODS, SetContext, preference_by_validation_accuracy, unmet_needs
from storage import caches, files, layout, manifests
from storage.layout import version_key
from storage.shifts import NO_SHIFT
from utils import warn


def run(args) -> int:
    grid, device = cli.prepare(args, writable=[args.output])
    cli.check_corruption_library(args.shifts)
    with files.folder_lock(args.output, "a real-time evaluation (main_test_DeepFailGuard.py)"):
        return evaluate(args, grid, device)


def evaluate(args, grid, device) -> int:
    attack = cli.attack_settings(args, grid)
    roots = cli.roots_of(args)
    versions = grids.trained_versions(grid, roots.model)
    devices = [utils.choose_device(d, "--devices") for d in args.devices] if args.devices else [device]
    datasets = DatasetCache(roots.data)
    loaded = []
    for index, (dataset, model_name, bug) in enumerate(tqdm(versions, desc="loading versions", unit="version",
                                                            disable=args.quiet)):
        version_device = devices[index % len(devices)]
        model = ModelManager.load_version(model_name, dataset, bug, version_device, roots=roots)
        module = DeepFailGuardModule.of_version(model, roots.info, roots.model, dataset, model_name, bug,
                                                device=version_device, distance=attack.distance,
                                                failure_model=attack.failure_model)
        manifests.check_version(roots.info, roots.model, "fit", model_name, dataset, bug, attack.failure_model)
        module.posterior_rule = paper.posterior_rule(args.posterior)
        module.device_slot = index % len(devices) if args.devices else None
        data = datasets.get(dataset, bug, attack.max_inputs)
        costs.ensure(roots.model, model, data, version_device, attack.distance.mode)
        training_feature_mean(module.attacker, model, data, attack.batch_size)
        loaded.append((dataset, model_name, bug, module, data, model))
    # what the versions answered on validation, read once for every shift
    validation = {(d, m, b): caches.read_validation_outputs(roots.info, m, d, b, data.num_classes,
                                                            attack.failure_model)
                  for d, m, b, _, data, _ in loaded}
    by_shift = {}
    for shift in args.shifts:
        loaders = [ModelManager.loader_for(model, corruptions.shifted(data, "test", model.metadata["image_size"],
                                                                      shift), "test", attack.batch_size)
                   for *_, data, model in loaded]
        results = attack_concurrently([(entry[3], loader) for entry, loader in zip(loaded, loaders)],
                                      progress=not args.quiet, concurrent=bool(args.devices))
        records_by_dataset = {d: {} for d in grid.datasets}
        truths_by_dataset = {d: {} for d in grid.datasets}
        for (dataset, model_name, bug, module, data, _), result in zip(loaded, results):
            test_set = layout.test_set_of(bug)
            truths_by_dataset[dataset][test_set] = data.y_test.numpy()
            flips = flip_warnings(version_key(model_name, dataset, bug), attack.distance, result.success,
                                  test_inputs(shift))
            for line in flips:
                warn(line)
            warnings = recorded_warnings(roots.info, roots.model, dataset, model_name, bug, attack.distance.mode,
                                         attack.failure_model, shift, module, live_attack=flips)
            records_by_dataset[dataset][(model_name, bug)] = evaluation.VersionRecord(
                dataset, model_name, bug, result.labels, result.distances, module, test_set, result.probabilities,
                result.logits, validation[dataset, model_name, bug], costs.read(roots.model, model_name, dataset, bug),
                attack.distance.mode, shift, result.outputs, warnings)
        by_shift[shift] = records_by_dataset, truths_by_dataset
    bugs_by_dataset = {d: sorted({b for (_, b) in records}) for d, records in records_by_dataset.items()}
    evaluation.evaluate_and_report(records_by_dataset, truths_by_dataset, grid.models, bugs_by_dataset, args.output,
                                  progress=not args.quiet, abstention=selective.from_args(args), by_shift=by_shift)
    records_by_dataset = by_shift.get(NO_SHIFT, (None,))[0]
    if args.latency_repeats and records_by_dataset is None:
        print("note: no latency.csv (the policies are timed on the clean test set: add none to --shifts)",
              file=sys.stderr)
    elif args.latency_repeats:
        rows = [row for entry in _healthy_sets(loaded, records_by_dataset)
                for row in _time_set(args, *entry, truths_by_dataset)]
        files.atomic_write_table(layout.result_path(args.output, layout.LATENCY_CSV), pd.DataFrame(rows),
                                   deployment.LATENCY_COLUMNS)
        if rows:
            print(f"latency (ms per input, {rows[0]['device']}): " + ", ".join(
                f"{row['policy']} {row['ms_per_input']:.2f} ({row['ratio_to_voting']:.2f}x voting)" for row in rows))
    return 0


def _healthy_sets(loaded, records_by_dataset):
    """Per dataset, the set of every healthy version evaluated (two at least): the set the policies are timed on."""
    modules = {(d, m, b): (module, data) for d, m, b, module, data, _ in loaded}
    for dataset, records in records_by_dataset.items():
        members = evaluation.canonical([records[key] for key in records if key[1] == 0])
        if len(members) >= 2:
            yield dataset, members, [modules[dataset, r.model, 0] for r in members]


def _time_set(args, dataset, members, loaded_members, truths_by_dataset) -> list[dict]:
    """Voting, full DeepFailGuard and its cascade run for real on the set's first test inputs."""

    data = loaded_members[0][1]
    truth = truths_by_dataset[dataset][""]
    context = SetContext(evaluation.dataset_classes({(r.model, r.bug): r for r in members}, {"": truth}), None,
                         preference_by_validation_accuracy(members))
    cascade = METHODS["cascade_dfg"]
    unmet = unmet_needs(cascade.needs, members, context)
    if unmet:
        print(f"note: {dataset}: no latency.csv rows (the cascade needs {', '.join(unmet)})", file=sys.stderr)
        return []
    state = cascade.fit(members, context)
    count = min(args.latency_inputs, len(truth))
    evaluated = {"dfg": METHODS["dfg"].predict(METHODS["dfg"].fit(members, context), members, context)[:count],
                 "cascade_dfg": cascade.predict(state, members, context)[:count]}
    flops = np.array([member.flops(True) for member in members])
    rows = deployment.time_policies([module for module, _ in loaded_members], flops, data.x_test[:count],
                                    truth[:count], *state, context, context.num_classes, args.batch_size or 64,
                                    args.latency_repeats, evaluated)
    where = {"device": costs.device_name(loaded_members[0][0].attacker.device), "threads": torch.get_num_threads()}
    return [dict(evaluation.set_columns(dataset, "healthy", members), **row, **where) for row in rows]
