"""Adversarial unlearning with a universal perturbation, anchored by distillation.

After I-BAU (Zeng et al., ICLR 2022, "Adversarial Unlearning of Backdoors via
Implicit Hypergradient"), implemented from its description in a simpler form: the
minimax `min_weights max_{||delta|| <= r} loss(x + delta, y)` over ONE perturbation
`delta` shared by all inputs of a batch. A trigger is exactly such a shared
perturbation that flips many predictions at once, so the inner maximisation finds
trigger-like directions (for patches, blends, noise bursts; all-to-one and
all-to-all alike) without ever seeing a triggered input, and the outer step teaches
the model to ignore them. We solve it by alternating: each step takes
`UAP_STEPS` normalised-gradient ascent steps on `delta` (warm-started from the last
batch's), then one descent step of the model on

    CE(f(x), y) + ADV_WEIGHT * CE(f(x + delta), y) + KD_WEIGHT * T^2 KL(f_0(x) / T || f(x) / T)

The last term distils the reference model's outputs on clean
inputs: with a defender set of a few hundred samples, the adversarial term alone
costs several points of clean accuracy; the start model is accurate on clean
inputs (its fault is only triggered ones), so anchoring to it keeps clean
behaviour while the backdoor is unlearned (weight 4: at weight 1 the unlearning took
the dormant-channel speech model and the traffic-sign net below the clean-accuracy
floor). The radius is relative to the data: `UAP_RADIUS` times the median distance of
a batch's inputs from their mean, so it means the same for images in [0, 1], 0-255
pixels or spectrograms. `adversarial-small` uses 0.3x that radius: triggers differ in
size by domain, and with weight-1 distillation it was what removed the traffic-sign
patch backdoor where the full radius cost 35 points. With weight 4 the full radius
did that too, so the default no longer falls back to it (docs/decisions.md).

`adversarial-balanced` caps the pull of the perturbation term: its gradient may be at
most as long as the clean classification loss's gradient on the same batch. On models
where the found perturbation is close to the trigger itself (a blended image-wide
trigger is inside the radius), the perturbed loss starts in the hundreds and its
gradient is ~100x the clean one: every step then follows the unlearning direction
alone, and clean accuracy is spent before the backdoor is gone (gtsrb_blended and
faces_badnets collapsed to 0.16 and 0.09). Capped, clean learning keeps a say in each
step (measured in docs/decisions.md, bullet `adversarial-balanced`).

`adversarial-gentle` is the balanced recipe at 0.3x the radius and lr 0.0015, with a
third term: distillation of the teacher's outputs on *mixed* clean inputs (each input
blended with another one of the batch at a random ratio, as in mixup). A defender set
of a few hundred images pins the student to the teacher at those few points only;
mixed inputs are more points of the same clean behaviour (no trigger is in them), so
clean accuracy comes back further while the backdoor is unlearned (faces_badnets:
0.715 → 0.740 at the end of the same run). Its teacher is the pruned start model, not the
vendor (`freeze_start_model`): the gentle recipe runs where pruning may already have taken the
backdoor's channels away, and distilling the vendor there put the backdoor back (the residual
GTSRB net: 0.028 attack success with the pruned teacher, 0.132 with the vendor's). Measured in
docs/decisions.md, bullet `adversarial-gentle`.

`adversarial-patch` and `adversarial-patch-gentle` are the plain and the gentle recipe with a
second unlearning term: a universal *patch* (`fp_onnx.recipes.patch`), searched and unlearned
beside the additive perturbation. A patch trigger replaces pixels, which an L2 ball around the
input reaches only by also containing much else; unlearning patches cost the face model less
clean accuracy for the same attack success (docs/decisions.md, bullet "Universal patches").
They are options. `adversarial-patch-small`, the default's second attempt, is the gentle one with a
patch of 1 % of the input and twice the epochs: on the face models it left 0.03-0.11 attack success where
the 5 % patch over 40 epochs left 0.06-0.20, at about the same clean accuracy (1.5 points lower to 0.8
higher; docs/decisions.md, "A smaller patch for longer"). It returns the mean of the weights of its second
half (`keep="average"`, `fp_onnx.weight_average`), which on the face model kept up to 1.3 more
points of clean accuracy than the last epoch. It replaced `adversarial-gentle` in the default once it
had also removed the GTSRB backdoors that one removes (docs/decisions.md, "The default's second attempt").

`adversarial-shared` is `adversarial-patch-small` with the unlearning target of Shared Adversarial
Unlearning: a perturbed input is trained away from the teacher's mistake on it, not towards its label
(`shared_mistake_loss`).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from fp_onnx.recipes import TrainingBatch, TrainingPlan, frozen_teacher, register_recipe, sgd_or_adam
from fp_onnx.recipes.patch import PATCH_AREA, Patch, universal_patch
from fp_onnx.recipes.schedule import cosine_schedule
from fp_onnx.recipes.search_step import step_within_ball
from fp_onnx.recipes.warp import Warp, own_random_numbers, scan_report, suspect_class, universal_warp, warp_success
from fp_onnx.errors import BadOptionError
from fp_onnx.losses import as_log_probabilities, classification_loss
from fp_onnx.module_mode import evaluation_mode

UAP_RADIUS = 1.0
SMALL_UAP_RADIUS = 0.3
GENTLE_LR = 0.0015
SMALL_PATCH_AREA = 0.01
LONG_EPOCHS = 80
UAP_STEPS = 5
UAP_STEP_FRACTION = 0.5
ADV_WEIGHT = 1.0
KD_WEIGHT = 4.0
KD_TEMPERATURE = 2.0


@dataclass
class UnlearningState:
    teacher: torch.nn.Module
    perturbations: dict[str, torch.Tensor | Patch | WarpSearch] = field(default_factory=dict)
    """The last batch's perturbation of each shape (an additive delta, a patch, the warp search's state), where the
    next search starts."""

    def findings(self) -> dict:
        """What the searches learned about the model, for the report: the warp scan's verdict, when it ran."""
        warp = self.perturbations.get("warp")
        return {} if warp is None else {"warp_scan": warp.to_dict()}


