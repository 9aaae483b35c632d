"""Attention distillation from a fine-tuned teacher (the `nad` recipe).

After Neural Attention Distillation (Li et al., ICLR 2021, "Neural Attention
Distillation: Erasing Backdoor Triggers from Deep Neural Networks"), implemented
from its description. A teacher is the start model fine-tuned on the defender's
clean data; the student (the start model again) is then fine-tuned on the same data
while its intermediate *attention maps* are pulled to the teacher's:

    CE(f(x), y) + NAD_BETA * sum over layers l of mean((a_l(x) - a_l^T(x))^2)

where a_l is layer l's activation energy over channels, `mean_c |F_c|^p` with
p = `NAD_POWER`, flattened over the spatial positions and scaled to unit length per
input (attention transfer, Zagoruyko and Komodakis, 2017). Fine-tuning alone moves the
teacher's attention away from where a trigger would draw it only a little; matching
maps rather than outputs passes that little on at every layer at once, which the
authors found erases backdoors that fine-tuning leaves.

Where this differs from the paper, and why:

* the teacher is trained by the `cosine` recipe (`NAD_TEACHER_RECIPE`) from the model
  fine-pruning hands over, the pruned one: the paper fine-tunes the backdoored model
  itself; in fp-onnx the student starts pruned, and a teacher of another width would
  have other attention maps;
* the layers are the outputs of the last `NAD_LAYERS` convolutions of the graph: the
  paper reads the outputs of a WideResNet's residual groups, which an arbitrary
  vendor graph does not name. A Conv's output is the one feature tensor whose channel
  axis the ONNX spec fixes (1), whatever layout the vendor's converter used elsewhere
  (tf2onnx's NHWC Transposes), so the maps mean the same for every exporter. They are
  taken before BatchNorm and the activation, energy over channels either way;
* the schedule is the `cosine` recipe's (lr 0.01 annealed to zero, 20 epochs, last
  epoch kept), not the paper's lr 0.1 with step decay, which diverges on the zoo's
  small plain nets: one schedule for teacher and student keeps the comparison with
  `cosine` alone about the distillation term.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from fp_onnx.errors import BadOptionError
from fp_onnx.recipes import TrainingBatch, TrainingPlan, frozen_teacher, register_recipe, sgd_or_adam
from fp_onnx.recipes.schedule import cosine_schedule

NAD_TEACHER_RECIPE = "cosine"
NAD_LAYERS = 3
NAD_POWER = 2.0
NAD_BETA = 1000.0
"""Weight of the attention term. Maps have unit length, so each layer's mean squared difference is of the order
1/positions (1e-3 to 1e-2 for the zoo's feature maps): at this weight the term is of the order of the
classification loss (the attention-transfer paper's scale)."""


@dataclass
class AttentionState:
    """What the recipe keeps between steps: the frozen teacher, the tensors compared, and both models' values of
    those tensors in their last forward pass (filled by tensor hooks)."""

    teacher: torch.nn.Module
    layers: tuple[str, ...]
    student_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_maps: dict[str, torch.Tensor] = field(default_factory=dict)


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """Per input, the unit-length vector of `mean over channels |F|^p` at every spatial position (channels on
    axis 1)."""
    energy = features.abs().pow(NAD_POWER).mean(dim=1).reshape(len(features), -1)
    return F.normalize(energy.float(), dim=1)


def last_convolutions(module: torch.nn.Module, count: int) -> tuple[str, ...]:
    """The outputs of the graph's last `count` Conv nodes: where the attention maps are compared."""
    outputs = module.outputs_of("Conv")
    if not outputs:
        raise BadOptionError("--recover nad compares the attention maps of convolution layers; this model has "
                             "no Conv node (choose another --recover recipe)")
    return tuple(outputs[-count:])


def prepare_attention_teacher(module: torch.nn.Module, config, reference: torch.nn.Module | None = None
                              ) -> AttentionState:
    """Freeze the teacher (the fine-tuned copy fine_tune hands over; the start model when none is given) and
    hook both models' layers so every forward pass records their values."""
    layers = last_convolutions(module, NAD_LAYERS)
    state = AttentionState(frozen_teacher(module, reference), layers)
    for name in layers:
        module.add_tensor_hook(name, _recorder(state.student_maps, name))
        state.teacher.add_tensor_hook(name, _recorder(state.teacher_maps, name))
    return state


def _recorder(maps: dict[str, torch.Tensor], name: str):
    def record(value: torch.Tensor) -> torch.Tensor:
        maps[name] = value
        return value

    return record


def attention_distillation(state: AttentionState, batch: TrainingBatch) -> torch.Tensor:
    """NAD_BETA * sum over the layers of the mean squared difference of the two attention maps on the batch (the
    student's were recorded by the forward pass that scored it; the teacher runs once here)."""
    with torch.no_grad():
        state.teacher(batch.x)
    terms = [F.mse_loss(attention_map(state.student_maps[name]), attention_map(state.teacher_maps[name]))
             for name in state.layers]
    return NAD_BETA * torch.stack(terms).sum()


@register_recipe("nad", prepare=prepare_attention_teacher, teacher_recipe=NAD_TEACHER_RECIPE,
                 defaults={"lr": 0.01, "epochs": 20, "patience": None, "keep": "last", "weight_decay": 5e-4},
                 summary=f"neural attention distillation (NAD-style): a teacher fine-tuned by `{NAD_TEACHER_RECIPE}`, "
                         f"the student's attention maps at the last {NAD_LAYERS} convolutions pulled to the "
                         "teacher's, cosine schedule")
def attention_recipe(module, groups, config, steps_per_epoch, state: AttentionState) -> TrainingPlan:
    state.teacher.to(next(module.parameters()).device)
    optimizer = sgd_or_adam(groups, config)
    return TrainingPlan(optimizer, cosine_schedule(optimizer, config.epochs * steps_per_epoch),
                        loss_terms=(lambda batch: attention_distillation(state, batch),))
