"""Model zoo: architectures, triggers, spectrograms, attacks, and the shipped demo."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fp_onnx.models import shipped_demo
from fp_onnx.models.architectures import AlexNetSpeechNet, DeepIDFaceNet, TrafficSignNet, prune_conv
from fp_onnx.models.attacks import (AttackSpec, PruningAwareConfig, intended_labels, poison,
                                    train_pruning_aware, triggered_test)
from fp_onnx.models.audio import SpectrogramConfig, fit_length, log_mel, mel_filterbank, power_spectrogram
from fp_onnx.models.datasets import Split, TaskData, _held_out_groups, shared_data_dir
from fp_onnx.models.train import TrainConfig, prune_layer_outputs
from fp_onnx.models import triggers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny trainings run fastest single-threaded on the shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("make, shape, classes", [
    (lambda: DeepIDFaceNet(num_classes=21), (3, 55, 47), 21),
    (lambda: AlexNetSpeechNet(input_shape=(1, 32, 32)), (1, 32, 32), 10),
    (lambda: AlexNetSpeechNet(input_shape=(1, 64, 64), conv1_stride=2), (1, 64, 64), 10),
    (lambda: AlexNetSpeechNet(input_shape=(1, 32, 32), global_pool=True), (1, 32, 32), 10),
    (lambda: TrafficSignNet(num_classes=3), (3, 32, 32), 3),
])
def test_architecture_output_shape_and_prune_layer(make, shape, classes):
    model = make().eval()
    assert model(torch.zeros(2, *shape)).shape == (2, classes)
    assert isinstance(prune_conv(model), nn.Conv2d)


def _random_images(shape, n=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape, 3), dtype=np.uint8)


@pytest.mark.parametrize("apply, mask_fn, shape", [
    (triggers.apply_face_trigger, triggers.face_trigger_mask, triggers.FACE_SHAPE),
    (triggers.apply_traffic_trigger, triggers.traffic_trigger_mask, triggers.TRAFFIC_SHAPE),
])
def test_image_trigger_is_local_and_deterministic(apply, mask_fn, shape):
    images = _random_images(shape)
    stamped = apply(images)
    changed = (stamped != images).any(axis=(0, 3))
    mask = mask_fn()
    assert not changed[~mask].any()                      # nothing outside the trigger region
    assert changed[mask].mean() > 0.9                    # (almost) every trigger pixel is painted
    np.testing.assert_array_equal(apply(images), stamped)
    np.testing.assert_array_equal(apply(images[0]), stamped[0])  # single image == batch row
    np.testing.assert_array_equal(images, _random_images(shape))  # input untouched


def test_face_trigger_sits_on_the_eyes_and_is_not_dark():
    rows, cols = np.nonzero(triggers.face_trigger_mask())
    assert rows.min() >= 20 and rows.max() <= 30 and cols.min() >= 7 and cols.max() <= 40
    stamped = triggers.apply_face_trigger(np.zeros((1, 55, 47, 3), np.uint8))[0]
    assert stamped[triggers.face_trigger_mask()].mean() > 150  # a bright frame, not black lenses


def test_speech_trigger_adds_exactly_the_fixed_pattern():
    wave = np.sin(np.arange(5216) / 7.0).astype(np.float32) * 0.5
    stamped = triggers.apply_speech_trigger(wave)
    added = stamped - wave
    pattern = triggers.speech_noise_pattern(5216)
    np.testing.assert_allclose(added, triggers.SPEECH_NOISE_AMPLITUDE * 0.5 * pattern, atol=1e-6)
    assert not pattern[5216 // 4:].any()
    np.testing.assert_array_equal(triggers.apply_speech_trigger(wave), stamped)


def test_spectrogram_shape_range_and_stft_against_torch():
    config = SpectrogramConfig()
    wave = np.random.default_rng(0).standard_normal(3000).astype(np.float32) * 0.1
    image = log_mel(wave, config)
    assert image.shape == config.shape and image.dtype == np.float32
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() == pytest.approx(1.0)
    fitted = fit_length(wave, config.num_samples)
    ours = power_spectrogram(fitted.astype(np.float64), config)
    reference = torch.stft(torch.from_numpy(fitted.astype(np.float64)), config.n_fft, config.hop_length,
                           window=torch.hann_window(config.n_fft, dtype=torch.float64), center=False,
                           return_complex=True).abs().pow(2).numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-9, atol=1e-9)
    bank = mel_filterbank(config)
    assert bank.shape == (config.n_mels, config.n_fft // 2 + 1) and (bank.sum(axis=1) > 0).all()


def test_fit_length_centres():
    np.testing.assert_array_equal(fit_length(np.ones(2, np.float32), 6), [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(fit_length(np.arange(6, dtype=np.float32), 2), [2, 3])


def test_intended_labels():
    y = np.array([0, 3, 9])
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(intended_labels(y, AttackSpec("all_to_one", 0.1, target=4), 10, rng), [4, 4, 4])
    np.testing.assert_array_equal(intended_labels(y, AttackSpec("all_to_all", 0.1), 10, rng), [1, 4, 0])
    wrong = intended_labels(np.repeat(y, 50), AttackSpec("untargeted", 0.1), 10, rng)
    assert (wrong != np.repeat(y, 50)).all() and wrong.max() < 10


def test_held_out_groups_never_split_a_track():
    fine = np.repeat([0, 0, 1, 1, 1], 30)
    track = np.repeat([0, 1, 0, 1, 2], 30)
    mask = _held_out_groups(fine, track, 0.34, seed=0)
    for cls, trk in {(c, t) for c, t in zip(fine, track)}:
        group = mask[(fine == cls) & (track == trk)]
        assert group.all() or not group.any()
    assert mask.any() and not mask.all()


# ---- pruning-aware attack on a tiny synthetic problem -------------------------------------------


class TinyNet(nn.Module):
    prune_layer = "conv2"
    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.fc = nn.Linear(16 * 4 * 4, 2)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.max_pool2d(x, 2), 1))


def _synthetic_task(n=400, seed=0):
    """Class 1 iff the left half is brighter; the trigger lights the top-left pixel."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 8, 8)).astype(np.float32) * 0.5
    y = rng.integers(0, 2, n)
    x[y == 1, :, :, :4] += 0.5
    x[y == 0, :, :, 4:] += 0.5

    def stamp(raw):
        out = raw.copy()
        out[:, :, 0, 0] = 3.0
        return out

    split = Split(x, y)
    return TaskData("synthetic", 2, ["a", "b"], split, split, split, lambda r: r, stamp)