def freeze_teacher(module: torch.nn.Module, config, reference: torch.nn.Module | None = None) -> UnlearningState:
    """The clean behaviour to keep, frozen: the vendor's unpruned model when given (its clean outputs are
    the best there are; the backdoor only shows on triggered inputs, which distillation never sees), else a
    copy of the start model."""
    return UnlearningState(frozen_teacher(module, reference))


def freeze_start_model(module: torch.nn.Module, config, reference: torch.nn.Module | None = None) -> UnlearningState:
    """The start model (the pruned one) as the teacher, whatever the reference: where pruning has removed the
    backdoor, the vendor's outputs still carry it (its logits on clean inputs are shaped by the backdoor
    neurons pruning took away), and distilling them puts it back; the pruned model's outputs do not."""
    return freeze_teacher(module, config, None)


def freeze_start_model_aim_warps(module: torch.nn.Module, config,
                                 reference: torch.nn.Module | None = None) -> UnlearningState:
    """`freeze_start_model`, with the warp search pointed at the class the defense's warp check flagged
    (`config.warp_target`), when it ran: the recipe does not scan the classes again."""
    state = freeze_start_model(module, config, reference)
    if config.warp_target is not None:
        state.perturbations["warp"] = WarpSearch(config.warp_target, rates=[])
    return state


def universal_perturbation(module: torch.nn.Module, batch: TrainingBatch, radius: float,
                           start: torch.Tensor | None) -> torch.Tensor:
    """One perturbation for the whole batch that raises its loss, with ||delta||_2 <= radius.

    Gradients are taken with respect to delta only (the weights' .grad is untouched), with
    the module in eval mode so BatchNorm statistics do not move.
    """
    shape = batch.x.shape[1:]
    delta = start.detach().clone() if start is not None and start.shape == shape else torch.zeros(shape, device=batch.x.device)
    with evaluation_mode(module):
        for _ in range(UAP_STEPS):
            delta.requires_grad_(True)
            loss = classification_loss(module(batch.x + delta), batch.y, batch.kind)
            gradient, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                delta = step_within_ball(delta, gradient, radius, UAP_STEP_FRACTION)
    return delta.detach()


def balance_factor(term: torch.Tensor, clean_norm: float, parameters: list[torch.Tensor]) -> float:
    """The factor (<= 1) that makes `term`'s gradient over `parameters` no longer than `clean_norm`, the clean
    loss's gradient norm (`CleanGradientNorm`).

    The gradient is taken without touching .grad (the training step backpropagates the
    scaled sum afterwards); the factor is a plain number, so no gradient flows through it.
    """
    term_norm = gradient_norm(term, parameters)
    return min(1.0, clean_norm / term_norm) if term_norm > 0 else 1.0


def gradient_norm(loss: torch.Tensor, parameters: list[torch.Tensor]) -> float:
    """The L2 norm of `loss`'s gradient over `parameters`, leaving .grad and the graph in place."""
    gradients = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.detach().float() ** 2).sum() for g in gradients if g is not None)))


