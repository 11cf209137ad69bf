"""The paper repository's public API, unchanged, over our one implementation (issue 12).

Its classes (``DatasetManager``, ``ModelManager``, ``FaultInjector``) and call forms (``cal_confidence``,
``cal_confidence_for_batch(_cached)``, ``batch_infer`` returning ``(outputs, all_module_dnn_labels)``,
``DeepFailGuardTrainer.train`` called on the class) drive the session pipeline's two SqueezeNet versions
(healthy, and fault 1), loaded and fitted again through them; one more is trained through them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from conftest import digits_subset

import mymodel
from Attacker import Attacker
from DatasetManager import DatasetManager
from DeepFailGuard import DeepFailGuard, DeepFailGuardModule, DeepFailGuardTrainer
from FaultInjector import FaultInjector
from ModelManager import ModelManager
from ModelTrainer import ModelTrainer
from storage.settings import DistanceSettings
from utils import UsageError

#: one worker runs the module, so that its module fixture is built once
pytestmark = pytest.mark.xdist_group("paper_api")

PAPER_DEVICE = 0  # the paper's habit: an int, cuda:0 where there is CUDA, else the CPU
EXPECTED_DEVICE = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
# (name as the paper's scripts spell it, fault): the session pipeline's two squeezenet versions
VERSIONS = (("SqueezeNet", 0), ("SQUEEZENET", 1))


@pytest.fixture(scope="module")
def paper_pipeline(pipeline, tmp_path_factory):
    """The session pipeline's two versions loaded, and their failure models fitted, through the paper's calls."""
    root = tmp_path_factory.mktemp("paper_api")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        full = DatasetManager.create_dataset("DIGITS", bug_id=0, batch_size=16)
        data = digits_subset(full, n_train=160, n_val=40, n_test=16)
        models, kde_paths = [], []
        for model_name, bug_id in VERSIONS:
            model = ModelManager.create_model(model_name=model_name, dataset=data, mode="load", bug_id=bug_id,
                                              device=PAPER_DEVICE, model_root=pipeline.model)
            key = f"squeezenet_DIGITS_bug{bug_id}" if bug_id else "squeezenet_DIGITS"
            paths = (root / "kde_results" / f"{key}_correct.pkl", root / "kde_results" / f"{key}_wrong.pkl")
            # called on the class, with the paper's keyword names and its .pkl file names
            fitted = DeepFailGuardTrainer.train(pytorch_model=model.model_structure, val_dataloader=data.val_loader,
                                                correct_kde_path=paths[0], wrong_kde_path=paths[1],
                                                device=PAPER_DEVICE)
            models.append(model)
            kde_paths.append((paths, fitted))
        attacks = [Attacker(model, device=PAPER_DEVICE).cal_all_distance(data.test_loader) for model in models]
        modules = [DeepFailGuardModule(model=model, correct_kde_path=paths[0], wrong_kde_path=paths[1],
                                       val_acc=model.val_acc, device=PAPER_DEVICE)
                   for model, (paths, _) in zip(models, kde_paths)]
        yield dict(root=root, model_root=pipeline.model, data=data, models=models, kdes=kde_paths, attacks=attacks,
                   modules=modules, dfg=DeepFailGuard(modules))
    finally:
        torch.set_num_threads(threads)


def test_dataset_and_versions_have_the_attributes_the_paper_scripts_use(paper_pipeline):
    data = paper_pipeline["data"]
    assert data.dataset_name == "DIGITS" and data.num_classes == 10
    assert torch.equal(data.test_loader.dataset.targets, data.y_test)  # the paper's loader.dataset.targets
    healthy, faulty = paper_pipeline["models"]
    for model, (_, bug_id) in zip(paper_pipeline["models"], VERSIONS):
        assert model.model_name == "squeezenet" and model.bug_id == bug_id
        assert isinstance(model.model_structure, nn.Module)
        assert 0.0 <= model.val_acc <= 1.0 and 0.0 <= model.test_acc <= 1.0
        assert next(model.model_structure.parameters()).device == EXPECTED_DEVICE
    size = sum(p.numel() for p in healthy.model_structure.parameters())
    assert sum(p.numel() for p in faulty.model_structure.parameters()) < size  # fault 1: the reduced variant
    # get_model returns the version create_model made, whatever the spelling of its names
    assert ModelManager.get_model("squeezenet", "DIGITS", 0).bug_id == 0
    assert ModelManager.get_model("SqueezeNet", "digits", bug_id=1) is faulty
    assert ModelManager.get_model("squeezenet", data, 1) is faulty


def test_the_facade_trains_with_the_papers_keywords(tmp_path, tiny_digits, single_thread):
    """``ModelManager.create_model(..., mode="train")`` with the paper's names and keyword options."""
    model = ModelManager.create_model(model_name="SqueezeNet", dataset=tiny_digits, mode="train", bug_id=3,
                                      device=PAPER_DEVICE, model_root=tmp_path, epochs=1, lr=1e-3, progress=False)
    assert (tmp_path / "squeezenet_DIGITS_bug3.pth").is_file() and model.metadata["epochs"] == 1
    assert model.metadata["lr"] == 1e-3 and 0.0 <= model.val_acc <= 1.0
    assert not any(isinstance(m, nn.ReLU) for m in model.model_structure.modules())
    assert ModelManager.get_model("squeezenet", "DIGITS", 3) is model
    with pytest.raises(UsageError, match="unknown option.*epoch_count"):
        ModelManager.create_model(model_name="SqueezeNet", dataset=tiny_digits, mode="train", epoch_count=1)


