"""Recovery recipes (fp_onnx.recipes), recipe defaults, and the fallback cascade of a method."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from fp_onnx.converters import onnx_to_torch
from fp_onnx.data import open_dataset, split_dataset
from fp_onnx.defense import DefenseConfig, recover_step, recovery_attempts
from fp_onnx.errors import BadOptionError
from fp_onnx.finetune import FineTuneConfig, fine_tune
from fp_onnx.loading import load_model
from fp_onnx.methods import METHODS, defense_config, resolve_method
from fp_onnx.prune import StopRule, prune_defense
from fp_onnx.prune_point import resolve_prune_point
from fp_onnx.recipes import RECIPES, TrainingBatch, TrainingPlan, adversarial, register_recipe
from fp_onnx.recipes.adversarial import (LONG_EPOCHS, SMALL_PATCH_AREA, Unlearning, adversarial_unlearning,
                                         balance_factor, data_radius, freeze_teacher, gradient_norm, mixed_inputs,
                                         shared_mistake_loss, universal_perturbation)
from fp_onnx.recipes.attention import attention_distillation, attention_map, prepare_attention_teacher
from fp_onnx.recipes.feature_shift import reinitialise_head
from fp_onnx.recipes.head import classifier_parameters
from fp_onnx.recipes.patch import PATCH_AREA, Patch, project_mask, universal_patch
from fp_onnx.recipes.sharpness import sharpness_aware_step


@pytest.fixture(scope="module")
def data(backdoored):
    model = load_model(backdoored["model"]).model
    train, val = split_dataset(open_dataset(backdoored["clean"]), 0.2, 0)
    return model, train, val


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_trains_a_finite_model_with_its_defaults(data, recipe):
    model, train, val = data
    tuned = fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe=recipe, epochs=3))
    assert tuned.config["recipe"] == recipe and tuned.config["lr"] == RECIPES[recipe].defaults["lr"]
    assert tuned.failure is None and tuned.history[-1]["train_loss"] is not None  # (a back-off is allowed)
    # A new head (fst) needs more than three epochs when it is the only linear layer, as here; unlearning
    # (adversarial) dips first and recovers over its full schedule (see test_defense for its whole run).
    if recipe not in ("fst", "adversarial"):
        assert tuned.best_val_accuracy > 0.5


def test_recipe_defaults_fill_only_what_the_user_left_open():
    resolved = FineTuneConfig(recipe="adversarial", lr=0.002).resolved()
    assert resolved.lr == 0.002 and resolved.epochs == 40 and resolved.patience is None and resolved.keep == "last"
    assert FineTuneConfig().resolved().lr == 0.001 and FineTuneConfig().resolved().patience == 4  # the paper's
    with pytest.raises(BadOptionError, match="--recover"):
        FineTuneConfig(recipe="magic")
    with pytest.raises(BadOptionError, match="--keep"):
        FineTuneConfig(keep="median")


def test_keep_last_returns_the_last_epoch_of_a_fixed_budget(data):
    model, train, val = data
    tuned = fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe="cosine", epochs=3))
    assert tuned.history[-1]["epoch"] == 3 and tuned.best_epoch == 3  # (an epoch may be retried after a back-off)


def test_feature_shift_reinitialises_the_head_and_keeps_its_norm(data):
    model, _, _ = data
    module = onnx_to_torch(model)
    weight, _ = classifier_parameters(module)
    original = weight.detach().clone()
    head = reinitialise_head(module, FineTuneConfig())
    assert math.isclose(float(weight.detach().norm()), float(original.norm()), rel_tol=1e-5)
    cosine = float(torch.nn.functional.cosine_similarity(weight.detach().flatten(), original.flatten(), dim=0))
    assert abs(cosine) < 0.2 and torch.equal(head.original, original)


def test_universal_perturbation_is_shared_and_bounded(data):
    model, train, _ = data
    module = onnx_to_torch(model)
    batch_x = torch.from_numpy(np.asarray(train.take(np.arange(32)).x, dtype=np.float32))
    batch = TrainingBatch(batch_x, torch.from_numpy(train.labels[:32]), module(batch_x), module, "logits")
    radius = data_radius(batch_x, 1.0)
    assert data_radius(batch_x, 0.3) == pytest.approx(0.3 * radius)
    delta = universal_perturbation(module, batch, radius, None)
    assert delta.shape == batch_x.shape[1:] and float(delta.norm()) <= radius * (1 + 1e-5)
    before = torch.nn.functional.cross_entropy(module(batch_x), batch.y)
    after = torch.nn.functional.cross_entropy(module(batch_x + delta), batch.y)
    assert float(after.detach()) > float(before.detach())  # it raises the clean loss, as the inner maximisation must
    assert all(p.grad is None for p in module.parameters())  # and leaves the weights' gradients alone


def test_project_mask_keeps_elements_in_range_and_the_total_within_budget():
    torch.manual_seed(0)
    mask = torch.randn(3, 8, 8) * 2
    projected = project_mask(mask, 10.0)
    assert float(projected.min()) >= 0.0 and float(projected.max()) <= 1.0
    assert float(projected.sum()) == pytest.approx(10.0, abs=1e-3)  # the budget binds: the raw mask is far over it
    kept = projected > 0
    assert float(mask[kept].min()) >= float(mask[~kept].max())  # the largest elements are the ones that stay
    small = torch.full((4,), 0.1)
    assert torch.equal(project_mask(small, 10.0), small)  # a mask within its budget is left as it is
    assert torch.equal(project_mask(torch.tensor([-1.0, 2.0]), 5.0), torch.tensor([0.0, 1.0]))  # only clamped


def test_universal_patch_is_shared_within_budget_and_raises_the_loss(data):
    model, train, _ = data
    module = onnx_to_torch(model)
    x = torch.from_numpy(np.asarray(train.take(np.arange(32)).x, dtype=np.float32))
    y = torch.from_numpy(train.labels[:32]).long()
    torch.manual_seed(0)
    patch = universal_patch(module, x, y, "logits", None, area=0.05)
    assert patch.mask.shape == patch.pattern.shape == x.shape[1:]
    assert float(patch.mask.sum()) <= 0.05 * x[0].numel() * (1 + 1e-4) and float(patch.mask.min()) >= 0.0
    assert float(x.min()) <= float(patch.pattern.min()) and float(patch.pattern.max()) <= float(x.max())
    stamped = patch.stamp(x)
    assert torch.equal(stamped[:, patch.mask == 0], x[:, patch.mask == 0])  # outside the mask, inputs are untouched
    before = torch.nn.functional.cross_entropy(module(x), y)
    after = torch.nn.functional.cross_entropy(module(stamped), y)
    assert float(after.detach()) > float(before.detach())
    assert all(p.grad is None for p in module.parameters())
    again = universal_patch(module, x, y, "logits", patch, area=0.05)  # warm start: the search goes on from there
    assert isinstance(again, Patch) and not torch.equal(again.mask, patch.mask)
    assert float(torch.nn.functional.cross_entropy(module(again.stamp(x)), y).detach()) > float(before.detach())


def test_balance_factor_caps_the_term_gradient_at_the_clean_one():
    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    clean = (weight ** 2).sum()  # gradient (2, 4)
    steep = 100.0 * weight.sum()  # gradient (100, 100): pulls ~32x harder than the clean loss
    clean_norm = gradient_norm(clean, [weight])
    assert clean_norm == pytest.approx(math.sqrt(20.0))
    factor = balance_factor(steep, clean_norm, [weight])
    assert factor == pytest.approx(math.sqrt(20.0) / math.sqrt(20000.0))
    (gradient,) = torch.autograd.grad(steep * factor, [weight])
    assert float(gradient.norm()) == pytest.approx(math.sqrt(20.0))  # now as long as the clean gradient
    assert balance_factor(0.01 * weight.sum(), clean_norm, [weight]) == 1.0  # a weaker term is left as it is
    assert weight.grad is None  # measured without touching .grad: the training step backpropagates afterwards


def test_mixed_inputs_blend_each_input_with_another_of_the_batch():
    torch.manual_seed(0)
    x = torch.eye(6).reshape(6, 1, 2, 3) * 10.0  # input i is 10 at pixel i: a blend shows which inputs it mixes
    mixed = mixed_inputs(x)
    assert mixed.shape == x.shape and mixed.dtype == x.dtype
    for row in mixed.reshape(6, 6):
        weights = row / 10.0
        assert float(weights.sum()) == pytest.approx(1.0)  # a convex combination: a ratio and its complement
        assert int((weights > 1e-6).sum()) <= 2 and float(weights.min()) >= 0.0  # of (at most) two inputs
    assert not torch.equal(mixed, x)  # and not the batch itself


@pytest.mark.parametrize("mixup, terms", [(False, 2), (True, 3)])
def test_mixup_distillation_adds_a_term_that_pulls_towards_the_teacher(data, mixup, terms):
    model, train, _ = data
    module = onnx_to_torch(model).train()
    torch.manual_seed(0)
    state = freeze_teacher(module, FineTuneConfig())
    plan = adversarial_unlearning(Unlearning(0.3, balanced=True, mixup_distillation=mixup))(
        module, [{"params": list(module.parameters())}], FineTuneConfig(recipe="adversarial-gentle").resolved(), 10, state)
    assert len(plan.loss_terms) == terms
    first = train.take(np.arange(16))
    x, y = torch.tensor(first.x, dtype=torch.float32), torch.tensor(first.y).long()
    batch = TrainingBatch(x, y, module(x), module, "logits")
    if mixup:
        assert float(plan.loss_terms[2](batch).detach()) == pytest.approx(0.0, abs=1e-5)  # student = teacher
        perturb_parameters(module)
        assert float(plan.loss_terms[2](TrainingBatch(x, y, module(x), module, "logits")).detach()) > 1e-4
    assert module.training  # the extra passes ran in evaluation mode and left training mode on


def test_patch_recipes_unlearn_a_patch_beside_the_additive_perturbation(data):
    model, train, _ = data
    module = onnx_to_torch(model).train()
    state = freeze_teacher(module, FineTuneConfig())
    plan = adversarial_unlearning(Unlearning(shapes=("additive", "patch")))(
        module, [{"params": list(module.parameters())}], FineTuneConfig(recipe="adversarial-patch").resolved(), 10,
        state)
    assert len(plan.loss_terms) == 3  # one unlearning term per shape, then distillation
    first = train.take(np.arange(16))
    x, y = torch.tensor(first.x, dtype=torch.float32), torch.tensor(first.y).long()
    batch = TrainingBatch(x, y, module(x), module, "logits")
    additive, patch = (float(term(batch).detach()) for term in plan.loss_terms[:2])
    clean = float(torch.nn.functional.cross_entropy(batch.scores, y).detach())
    assert additive > clean and patch > clean  # each term is the loss under a perturbation that raises it
    assert isinstance(state.perturbations["patch"], Patch) and state.perturbations["additive"].shape == x.shape[1:]
    assert module.training


@pytest.mark.parametrize("recipe, area", [("adversarial-patch", PATCH_AREA), ("adversarial-patch-gentle", PATCH_AREA),
                                          ("adversarial-patch-small", SMALL_PATCH_AREA)])
def test_each_patch_recipe_searches_within_its_own_budget(data, recipe, area):
    model, train, _ = data
    module = onnx_to_torch(model).train()
    config = FineTuneConfig(recipe=recipe).resolved()
    state = RECIPES[recipe].prepare(module, config, None)
    plan = RECIPES[recipe].build(module, [{"params": list(module.parameters())}], config, 10, state)
    first = train.take(np.arange(16))
    x, y = torch.tensor(first.x, dtype=torch.float32), torch.tensor(first.y).long()
    plan.loss_terms[1](TrainingBatch(x, y, module(x), module, "logits"))  # shapes: additive, then patch
    mask = state.perturbations["patch"].mask
    assert float(mask.sum()) <= area * mask.numel() * (1 + 1e-4)
    assert float(mask.sum()) > 0.5 * area * mask.numel()  # the search spends its budget, not a smaller one


def test_the_small_patch_recipe_trains_twice_as_long_as_the_gentle_one():
    small, gentle = (FineTuneConfig(recipe=name).resolved() for name in ("adversarial-patch-small",
                                                                         "adversarial-patch-gentle"))
    assert small.epochs == LONG_EPOCHS == 2 * gentle.epochs and small.lr == gentle.lr
    assert small.keep == "average" and gentle.keep == "last"  # the mean of its second half (test_weight_average)
    assert FineTuneConfig(recipe="adversarial-patch-small", epochs=5).resolved().epochs == 5  # the user's wins


class _FixedScores(torch.nn.Module):
    """A teacher that answers every input with the same scores."""

    def __init__(self, scores: torch.Tensor):
        super().__init__()
        self.scores = scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scores.expand(len(x), -1)


def test_shared_mistake_loss_counts_only_the_teachers_mistakes_and_pushes_away_from_them():
    teacher = _FixedScores(torch.tensor([[0.0, 5.0, 0.0]]))  # always class 1
    y = torch.tensor([1, 2])  # right on the first input, wrong on the second
    logits = torch.tensor([[0.0, 2.0, 0.0], [0.0, 2.0, 0.0]], requires_grad=True)
    batch = TrainingBatch(torch.zeros(2, 4), y, logits, teacher, "logits")
    loss = shared_mistake_loss(logits, teacher, batch.x, batch)
    p = torch.softmax(logits.detach(), dim=1)[1, 1]
    assert loss.item() == pytest.approx(-math.log(1 - float(p)) / 2, rel=1e-5)  # the right answer adds 0
    loss.backward()
    assert logits.grad[0].abs().sum() == 0  # the teacher's right answers are left alone
    assert logits.grad[1, 1] > 0 and logits.grad[1, 0] < 0 and logits.grad[1, 2] < 0  # away from class 1 only
    other = _FixedScores(torch.tensor([[0.0, 0.0, 5.0]]))  # always class 2: now the first input is its mistake
    p_first = torch.softmax(logits.detach(), dim=1)[0, 2]
    assert shared_mistake_loss(logits, other, batch.x, batch).item() == pytest.approx(
        -math.log(1 - float(p_first)) / 2, rel=1e-5)


def test_the_shared_recipe_trains_perturbed_inputs_away_from_the_teachers_class_not_towards_the_label(
        data, monkeypatch):
    model, train, _ = data
    monkeypatch.setattr(adversarial, "balance_factor", lambda *args: 1.0)  # the cap is tested on its own
    module = onnx_to_torch(model).train()
    config = FineTuneConfig(recipe="adversarial-shared").resolved()
    state = RECIPES["adversarial-shared"].prepare(module, config, None)
    plan = RECIPES["adversarial-shared"].build(module, [{"params": list(module.parameters())}], config, 10, state)
    first = train.take(np.arange(16))
    x, y = torch.tensor(first.x, dtype=torch.float32), torch.tensor(first.y).long()
    batch = TrainingBatch(x, y, module(x), module, "logits")
    shared = float(plan.loss_terms[1](batch).detach())  # the patch term
    with torch.no_grad():
        perturbed = state.perturbations["patch"].stamp(x)
        expected = shared_mistake_loss(module.eval()(perturbed), state.teacher, perturbed, batch)
    assert shared == pytest.approx(float(expected), rel=1e-4)
    assert config.epochs == LONG_EPOCHS and state.perturbations["patch"].mask.sum() <= \
        SMALL_PATCH_AREA * state.perturbations["patch"].mask.numel() * (1 + 1e-4)


def test_capped_terms_of_one_batch_share_one_clean_gradient(data, monkeypatch):
    """With two perturbation shapes, both capped terms need the clean loss's gradient norm: it is one backward
    pass per batch, not one per term, and a new batch gets its own."""
    model, train, _ = data
    module = onnx_to_torch(model).train()
    plan = adversarial_unlearning(Unlearning(0.3, balanced=True, shapes=("additive", "patch")))(
        module, [{"params": list(module.parameters())}], FineTuneConfig(recipe="adversarial-patch-gentle").resolved(),
        10, freeze_teacher(module, FineTuneConfig()))
    measured = []
    monkeypatch.setattr(adversarial, "gradient_norm", lambda loss, parameters: measured.append(loss) or 1.0)
    first = train.take(np.arange(16))
    x, y = torch.tensor(first.x, dtype=torch.float32), torch.tensor(first.y).long()
    for _ in range(2):
        batch = TrainingBatch(x, y, module(x), module, "logits")
        for term in plan.loss_terms[:2]:
            term(batch)
    assert len(measured) == 2 * 3  # per batch: each term's own gradient and one clean gradient


def test_gentle_unlearning_distils_the_pruned_model_and_plain_unlearning_the_vendor(data):
    """The gentle recipe's teacher is the start (pruned) model even when the vendor's is offered: distilling the
    vendor there restored a backdoor pruning had removed. The plain recipe keeps the vendor's clean outputs."""
    model, train, _ = data
    start = onnx_to_torch(model).eval()
    vendor = perturb_parameters(onnx_to_torch(model).eval())
    x = torch.tensor(train.take(np.arange(8)).x, dtype=torch.float32)
    config = FineTuneConfig()
    gentle = RECIPES["adversarial-gentle"].prepare(start, config, vendor).teacher
    plain = RECIPES["adversarial"].prepare(start, config, vendor).teacher
    with torch.no_grad():
        torch.testing.assert_close(gentle(x), start(x))
        torch.testing.assert_close(plain(x), vendor(x))
    assert gentle is not start  # a frozen copy: training the student leaves it where it was
    assert not any(parameter.requires_grad for parameter in gentle.parameters())