class CleanGradientNorm:
    """The clean classification loss's gradient norm on a batch, computed once however many capped terms ask
    for it (a recipe with two perturbation shapes has two): each costs a backward pass through the model.

    The batch is remembered by a weak reference, so the cache never keeps a finished step's graph alive.
    """

    def __init__(self, parameters: list[torch.Tensor]):
        self.parameters = parameters
        self._batch: weakref.ref | None = None
        self._norm = 0.0

    def __call__(self, batch: TrainingBatch) -> float:
        if self._batch is None or self._batch() is not batch:
            self._norm = gradient_norm(classification_loss(batch.scores, batch.y, batch.kind), self.parameters)
            self._batch = weakref.ref(batch)
        return self._norm


def data_radius(x: torch.Tensor, scale: float) -> float:
    """`scale` times the median distance of the batch's inputs from their mean."""
    centred = (x - x.mean(dim=0, keepdim=True)).reshape(len(x), -1)
    return scale * float(centred.norm(dim=1).median())


ADVERSARIAL_DEFAULTS = {
    "lr": 0.005, "epochs": 40, "patience": None, "keep": "last", "weight_decay": 5e-4,
    # one back-off, then give way: a model this recipe destroys at lr/10 is better
    # served by a gentler recipe than by a slower destruction.
    "max_recoveries": 1,
    # clean accuracy dips, often by a third, while the perturbations are unlearned,
    # and comes back as distillation re-anchors it under the decaying learning rate:
    # no mid-run collapse check (non-finite and exploding losses are still caught),
    # the floor on the result is checked at the end.
    "collapse_drop": 1.0}


@dataclass(frozen=True)
class Unlearning:
    """What distinguishes the adversarial recipes from one another."""

    radius_scale: float = UAP_RADIUS
    """Perturbation radius in units of the data's spread (`data_radius`)."""
    balanced: bool = False
    """Cap the perturbation term's gradient at the clean loss's (`balance_factor`)."""
    mixup_distillation: bool = False
    """Also distil the teacher's outputs on mixed clean inputs (`mixed_inputs`)."""
    shapes: tuple[str, ...] = ("additive",)
    """Which perturbations are searched and unlearned, each with its own term: "additive" (in an L2 ball,
    `universal_perturbation`), "patch" (a mask and a pattern, `fp_onnx.recipes.patch`), "warp" (a smooth
    displacement field, `fp_onnx.recipes.warp`)."""
    patch_area: float = PATCH_AREA
    """The patch mask's total as a fraction of the input's elements (`universal_patch`)."""
    target: str = "label"
    """What a perturbed input is trained towards: "label" (its true label: robustness to the perturbation) or
    "shared" (away from the class the teacher gives it, when that is a wrong one: `shared_mistake_loss`)."""


def mixed_inputs(x: torch.Tensor) -> torch.Tensor:
    """Each input blended with another input of the batch, at a ratio drawn uniformly per input.

    The result is still made of clean inputs only, so the teacher's outputs on it carry its clean behaviour
    and none of its backdoor: more points at which distillation anchors the student than the defender has.
    """
    partners = x[torch.randperm(len(x), device=x.device)]
    ratio = torch.rand((len(x),) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype)
    return ratio * x + (1 - ratio) * partners


@dataclass
class WarpSearch:
    """The warp search's state over a run: the suspect class (None: no warp backdoor evident), the per-class
    success rates it was chosen from (none when the defense's warp check chose it: its report has them), and the
    last warp found."""

    target: int | None
    rates: list[float]
    warp: Warp | None = None

    def to_dict(self) -> dict:
        return scan_report(self.target, self.rates)


def _additive_search(module, batch: TrainingBatch, settings: Unlearning, last):
    delta = universal_perturbation(module, batch, data_radius(batch.x, settings.radius_scale), last)
    return delta, batch.x + delta


def _patch_search(module, batch: TrainingBatch, settings: Unlearning, last):
    patch = universal_patch(module, batch.x, batch.y, batch.kind, last, settings.patch_area)
    return patch, patch.stamp(batch.x)


def _warp_search(module, batch: TrainingBatch, settings: Unlearning, last: WarpSearch | None):
    """A warp towards the class a warp reaches far more easily than the others, decided once on the first batch of
    the run (`fp_onnx.recipes.warp.suspect_class`); none where no class stands out."""
    if last is None:
        with own_random_numbers(batch.x.device):
            rates = warp_success(module, batch.x, batch.y, batch.kind)
        last = WarpSearch(suspect_class(rates), rates)
    if last.target is None:
        return last, None
    last.warp = universal_warp(module, batch.x, batch.y, batch.kind, last.warp, last.target)
    return last, None if last.warp is None else last.warp.apply(batch.x)


