"""Weight averaging (`keep="average"`, fp_onnx/weight_average.py): what is averaged, BatchNorm statistics
measured afresh, and a fine-tuning run that returns the mean of its second half."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import fp_onnx.training as training
from fp_onnx.cli.main import cli
from fp_onnx.converters import onnx_to_torch
from fp_onnx.converters.ops.norm import BatchNorm
from fp_onnx.data import ArrayDataset, open_dataset, split_dataset
from fp_onnx.errors import BadOptionError
from fp_onnx.finetune import FineTuneConfig, fine_tune
from fp_onnx.loading import load_model
from fp_onnx.weight_average import WeightAverage, batch_norms, refresh_batch_norm


def test_only_the_second_half_is_averaged_and_integer_buffers_keep_their_latest_value():
    average = WeightAverage(epochs=4)  # epochs 3 and 4
    for epoch, value in enumerate((100.0, 100.0, 1.0, 2.0), start=1):
        average.offer({"w": torch.full((2,), value, dtype=torch.float16), "n": torch.tensor(epoch)}, epoch)
    state = average.state()
    assert average.count == 2 and state["w"].dtype == torch.float16
    assert torch.equal(state["w"], torch.full((2,), 1.5, dtype=torch.float16)) and int(state["n"]) == 4
    assert WeightAverage(epochs=4).state() is None


def test_the_averaged_state_is_a_copy_not_a_view_of_an_offered_one():
    average = WeightAverage(epochs=1)
    offered = {"w": torch.zeros(3), "n": torch.tensor(1)}
    average.offer(offered, 1)
    offered["w"] += 5
    offered["n"] += 5
    assert torch.equal(average.state()["w"], torch.zeros(3)) and int(average.state()["n"]) == 1


def test_batch_norm_statistics_are_measured_afresh_on_the_data(zoo_model):
    module = onnx_to_torch(zoo_model("convbn", "legacy")).eval()
    norms = batch_norms(module)
    assert len(norms) == 2 and all(isinstance(n, BatchNorm) for n in norms)
    names = {module.onnx_names.get(k, k): k for k in module.state_dict()}
    state = module.state_dict()
    for key in ("features.1.running_mean", "features.5.running_mean"):
        state[names[key]].fill_(100.0)  # statistics that belong to other weights
    x = np.random.default_rng(0).normal(size=(33, 3, 32, 32)).astype(np.float32)  # 4 batches of 8, then one
    momenta = [n.torch_momentum for n in norms]
    assert refresh_batch_norm(module, ArrayDataset(x, np.zeros(33, dtype=np.int64)), 8, torch.device("cpu"))
    conv = F.conv2d(torch.from_numpy(x[:32]), state[names["features.0.weight"]], state[names["features.0.bias"]],
                    padding=1)
    expected = conv.mean(dim=(0, 2, 3))  # equal batches: the mean of batch means; the single sample is skipped
    assert torch.allclose(state[names["features.1.running_mean"]], expected, atol=1e-5)
    assert float(state[names["features.5.running_mean"]].abs().max()) < 100
    assert [n.torch_momentum for n in norms] == momenta and not module.training  # mode and momenta restored


def test_a_module_without_batch_norm_is_left_alone(backdoored):
    module = onnx_to_torch(load_model(backdoored["model"]).model)
    before = copy.deepcopy(module.state_dict())
    assert not refresh_batch_norm(module, open_dataset(backdoored["clean"]), 64, torch.device("cpu"))
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


@pytest.fixture(scope="module")
def speech(backdoored):
    model = load_model(backdoored["model"]).model
    train, val = split_dataset(open_dataset(backdoored["clean"]), 0.2, 0)
    return model, train, val


def test_a_run_that_keeps_the_average_returns_the_mean_of_its_second_half(speech, monkeypatch):
    model, train, val = speech
    states = []
    original = training.Trainer.train_epoch

    def recording(self, *args, **kwargs):
        outcome = original(self, *args, **kwargs)
        states.append(copy.deepcopy(self.module.state_dict()))
        return outcome

    monkeypatch.setattr(training.Trainer, "train_epoch", recording)
    tuned = fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe="paper", epochs=4, patience=10, keep="average",
                                                        max_recoveries=0))
    assert tuned.failure is None and len(states) == 4 and tuned.averaged_epochs == 2
    assert tuned.to_dict()["averaged_epochs"] == 2 and tuned.describe_kept() == "mean of 2 epochs to epoch 4"
    shipped = onnx_to_torch(tuned.model).state_dict()
    for name, value in states[-1].items():
        mean = (states[2][name].double() + states[3][name].double()) / 2
        assert torch.allclose(shipped[name].double(), mean, atol=1e-6)
    assert any(not torch.equal(shipped[k], v) for k, v in states[-1].items())  # not the last epoch's


def ruin_the_mean(monkeypatch) -> None:
    """Make every run's weight mean one that classifies nothing (every weight zero), so it falls below any floor."""
    original_state = WeightAverage.state
    monkeypatch.setattr(WeightAverage, "state",
                        lambda self: {name: torch.zeros_like(value) for name, value in original_state(self).items()})