@pytest.mark.parametrize("recipe", ["adversarial", "adversarial-gentle", "fst", "paper"])
def test_only_a_recipe_that_reads_the_vendor_model_gets_it_converted(data, monkeypatch, recipe):
    """Converting the vendor's unpruned model (and moving it to the GPU) is work and memory a recipe that keeps no
    vendor teacher would throw away; fine-pruning offers the reference to every recipe."""
    import fp_onnx.finetune as finetune_module
    model, train, val = data
    converted = []

    def counting(graph, *args, **kwargs):
        converted.append(graph)
        return onnx_to_torch(graph, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "onnx_to_torch", counting)
    fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe=recipe, epochs=1), reference=model)
    assert len(converted) == (2 if RECIPES[recipe].uses_reference else 1)
    assert RECIPES[recipe].uses_reference == (recipe == "adversarial")


def test_attention_map_is_unit_length_energy_over_channels():
    features = torch.rand(2, 5, 3, 4)
    maps = attention_map(features)
    assert maps.shape == (2, 12)
    torch.testing.assert_close(maps.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(attention_map(features[:, torch.randperm(5)]), maps)  # channel order is irrelevant
    torch.testing.assert_close(attention_map(3.0 * features), maps)  # so is the overall scale
    assert int(maps[0].argmax()) == int(features[0].pow(2).mean(0).flatten().argmax())


def test_attention_distillation_pulls_the_students_maps_at_the_last_convolutions_to_the_teachers(data):
    model, train, _ = data
    student = onnx_to_torch(model).eval()
    first = train.take(np.arange(16))
    x, y = torch.tensor(first.x, dtype=torch.float32), torch.tensor(first.y).long()
    same = prepare_attention_teacher(student, FineTuneConfig(), onnx_to_torch(model))
    assert same.layers == tuple(student.outputs_of("Conv")[-3:]) and len(same.layers) >= 2
    assert float(attention_distillation(same, TrainingBatch(x, y, student(x), student, "logits")).detach()) < 1e-9
    other = onnx_to_torch(model).eval()
    moved = prepare_attention_teacher(other, FineTuneConfig(), perturb_parameters(onnx_to_torch(model), 0.3))
    term = attention_distillation(moved, TrainingBatch(x, y, other(x), other, "logits"))
    assert float(term.detach()) > 0
    term.backward()
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in other.parameters())
    assert not any(p.requires_grad for p in moved.teacher.parameters())