def test_a_trained_version_loads_by_name_in_any_case(paper_pipeline):
    healthy = paper_pipeline["models"][0]
    loaded = ModelManager.create_model(model_name="SQUEEZENET", dataset="DIGITS", mode="load", bug_id=0,
                                       device=PAPER_DEVICE, model_root=paper_pipeline["model_root"])
    assert loaded.model_name == "squeezenet" and loaded.val_acc == healthy.val_acc
    state, expected = loaded.model_structure.state_dict(), healthy.model_structure.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k].cpu(), expected[k].cpu()) for k in state)
    assert ModelManager.get_model("squeezenet", "DIGITS") is loaded  # the latest one made


def test_trainer_returns_the_paper_pair_of_callable_kdes_and_they_reload(paper_pipeline):
    for (paths, fitted), module in zip(paper_pipeline["kdes"], paper_pipeline["modules"]):
        correct_kde, wrong_kde = fitted  # the paper's unpacking
        assert paths[0].is_file() and paths[1].is_file()
        queries = np.linspace(0.0, 2.0, 7)
        np.testing.assert_allclose(correct_kde(queries), correct_kde.pdf(queries))  # callable, as gaussian_kde
        reloaded = DeepFailGuardModule.load_kde(paths[1])  # ours, under the paper's .pkl name
        np.testing.assert_array_equal(reloaded.points, wrong_kde.points)
        np.testing.assert_array_equal(module.correct_kde.points, correct_kde.points)
    # called on an instance (its own settings), on the first validation batch: the same distances
    model, (_, fitted) = paper_pipeline["models"][0], paper_pipeline["kdes"][0]
    first_batch = [next(iter(paper_pipeline["data"].val_loader))]
    again = DeepFailGuardTrainer(DistanceSettings(steps=50)).train(model, first_batch,
                                                                   paper_pipeline["root"] / "again_correct.npz",
                                                                   paper_pipeline["root"] / "again_wrong.npz")
    np.testing.assert_allclose(again.distances, fitted.distances[:len(again.distances)], rtol=1e-5, atol=1e-6)