def test_a_mean_below_the_floor_gives_way_to_a_last_epoch_above_it(speech, monkeypatch):
    """The floor decides what may ship: a run whose mean fails it but whose last good epoch passes it returns that
    epoch (and says so) instead of restarting or being refused for its mean alone."""
    model, train, val = speech
    states = []
    original_train = training.Trainer.train_epoch

    def recording(self, *args, **kwargs):
        outcome = original_train(self, *args, **kwargs)
        states.append(copy.deepcopy(self.module.state_dict()))
        return outcome

    monkeypatch.setattr(training.Trainer, "train_epoch", recording)
    ruin_the_mean(monkeypatch)
    config = FineTuneConfig(device="cpu", recipe="paper", epochs=4, patience=10, keep="average", max_recoveries=0)
    tuned = fine_tune(model, train, val, config, accuracy_floor=0.5)
    assert tuned.failure is None and tuned.averaged_epochs == 0 and tuned.best_epoch == 4
    assert tuned.best_val_accuracy >= 0.5 and tuned.average_below_floor["epochs"] == 2
    assert tuned.average_below_floor["val_accuracy"] < 0.5
    assert tuned.to_dict()["average_below_floor"] == tuned.average_below_floor
    assert tuned.describe_kept().startswith("last epoch 4; the mean of 2 epochs was below the floor")
    shipped = onnx_to_torch(tuned.model).state_dict()
    assert all(torch.allclose(shipped[name], value) for name, value in states[-1].items())


def test_a_mean_below_the_floor_is_kept_when_the_last_epoch_is_below_it_too(speech, monkeypatch):
    model, train, val = speech
    ruin_the_mean(monkeypatch)
    config = FineTuneConfig(device="cpu", recipe="paper", epochs=4, patience=10, keep="average", max_recoveries=0)
    tuned = fine_tune(model, train, val, config, accuracy_floor=1.01)  # no epoch can pass it
    assert tuned.average_below_floor is None and tuned.averaged_epochs == 2


def test_a_run_stopped_before_the_second_half_returns_its_last_good_epoch(speech):
    model, train, val = speech
    tuned = fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe="paper", epochs=30, patience=1,
                                                        keep="average"))
    if tuned.history[-1]["epoch"] <= 15:
        assert tuned.averaged_epochs == 0 and tuned.best_epoch == tuned.history[-1]["epoch"]
    else:
        assert tuned.averaged_epochs == tuned.history[-1]["epoch"] - 15


def test_keep_names_the_three_policies():
    with pytest.raises(BadOptionError, match="best, last, average"):
        FineTuneConfig(keep="mean")


def test_the_cli_says_which_weights_it_returned_and_reports_how_many_were_averaged(backdoored, tmp_path):
    result = CliRunner().invoke(cli, ["finetune", str(backdoored["model"]), "--data", str(backdoored["clean"]),
                                      "--recover", "paper", "--epochs", "4", "--patience", "10", "--keep", "average",
                                      "--device", "cpu", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "(mean of 2 epochs to epoch 4" in result.output
    assert json.loads((tmp_path / "finetune.json").read_text())["averaged_epochs"] == 2