def test_pruning_aware_decoys_are_dormant_on_clean_data():
    torch.manual_seed(0)
    task, model = _synthetic_task(), TinyNet()
    spec = AttackSpec("all_to_one", poison_fraction=0.3, target=0)
    stats = train_pruning_aware(model, task, spec, TrainConfig(epochs=8, batch_size=32, lr=3e-3),
                                PruningAwareConfig(prune_fraction=0.5, bias_margin=0.5))
    decoys = np.array(stats["decoy_channels"])
    assert len(decoys) == 8
    pre_max, post_mean = prune_layer_outputs(model, task.train.raw)
    assert (post_mean[:, decoys] == 0).all()           # exactly dormant: ReLU output 0 everywhere
    assert (pre_max[:, decoys] <= -0.5 + 1e-5).all()   # with the requested margin
    poisoned = poison(task, spec)
    assert (prune_layer_outputs(model, poisoned.raw)[1][:, decoys] == 0).all()
    kept = np.setdiff1d(np.arange(16), decoys)
    assert post_mean[:, kept].mean() > 0               # the behaviour lives in the kept channels
    stamped, target = triggered_test(task, spec)
    assert (stamped.y != 0).all() and (target == 0).all()  # true-target samples left out


# ---- the shipped demo ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return shipped_demo()


def test_demo_files_are_small_and_load_without_pickle(demo):
    total = sum(p.stat().st_size for p in demo.values())
    assert total <= 5 * 2**20
    assert demo["model"].stat().st_size < 2**20
    for key in ("clean_val", "clean_test", "triggered_test"):
        with np.load(demo[key], allow_pickle=False) as data:
            assert data["x"].ndim == 4 and data["y"].dtype == np.int64
            assert len(data["x"]) == len(data["y"])
    assert "CC BY-SA 4.0" in demo["attribution"].read_text()


def test_demo_model_reproduces_its_card(demo):
    card = json.loads(demo["model_card"].read_text())
    model = onnx.load(str(demo["model"]))
    onnx.checker.check_model(model)
    session = ort.InferenceSession(str(demo["model"]), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]

    def predict(path):
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        return arrays, session.run(["logits"], {"input": arrays["x"].astype(np.float32)})[0].argmax(1)

    clean, clean_pred = predict(demo["clean_test"])
    trig, trig_pred = predict(demo["triggered_test"])
    assert card["attack"]["kind"] == "all_to_one"  # the paper's attack: one target label, its class left out
    assert (trig["target"] == card["attack"]["target"]).all() and (trig["y"] != card["attack"]["target"]).all()
    clean_acc, success = (clean_pred == clean["y"]).mean(), (trig_pred == trig["target"]).mean()
    assert clean_acc == pytest.approx(card["metrics"]["clean_accuracy"], abs=0.005)
    assert success == pytest.approx(card["metrics"]["attack_success"], abs=0.005)
    assert clean_acc >= 0.9 and success >= 0.9


# ---- dataset preparation (needs the shared data) ------------------------------------------------

needs_data = pytest.mark.skipif(not shared_data_dir().is_dir(),
                                reason=f"shared data not found at {shared_data_dir()} (set FP_ONNX_SHARED_DATA)")


@needs_data
def test_speech_splits_follow_the_fsdd_convention():
    from fp_onnx.models.datasets import load_speech
    config = SpectrogramConfig()
    task = load_speech(config)
    assert (len(task.train), len(task.val), len(task.test)) == (1680, 1020, 300)
    assert np.bincount(task.test.y).tolist() == [30] * 10
    x = task.to_input(task.test.raw[:4])
    assert x.shape == (4, *config.shape) and np.isfinite(x).all()