def test_attacker_takes_the_paper_forms(paper_pipeline):
    data, model = paper_pipeline["data"], paper_pipeline["models"][0]
    distances, labels = paper_pipeline["attacks"][0]
    assert distances.shape == labels.shape == (len(data.y_test),)
    assert (distances >= 0).all()
    attacker = Attacker(model.model_structure, device=PAPER_DEVICE)  # the network, as the paper passed it
    images, _ = next(iter(data.test_loader))
    batch_distances, batch_labels = attacker.cal_distance(images)  # images only, as the paper called it
    np.testing.assert_allclose(batch_distances, distances[:len(images)], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(batch_labels, labels[:len(images)])


def test_cal_confidence_is_the_posterior_of_the_version(paper_pipeline):
    data = paper_pipeline["data"]
    for module, (distances, labels) in zip(paper_pipeline["modules"], paper_pipeline["attacks"]):
        confidences, dnn_labels = module.cal_confidence_for_batch(data.test_loader)
        np.testing.assert_array_equal(dnn_labels, labels)
        np.testing.assert_allclose(confidences, module.confidence(distances))
        assert ((confidences >= 0) & (confidences <= 1)).all()
        image = data.x_test[0]  # one C×H×W image, or a batch of one
        single, single_label = module.cal_confidence(image)
        batch_of_one, _ = module.cal_confidence(image.unsqueeze(0))
        distance, label = module.attacker.cal_distance(image.unsqueeze(0))
        np.testing.assert_array_equal(single, module.confidence(distance))
        np.testing.assert_array_equal(single, batch_of_one)
        assert single.shape == (1,) and 0.0 <= single[0] <= 1.0 and single_label[0] == label[0]


def test_infer_agrees_with_the_cached_decision_on_the_same_input(paper_pipeline):
    data, dfg = paper_pipeline["data"], paper_pipeline["dfg"]
    for index in range(4):
        image = data.x_test[index]
        answers = [module.attacker.cal_distance(image.unsqueeze(0)) for module in dfg.modules]
        decision = dfg.batch_infer_cached([a[0] for a in answers], [a[1] for a in answers])
        assert dfg.infer(image) == decision.labels[0]


def test_batch_infer_unpacks_as_the_paper_and_matches_the_cache(paper_pipeline):
    data, dfg = paper_pipeline["data"], paper_pipeline["dfg"]
    decision = dfg.batch_infer([data.test_loader, data.test_loader])
    outputs, all_module_dnn_labels = decision  # the paper's unpacking
    np.testing.assert_array_equal(all_module_dnn_labels, [labels for _, labels in paper_pipeline["attacks"]])
    np.testing.assert_allclose(decision.distances, [d for d, _ in paper_pipeline["attacks"]], rtol=1e-5, atol=1e-6)
    cached_outputs, _ = dfg.batch_infer_cached(decision.distances, all_module_dnn_labels)
    np.testing.assert_array_equal(outputs, cached_outputs)
    confidences = np.stack([m.confidence(d) for m, d in zip(dfg.modules, decision.distances)])
    best = confidences.argmax(axis=0)
    np.testing.assert_array_equal(outputs, all_module_dnn_labels[best, np.arange(len(best))])


def test_batch_infer_cached_reads_the_paper_cache_files(paper_pipeline):
    """np.save'd distances and labels in the paper's file names, read by the paper's call form."""
    data, dfg, info = paper_pipeline["data"], paper_pipeline["dfg"], paper_pipeline["root"] / "input_information"
    folder = info / "test_information_cached"
    folder.mkdir(parents=True)
    for model, (distances, labels) in zip(paper_pipeline["models"], paper_pipeline["attacks"]):
        stem = f"DIGITS_{model.model_name}_bug{model.bug_id}"
        np.save(folder / f"{stem}_distances.npy", np.array(distances.tolist()))
        np.save(folder / f"{stem}_dnn_labels.npy", np.array(labels.tolist()))
    outputs, all_module_dnn_labels = dfg.batch_infer_cached([data, data], info_root=info)
    attacks = paper_pipeline["attacks"]
    expected = dfg.batch_infer_cached([d for d, _ in attacks], [lab for _, lab in attacks])
    np.testing.assert_array_equal(outputs, expected.labels)
    np.testing.assert_array_equal(all_module_dnn_labels, expected.version_labels)
    module, (distances, _) = dfg.modules[1], paper_pipeline["attacks"][1]
    confidences, _ = module.cal_confidence_for_batch_cached(data, info_root=info)
    np.testing.assert_allclose(confidences, module.confidence(distances))
    with pytest.raises(UsageError, match="no test cache"):
        dfg.batch_infer_cached([data, data], info_root=paper_pipeline["root"] / "nowhere")


# -- small units -------------------------------------------------------------------------------

def test_fault_injector_class_removes_the_relus_of_a_model():
    torch.manual_seed(0)
    model = mymodel.SqueezeNetModel(10)
    network = model.model_structure.eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        before = network(x)
    assert sum(isinstance(m, nn.ReLU) for m in network.modules()) > 0
    assert FaultInjector.inject_model_fault(model=model, bug_id=3) is model
    assert not any(isinstance(m, nn.ReLU) for m in model.model_structure.modules())
    with torch.no_grad():
        assert not torch.allclose(model.model_structure(x), before)


def test_fault_injector_class_hyperparameter_and_dataset_faults(tiny_digits):
    trainer = ModelTrainer(nn.Linear(4, 2), device="cpu", epochs=9, lr=1e-4)
    FaultInjector.inject_hyperparameters_fault(trainer=trainer, bug_id=4)
    assert all(group["lr"] == pytest.approx(2e-3) for group in trainer.optimizer.param_groups)
    top = float(tiny_digits.x_train.max())
    assert FaultInjector.inject_dataset_fault(dataset=tiny_digits, bug_id=7) is tiny_digits
    assert float(tiny_digits.x_train.max()) == pytest.approx(top / 2)


@pytest.mark.parametrize("paper_name", ["ResNet", "AlexNet", "DenseNet", "VGG16", "SqueezeNet"])
def test_the_paper_model_names_map_to_ours(paper_name, tmp_path, tiny_digits):
    with pytest.raises(UsageError, match=f"missing checkpoint .*{paper_name.lower()}_DIGITS_bug2.pth"):
        ModelManager.create_model(model_name=paper_name, dataset=tiny_digits, mode="load", bug_id=2,
                                  device=PAPER_DEVICE, model_root=tmp_path)
    with pytest.raises(UsageError, match="not been created"):
        ModelManager.get_model(paper_name, "DIGITS", 2)


def test_an_int_device_is_that_cuda_index_or_the_cpu():
    assert Attacker(nn.Linear(2, 2), device=PAPER_DEVICE).device == EXPECTED_DEVICE
    assert Attacker(nn.Linear(2, 2), device=PAPER_DEVICE).model.weight.device == EXPECTED_DEVICE


def test_the_dataset_class_shares_loaded_data_and_applies_data_faults():
    first = DatasetManager.create_dataset("DIGITS", bug_id=0, batch_size=32)
    second = DatasetManager.create_dataset("digits", bug_id=5, batch_size=64)  # a hyper-parameter fault
    assert second.x_train is first.x_train and (first.batch_size, second.batch_size) == (32, 64)
    assert second.bug_id == 0  # its data is the healthy data, as the paper's carried bug_id None
    shifted = DatasetManager.create_dataset("DIGITS", bug_id=7)
    assert shifted.bug_id == 7
    assert float(shifted.x_test.max()) == pytest.approx(float(first.x_test.max()) / 2)
    with pytest.raises(UsageError, match="does not apply to DIGITS"):
        DatasetManager.create_dataset("DIGITS", bug_id=11)