def test_attention_distillation_trains_its_teacher_first_with_the_runs_budget(data, monkeypatch):
    import fp_onnx.finetune as finetune_module
    model, train, val = data
    calls = []
    original = finetune_module.fine_tune

    def recording(model, train, val, config, **kwargs):
        calls.append((config.recipe, config.epochs))
        return original(model, train, val, config, **kwargs)

    monkeypatch.setattr(finetune_module, "fine_tune", recording)
    tuned = finetune_module.fine_tune(model, train, val, FineTuneConfig(device="cpu", recipe="nad", epochs=2))
    assert calls == [("nad", 2), ("cosine", 2)]
    assert tuned.teacher["recipe"] == "cosine" and tuned.to_dict()["teacher"]["failure"] is None
    assert tuned.failure is None and tuned.history[-1]["epoch"] == 2


def test_attention_distillation_refuses_a_model_without_convolutions():
    from onnx import TensorProto, helper, numpy_helper
    weight = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"])], "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])], [weight])
    mlp = onnx_to_torch(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(BadOptionError, match="no Conv node"):
        prepare_attention_teacher(mlp, FineTuneConfig(), None)


def perturb_parameters(module: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """`module` with noise added to every parameter in place: a model near it whose outputs differ."""
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return module


def test_sharpness_aware_step_takes_the_gradient_at_the_perturbed_weights():
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    loss_at = lambda w: (w ** 4).sum()  # noqa: E731 - a curved loss, so the two gradients differ
    loss_at(weight).backward()
    first = weight.grad.clone()
    perturbed = weight.detach() + 0.05 * first / first.norm()

    def closure():
        optimizer.zero_grad()
        loss_at(weight).backward()

    sharpness_aware_step(optimizer, 0.05)(closure)
    expected = torch.tensor([1.0, -2.0]) - 0.1 * 4 * perturbed ** 3
    torch.testing.assert_close(weight.detach(), expected)


def test_a_recipe_that_fails_gives_way_to_the_methods_fallback_pruned_deeper(data):
    """The fallback starts from the vendor model cut further along the same ranking (the fallback rule), and
    the pruning returned is the one the kept model started from."""
    model, train, val = data
    point = resolve_prune_point(model, None)
    pruned = prune_defense(model, point, val, StopRule("channels", 2))

    @register_recipe("test-explode", defaults={"lr": 1e6, "epochs": 2, "patience": None, "keep": "last",
                                               "max_recoveries": 0})
    def explode(module, groups, config, steps_per_epoch, prepared):
        return TrainingPlan(torch.optim.SGD(groups, lr=config.lr))

    try:
        config = DefenseConfig(finetune=FineTuneConfig(device="cpu", recipe="test-explode", clip_grad_norm=0,
                                                       layer_scale_spread=0, epochs=2),
                               fallback_recipes=("paper",), fallback_rule=StopRule("channels", 5))
        tuned, attempts, used = recover_step(model, point, pruned, train, val, config, floor=0.5, progress=False)
    finally:
        RECIPES.pop("test-explode")
    assert [a["recipe"] for a in attempts] == ["test-explode", "paper"]
    assert [a["channels_pruned"] for a in attempts] == [2, 5]
    assert attempts[0]["below_floor"] and not attempts[1]["below_floor"]
    assert tuned.config["recipe"] == "paper" and tuned.best_val_accuracy >= 0.5
    assert used.channels_pruned == 5 and used.curve is pruned.curve and used.rule == StopRule("channels", 5)
    assert used.surgery.channels_removed == pruned.curve.order[:5]
    kept = len(used.surgery.channels_kept)
    assert kept == point.channels - 5
    conv_weights = [t for t in tuned.model.graph.initializer if len(t.dims) == 4]
    assert any(t.dims[0] == kept for t in conv_weights)  # the shipped model is the deeper-pruned one


def test_fallbacks_try_the_deeper_pruning_first_then_the_method_pruning_again(data):
    model, _, val = data
    point = resolve_prune_point(model, None)
    pruned = prune_defense(model, point, val, StopRule("channels", 2))
    config = DefenseConfig(finetune=FineTuneConfig(recipe="adversarial"), fallback_recipes=("cosine", "paper"),
                           fallback_rule=StopRule("channels", 5))
    order = [(recipe, start.channels_pruned) for recipe, start in recovery_attempts(model, point, pruned, config)]
    assert order == [("adversarial", 2), ("cosine", 5), ("paper", 5), ("cosine", 2), ("paper", 2)]
    same = replace(config, fallback_rule=StopRule("channels", 2))  # nothing deeper to try: no repeats
    assert [(r, s.channels_pruned) for r, s in recovery_attempts(model, point, pruned, same)] == \
        [("adversarial", 2), ("cosine", 2), ("paper", 2)]
    gentler = replace(config, second_recipes=("adversarial-gentle",))  # a second unlearning: same pruning, once
    assert [(r, s.channels_pruned) for r, s in recovery_attempts(model, point, pruned, gentler)] == \
        [("adversarial", 2), ("adversarial-gentle", 2), ("cosine", 5), ("paper", 5), ("cosine", 2), ("paper", 2)]


def test_the_warp_recipes_come_first_only_when_the_warp_check_flags_a_class(data):
    model, _, val = data
    point = resolve_prune_point(model, None)
    pruned = prune_defense(model, point, val, StopRule("channels", 2))
    config = DefenseConfig(finetune=FineTuneConfig(recipe="adversarial"), fallback_recipes=("cosine",),
                           warp_recipes=("adversarial-warp",))
    flagged = [(r, s.channels_pruned) for r, s in recovery_attempts(model, point, pruned, config, warp_suspected=True)]
    assert flagged == [("adversarial-warp", 2), ("adversarial", 2), ("cosine", 2)]
    assert [r for r, _ in recovery_attempts(model, point, pruned, config)] == ["adversarial", "cosine"]
    assert defense_config(METHODS["recommended"]).warp_recipes == ("adversarial-warp",)
    assert defense_config(resolve_method("recommended", recover="cosine")).warp_recipes == ()  # the user's recipe only


def test_the_deeper_fallback_pruning_follows_only_the_methods_own_stop_rule():
    method = METHODS["recommended"]
    assert defense_config(method).fallback_rule == StopRule("threshold", method.fallback_threshold)
    assert defense_config(method, rule=StopRule("threshold", 0.03)).fallback_rule is None
    assert defense_config(METHODS["paper"]).fallback_rule is None
    assert resolve_method("recommended", recover="cosine").fallback_threshold is None  # no fallback, no re-cut


def test_the_methods_unlearning_recipes_start_from_its_own_pruning_and_the_rest_fall_back():
    method = METHODS["recommended"]
    config = defense_config(method)
    assert (config.finetune.recipe, *config.second_recipes) == method.recover[:method.same_pruning]
    assert config.fallback_recipes == method.recover[method.same_pruning:] and config.fallback_recipes
    single = defense_config(resolve_method("recommended", recover="adversarial-gentle"))
    assert single.finetune.recipe == "adversarial-gentle" and single.second_recipes == single.fallback_recipes == ()


def test_methods_resolve_and_overrides_replace_the_cascade():
    assert METHODS["paper"].rank == "activation" and METHODS["paper"].recover == ("paper",)
    assert resolve_method(None).name == "recommended"
    custom = resolve_method("recommended", rank="rnp", recover="fst")
    assert custom.rank == "rnp" and custom.recover == ("fst",) and custom.threshold == METHODS["recommended"].threshold
    with pytest.raises(BadOptionError, match="--method"):
        resolve_method("magic")


def test_label_smoothing_means_the_same_for_every_output_kind():
    from fp_onnx.losses import classification_loss
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(8) % 5
    expected = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    for scores, kind in ((logits, "logits"), (torch.log_softmax(logits, 1), "log_probabilities"),
                         (torch.softmax(logits, 1), "probabilities")):
        torch.testing.assert_close(classification_loss(scores, labels, kind, 0.1), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(BadOptionError, match="--label-smoothing"):
        FineTuneConfig(label_smoothing=1.0)