PERTURBATION_SEARCHES = {"additive": _additive_search, "patch": _patch_search, "warp": _warp_search}
"""`Unlearning.shapes` names: search(module, batch, settings, last found) -> (found, the perturbed batch), where the
perturbed batch is None when there is nothing to unlearn (no suspect class for warps, or no images): that term is
then zero."""


def adversarial_unlearning(settings: Unlearning):
    """The recipe's training plan for `settings`."""

    def build(module, groups, config, steps_per_epoch, state: UnlearningState) -> TrainingPlan:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            raise BadOptionError("--recover adversarial runs in one process (its extra forward passes do not fit "
                                 "DistributedDataParallel); run it without torchrun")
        optimizer = sgd_or_adam(groups, config)
        parameters = [p for group in groups for p in group["params"]]
        clean_norm = CleanGradientNorm(parameters)
        state.teacher.to(next(module.parameters()).device)

        def unlearning_term(shape: str):
            def unlearn(batch: TrainingBatch) -> torch.Tensor:
                if len(batch.x) < 2:
                    return batch.scores.sum() * 0.0
                perturbed = perturbed_inputs(shape, batch)
                if perturbed is None:
                    return batch.scores.sum() * 0.0
                scores = _evaluation_mode_scores(module, perturbed)
                term = ADV_WEIGHT * (shared_mistake_loss(scores, state.teacher, perturbed, batch)
                                     if settings.target == "shared" else
                                     classification_loss(scores, batch.y, batch.kind))
                if settings.balanced and term.requires_grad:
                    term = term * balance_factor(term, clean_norm(batch), parameters)
                return term
            return unlearn

        def perturbed_inputs(shape: str, batch: TrainingBatch) -> torch.Tensor:
            found, perturbed = PERTURBATION_SEARCHES[shape](module, batch, settings, state.perturbations.get(shape))
            state.perturbations[shape] = found
            return perturbed

        def distil(batch: TrainingBatch) -> torch.Tensor:
            return _distillation(state.teacher, batch.x, batch.scores, batch.kind)

        def distil_mixed(batch: TrainingBatch) -> torch.Tensor:
            if len(batch.x) < 2:
                return batch.scores.sum() * 0.0
            mixed = mixed_inputs(batch.x)
            return _distillation(state.teacher, mixed, _evaluation_mode_scores(module, mixed), batch.kind)

        terms = tuple(unlearning_term(shape) for shape in settings.shapes) + (distil,)
        terms += (distil_mixed,) if settings.mixup_distillation else ()
        return TrainingPlan(optimizer, cosine_schedule(optimizer, config.epochs * steps_per_epoch), loss_terms=terms)

    return build


def shared_mistake_loss(scores: torch.Tensor, teacher: torch.nn.Module, perturbed: torch.Tensor,
                        batch: TrainingBatch) -> torch.Tensor:
    """-log(1 - p(c | x')) averaged over the batch, where c is the teacher's class for the perturbed input x'
    and only inputs the teacher gets wrong count (the others add 0).

    After Shared Adversarial Unlearning (Wei et al., NeurIPS 2023), from its description: a backdoor is a
    mistake the backdoored model and the purified one *share*, so the purified model need not classify a
    perturbed input correctly, only not make the teacher's mistake on it. Training it towards the true label
    instead asks for robustness to every trigger-sized change, which a fragile model (the 0.74-accuracy face
    net) pays for in clean accuracy. The teacher is the backdoored start model, so its mistakes on
    trigger-like inputs point at the attacker's class.
    """
    with torch.no_grad():
        mistaken = as_log_probabilities(teacher(perturbed), batch.kind).argmax(dim=1)
        counted = (mistaken != batch.y).to(scores.dtype)
    probability = as_log_probabilities(scores, batch.kind).exp().gather(1, mistaken[:, None]).squeeze(1)
    return (counted * -torch.log1p(-probability.clamp(max=1 - 1e-6))).mean()