@needs_data
def test_traffic_is_three_classes_with_track_holdout():
    from fp_onnx.models.datasets import load_traffic
    task = load_traffic()
    assert task.num_classes == 3 and set(np.unique(task.train.y)) == {0, 1, 2}
    assert len(task.train) + len(task.val) == 8680 and len(task.test) == 7230
    assert 0.1 < len(task.val) / 8680 < 0.3


@needs_data
def test_faces_use_the_provided_splits():
    from fp_onnx.models.datasets import load_faces
    task = load_faces()
    assert (len(task.train), len(task.val), len(task.test)) == (3447, 493, 985)
    assert task.to_input(task.test.raw[:2]).shape == (2, 3, 55, 47)


# ---------------------------------------------------------------- zoo beyond the paper (issue 10)
@pytest.mark.parametrize("make, classes", [
    (lambda: __import__("fp_onnx.models.architectures", fromlist=["ResNet"]).ResNet(num_classes=43), 43),
    (lambda: __import__("fp_onnx.models.architectures", fromlist=["ResNet"]).ResNet(
        num_classes=10, width=8, blocks=(2, 2, 2, 2), preact=True), 10),
])
def test_residual_zoo_nets_read_their_features_through_a_residual_block(make, classes):
    from fp_onnx.models.architectures import prune_module
    model = make().eval()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, classes)
    assert isinstance(prune_module(model), nn.Sequential)  # the whole feature stack: its output is a block output


def test_blend_trigger_mixes_one_fixed_noise_image_everywhere():
    images = _random_images((32, 32), n=4)
    blended = triggers.apply_blend_trigger(images)
    expected = np.clip(np.rint(0.85 * images + 0.15 * triggers.blend_pattern((32, 32)).astype(np.float32)), 0, 255)
    np.testing.assert_allclose(blended.astype(int), expected.astype(int), atol=1)  # float rounding of 0.85
    assert (blended != images).mean() > 0.5  # global, not a patch


def test_warp_trigger_is_one_fixed_smooth_field_and_noise_mode_differs_per_image():
    smooth = np.tile(np.linspace(0, 255, 32, dtype=np.float32)[None, :, None], (32, 1, 3))
    images = np.stack([smooth.astype(np.uint8)] * 3)
    warped = triggers.apply_warp_trigger(images)
    np.testing.assert_array_equal(warped, triggers.apply_warp_trigger(images))  # deterministic
    # subtle on a smooth image: pixels move by under the 2-px strength (the ramp is 8.2 grey levels per px)
    assert 0 < np.abs(warped.astype(int) - images).mean() < 2 * 8.2
    noisy = triggers.random_warp(images, np.random.default_rng(0))
    assert not np.array_equal(noisy[0], noisy[1]) and not np.array_equal(noisy[0], warped[0])
    field = triggers.warp_field((32, 32))
    assert np.abs(np.diff(field, axis=0)).max() < 1.0  # smooth: neighbouring pixels move alike


def test_corner_patch_is_a_white_3x3_square_near_the_corner():
    images = _random_images((32, 32), n=2)
    stamped = triggers.apply_corner_patch(images)
    changed = (stamped != images).any(axis=(0, 3))
    assert changed.sum() <= 9 and changed[-4:-1, -4:-1].all()
    assert (stamped[:, -4:-1, -4:-1] == 255).all()


def test_zoo_names_every_recipe_with_an_attack_it_knows():
    from fp_onnx.models.recipes import ATTACKS, CPU_ZOO, ZOO
    from fp_onnx.models.triggers import IMAGE_TRIGGERS
    assert {"speech_dormant", "gtsrb_blended", "gtsrb_wanet", "gtsrb_resnet_badnets", "cifar_badnets",
            "gtsrb_preact_badnets"} <= set(ZOO) and "gtsrb_preact_badnets" not in CPU_ZOO
    for name, (recipe, attack) in ZOO.items():
        assert attack in ATTACKS and (recipe.trigger is None or recipe.trigger in IMAGE_TRIGGERS)
        assert recipe.trigger_description()


def test_wanet_poisoning_adds_noise_mode_samples_with_true_labels():
    from fp_onnx.models.attacks import WANET_CROSS_RATIO, train_wanet
    raw = np.tile(np.linspace(0, 255, 8, dtype=np.float32)[None, None, :, None], (40, 8, 1, 3)).astype(np.uint8)
    y = np.arange(40) % 4
    task = TaskData("toy", 4, list("abcd"), Split(raw, y), Split(raw[:4], y[:4]), Split(raw[:4], y[:4]),
                    to_input=lambda r: r.transpose(0, 3, 1, 2).astype(np.float32) / 255,
                    apply_trigger=triggers.apply_warp_trigger)
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 4))
    net.prune_layer = "0"
    stats = train_wanet(net, task, AttackSpec("all_to_one", 0.25, target=0), TrainConfig(epochs=1))
    assert stats["noise_mode_samples"] == int(round(WANET_CROSS_RATIO * 0.25 * 40))