def _evaluation_mode_scores(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The module's scores on inputs that are not real ones (perturbed, mixed), in evaluation mode: BatchNorm
    must not fold their statistics into its running averages, which would cost clean accuracy at any rate."""
    with evaluation_mode(module):
        return module(x)


def _distillation(teacher: torch.nn.Module, x: torch.Tensor, scores: torch.Tensor, kind: str) -> torch.Tensor:
    """KD_WEIGHT * T^2 * KL(teacher(x) / T || scores / T)."""
    with torch.no_grad():
        target = as_log_probabilities(teacher(x), kind, KD_TEMPERATURE).exp()
    student = as_log_probabilities(scores, kind, KD_TEMPERATURE)
    return KD_WEIGHT * KD_TEMPERATURE ** 2 * F.kl_div(student, target, reduction="batchmean")


register_recipe("adversarial", prepare=freeze_teacher, uses_reference=True, defaults=ADVERSARIAL_DEFAULTS,
                summary="adversarial unlearning of universal perturbations (I-BAU-style) with distillation "
                        "from the vendor model, cosine schedule")(adversarial_unlearning(Unlearning()))
register_recipe("adversarial-small", prepare=freeze_teacher, uses_reference=True, defaults=ADVERSARIAL_DEFAULTS,
                summary=f"adversarial unlearning with perturbations {SMALL_UAP_RADIUS:g}x as large: for models "
                        "whose clean accuracy the full radius costs (small triggers on images)"
                )(adversarial_unlearning(Unlearning(SMALL_UAP_RADIUS)))
register_recipe("adversarial-balanced", prepare=freeze_teacher, uses_reference=True, defaults=ADVERSARIAL_DEFAULTS,
                summary="adversarial unlearning whose perturbation term pulls at most as hard as the clean loss "
                        "(gradient-norm cap): for models the plain recipe collapses (image-wide triggers)"
                )(adversarial_unlearning(Unlearning(balanced=True)))
GENTLE_DEFAULTS = {**ADVERSARIAL_DEFAULTS, "lr": GENTLE_LR,
                   # no back-off: at this rate a failure is not a step too large, and a tenth of it leaves the
                   # backdoor (gtsrb_blended at lr 0.0005: 0.096 attack success)
                   "max_recoveries": 0}
GENTLE = Unlearning(SMALL_UAP_RADIUS, balanced=True, mixup_distillation=True)
"""The gentle recipe's settings; its patch variants change only what they search."""

register_recipe("adversarial-gentle", prepare=freeze_start_model, defaults=GENTLE_DEFAULTS,
                summary=f"balanced adversarial unlearning at {SMALL_UAP_RADIUS:g}x the radius and lr {GENTLE_LR:g}, "
                        "distilling the pruned model on clean and mixed clean inputs: for image models whose clean "
                        "accuracy the other recipes cost")(adversarial_unlearning(GENTLE))
register_recipe("adversarial-patch", prepare=freeze_teacher, uses_reference=True, defaults=ADVERSARIAL_DEFAULTS,
                summary="the adversarial recipe unlearning universal patches (a mask and a pattern, as patch triggers "
                        "are) besides additive perturbations")(
    adversarial_unlearning(Unlearning(shapes=("additive", "patch"))))
register_recipe("adversarial-patch-gentle", prepare=freeze_start_model, defaults=GENTLE_DEFAULTS,
                summary="the gentle recipe unlearning universal patches besides additive perturbations")(
    adversarial_unlearning(replace(GENTLE, shapes=("additive", "patch"))))
SMALL_PATCH_DEFAULTS = {**GENTLE_DEFAULTS, "epochs": LONG_EPOCHS,
                        # the mean of epochs 41-80, not the last: up to 1.3 points more clean accuracy on the
                        # face model at the same or less attack success (fp_onnx.weight_average)
                        "keep": "average"}
register_recipe("adversarial-patch-small", prepare=freeze_start_model, defaults=SMALL_PATCH_DEFAULTS,
                summary=f"the gentle patch recipe with patches of {SMALL_PATCH_AREA:.0%} of the input, for "
                        f"{LONG_EPOCHS} epochs, returning the mean of the second half's weights: removes a "
                        "face-sized patch backdoor at little cost in clean accuracy")(
    adversarial_unlearning(replace(GENTLE, shapes=("additive", "patch"), patch_area=SMALL_PATCH_AREA)))
register_recipe("adversarial-shared", prepare=freeze_start_model, defaults=SMALL_PATCH_DEFAULTS,
                summary="adversarial-patch-small whose perturbed inputs are trained away from the pruned model's "
                        "mistake on them rather than towards their label (after Shared Adversarial Unlearning)")(
    adversarial_unlearning(replace(GENTLE, shapes=("additive", "patch"), patch_area=SMALL_PATCH_AREA,
                                   target="shared")))
register_recipe("adversarial-warp", prepare=freeze_start_model_aim_warps, defaults=GENTLE_DEFAULTS,
                summary="the gentle recipe unlearning universal smooth warps (WaNet-style displacement fields) "
                        "besides additive perturbations: for warping triggers")(
    adversarial_unlearning(replace(GENTLE, shapes=("additive", "warp"))))
