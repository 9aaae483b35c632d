"""Fine-tuning (paper §3.3): continue training the vendor's (pruned) model on clean data.

The ONNX graph becomes a PyTorch module (`fp_onnx.converters`), is trained with a
small learning rate on the defender's clean data, and the trained weights are
written back into the *same* ONNX graph, so the defended model keeps the vendor's
inputs, outputs, op set and everything else but the weights.

Defaults follow the paper: fine-tuning starts from the vendor's weights with a
learning rate well below a from-scratch one (SGD, momentum 0.9, lr 0.001) and runs
"until convergence", which we make precise as early stopping on validation
accuracy (stop after `patience` epochs without improvement, keep the best epoch,
ties going to the later one), capped at `epochs`. The vendor's own weights (epoch 0)
are never returned: they are what we distrust, and a backdoor survives in them.

`noise` implements the stronger variant of §4: before fine-tuning every weight
tensor W gets Gaussian noise of standard deviation `noise * std(W)` (relative,
so one σ means the same for every layer), which moves the start away from a
minimum the attacker may have prepared.

Fine-tuning must never hand back a broken model quietly. The run is calibrated on
its first batches (layer-wise learning-rate scales for inputs on a 0-255 scale,
automatic gradient clipping: `fp_onnx.calibration`), watched on every batch and
epoch (`fp_onnx.divergence`), and trouble restores good weights and lowers the
learning rate, a bounded number of times (`fp_onnx.backoff`); every recovery is
recorded.
What is optimised and how (optimizer, schedule, extra loss terms) is the recipe's
business (`fp_onnx.recipes`); the protection is the same for every recipe. Whether
the result may ship is decided on the written file (`fp_onnx.guard`).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import onnx
import torch

from fp_onnx.batch import has_fixed_batch_of_one, make_batch_symbolic
from fp_onnx.converters import onnx_to_torch, write_back
from fp_onnx.data import Dataset, check_fits, check_labels
from fp_onnx.distributed import DistributedContext
from fp_onnx.divergence import DivergenceMonitor
from fp_onnx.errors import BadDataError, BadOptionError
from fp_onnx.inference import single_input
from fp_onnx.backoff import RecoveringRun
from fp_onnx.recipes import KEEP_POLICIES, find_recipe
from fp_onnx.signature import class_count
from fp_onnx.training import Trainer

OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class FineTuneConfig:
    """How to fine-tune. `lr`, `epochs`, `patience`, `keep` and `weight_decay` left at None take the
    recipe's measured defaults (`fp_onnx.recipes`; the paper's: lr 0.001, 30 epochs, patience 4, best
    epoch kept, no weight decay); `resolved()` fills them in."""

    epochs: int | None = None
    """Upper bound (a fixed budget when `patience` is None)."""
    lr: float | None = None
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float | None = None
    patience: int | None = None
    """Epochs without validation improvement before stopping; None after resolving: no early stopping."""
    keep: str | None = None
    """Which weights to return: 'best' (the epoch with the best validation accuracy), 'last' (the last good
    epoch) or 'average' (the mean of the good epochs' weights over the second half of the budget)."""
    label_smoothing: float = 0.0
    """Share of the target put uniformly on all classes (0: plain cross-entropy)."""
    noise: float = 0.0
    """Relative std of Gaussian weight noise added before fine-tuning (paper §4); 0 disables it."""
    device: str = "auto"
    mixed_precision: bool = False
    seed: int = 0
    recipe: str = "paper"
    """Which registered recipe (`fp_onnx.recipes`, CLI `--recover`) supplies optimizer, schedule and loss terms."""
    max_recoveries: int | None = None
    """How often a divergence may be answered by restoring the last good weights and lowering the lr; 0: never
    (default: the recipe's, else 3)."""
    lr_backoff: float = 0.1
    """Each recovery multiplies every learning rate by this."""
    clip_grad_norm: float | str = "auto"
    """Clip the (layer-scaled) global gradient norm: 'auto' (5x the start model's median), a norm, or 0 (off)."""
    collapse_drop: float | None = None
    """An epoch whose validation accuracy is more than this below the start model's counts as diverged
    (default: the recipe's, else 0.10; unlearning recipes dip on purpose before they recover)."""
    loss_blowup: float = 4.0
    """A smoothed training loss above this many times the start loss (and above it plus ln(classes)) diverged."""
    layer_scale_spread: float = 10.0
    """Tensors whose relative step is more than this many times the network's median get a lower lr; 0: never."""
    warp_target: int | None = None
    """The class the defense's warp check flagged (`fp_onnx.warp_check`): recipes that unlearn warps search them
    towards it instead of scanning the classes themselves. None: not checked (those recipes scan on their first
    batch); other recipes ignore it."""

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadOptionError(f"--optimizer {self.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES:
            raise BadOptionError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise BadOptionError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr is not None and self.lr <= 0:
            raise BadOptionError(f"--lr {self.lr}: must be positive")
        if self.noise < 0:
            raise BadOptionError(f"--noise {self.noise}: must be 0 or more")
        if self.patience is not None and self.patience < 1:
            raise BadOptionError("--patience must be at least 1")
        if self.keep is not None and self.keep not in KEEP_POLICIES:
            raise BadOptionError(f"--keep {self.keep}: choose one of {', '.join(KEEP_POLICIES)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise BadOptionError(f"--label-smoothing {self.label_smoothing}: must lie in [0, 1)")
        if self.weight_decay is not None and self.weight_decay < 0:
            raise BadOptionError(f"--weight-decay {self.weight_decay}: must be 0 or more")
        if self.warp_target is not None and self.warp_target < 0:
            raise BadOptionError(f"warp target {self.warp_target}: a class index is 0 or more")
        if self.max_recoveries is not None and self.max_recoveries < 0:
            raise BadOptionError(f"--max-recoveries {self.max_recoveries}: must be 0 or more")
        if self.clip_grad_norm != "auto" and (isinstance(self.clip_grad_norm, str) or self.clip_grad_norm < 0):
            raise BadOptionError(f"--clip-grad-norm {self.clip_grad_norm}: use 'auto', 0 (off) or a positive norm")
        if not 0 < self.lr_backoff < 1:
            raise BadOptionError(f"lr_backoff {self.lr_backoff}: must lie strictly between 0 and 1")
        if self.collapse_drop is not None and not 0 < self.collapse_drop <= 1:
            raise BadOptionError(f"collapse_drop {self.collapse_drop}: must lie in (0, 1]")
        if self.layer_scale_spread < 0:
            raise BadOptionError(f"layer_scale_spread {self.layer_scale_spread}: must be 0 (off) or more")
        if self.loss_blowup <= 1:
            raise BadOptionError(f"loss_blowup {self.loss_blowup}: must be above 1")
        find_recipe(self.recipe)

    def resolved(self) -> "FineTuneConfig":
        """This config with every setting left at None taken from the recipe's defaults."""
        defaults = find_recipe(self.recipe).defaults
        filled = {name: defaults.get(name, _FALLBACKS[name]) for name in _FALLBACKS if getattr(self, name) is None}
        return replace(self, **filled)


_FALLBACKS = {"lr": 0.001, "epochs": 30, "patience": 4, "keep": "best", "weight_decay": 0.0, "max_recoveries": 3,
              "collapse_drop": 0.10}
"""Settings a recipe that does not name them gets (the paper's)."""


@dataclass
class FineTuneResult:
    model: onnx.ModelProto
    """The vendor graph with the fine-tuned weights (written back)."""
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_accuracy: float = 0.0
    initial_val_accuracy: float = 0.0
    device: str = "cpu"
    seconds: float = 0.0
    config: dict = field(default_factory=dict)
    recoveries: list[dict] = field(default_factory=list)
    """Every problem that was answered by restoring weights and lowering the learning rate."""
    failure: str | None = None
    """The problem training ended on with recoveries spent (or off): a divergence, or ending below the floor."""
    final_lr: float = 0.0
    calibration: dict = field(default_factory=dict)
    teacher: dict | None = None
    """For a recipe that trains its teacher first: which recipe, how it ended, how long it took."""
    averaged_epochs: int = 0
    """With `keep="average"`: how many epochs' weights the returned model is the mean of (0: none were)."""
    average_below_floor: dict | None = None
    """With `keep="average"`, where the mean fell below the accuracy floor and the last good epoch did not, so the
    last epoch was returned: the mean's validation accuracy and how many epochs it averaged."""
    findings: dict = field(default_factory=dict)
    """What the recipe learned about the model on the way (its prepared state's `findings()`), e.g. the warp scan's
    suspect class: a defender wants to know what a search found, not only what training made of it."""

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "device": self.device,
            "seconds": self.seconds,
            "initial_val_accuracy": self.initial_val_accuracy,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "failure": self.failure,
            "recoveries": self.recoveries,
            "final_lr": self.final_lr,
            "calibration": {key: _json_number(value) for key, value in self.calibration.items()},
            "teacher": self.teacher,
            "averaged_epochs": self.averaged_epochs,
            "average_below_floor": self.average_below_floor,
            "findings": self.findings,
            "history": self.history,
        }

    def describe_kept(self) -> str:
        """Which weights the run returned, for one-line summaries: 'best epoch 4', 'mean of 40 epochs to epoch 80'."""
        if self.averaged_epochs:
            return f"mean of {self.averaged_epochs} epochs to epoch {self.best_epoch}"
        kept = f"{'best' if self.config.get('keep') == 'best' else 'last'} epoch {self.best_epoch}"
        if self.average_below_floor:
            kept += (f"; the mean of {self.average_below_floor['epochs']} epochs was below the floor, validation "
                     f"{self.average_below_floor['val_accuracy']:.4f}")
        return kept

    def describe_recoveries(self) -> str:
        """'' or e.g. '2 recoveries (lr 0.001 -> 1e-05)'; for one-line summaries."""
        if not self.recoveries:
            return ""
        count = len(self.recoveries)
        return (f"{count} recover{'y' if count == 1 else 'ies'} "
                f"(lr {self.recoveries[0]['lr_before']:g} -> {self.recoveries[-1]['lr_after']:g})")


def _json_number(value):
    """NaN/inf are not JSON: a measurement that came out non-finite is written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def torch_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise BadOptionError("--device cuda: this PyTorch build sees no CUDA GPU; use --device cpu or auto")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def fine_tune(
    model: onnx.ModelProto,
    train: Dataset,
    val: Dataset,
    config: FineTuneConfig = FineTuneConfig(),
    *,
    accuracy_floor: float | None = None,
    reference: onnx.ModelProto | None = None,
    progress: bool = False,
) -> FineTuneResult:
    """Fine-tune `model` on `train`, stop early on `val` accuracy, return the written-back ONNX model.

    `reference` is the model whose clean behaviour distilling recipes keep (the vendor's unpruned model
    in fine-pruning; by default `model` itself).
    A divergence, or ending below `accuracy_floor` (the lowest validation accuracy
    the result may ship with) from a start at or above it, restores good weights and
    lowers the learning rate, at most `max_recoveries` times (`fp_onnx.backoff`).
    Once that budget is spent (or is 0), `failure` says why; the best fine-tuned
    epoch is returned, or, when none survived, the diverged weights themselves, so
    the check of the written model rejects them rather than shipping the vendor's
    weights under a new name.
    """
    spec = single_input(model)
    for dataset in (train, val):
        check_fits(dataset, spec)
        check_labels(dataset, class_count(model))
        if dataset.labels is None:
            raise BadDataError(f"{dataset.source}: fine-tuning needs labels ('y')")
    started = time.perf_counter()
    config = config.resolved()
    context = DistributedContext.from_environment()
    device = context.device(torch_device(config.device))
    torch.manual_seed(config.seed)
    trainable, kind = trainable_graph(model)
    module = onnx_to_torch(trainable).to(device)
    if config.noise:
        add_weight_noise(module, config.noise, config.seed)
    recipe = find_recipe(config.recipe)
    result = FineTuneResult(model=model, device=device.type, config=asdict(config))
    prepared = None
    if recipe.prepare is not None:
        source = _teacher_source(recipe, model, reference, train, val, config, progress, result)
        teacher = onnx_to_torch(trainable_graph(source)[0]).to(device) if source is not None else None
        prepared = recipe.prepare(module, config, teacher)
    steps = math.ceil(len(context.shard(np.arange(len(train)))) / config.batch_size)
    trainer = Trainer(module, kind, config, device, context, steps, prepared)
    start = trainer.evaluate(val)
    result.initial_val_accuracy = start.accuracy
    calibration = trainer.calibrate(train)
    result.calibration = {**calibration.to_dict(), "clip_threshold": trainer.clip_threshold,
                          "lr_scales": {module.onnx_names.get(k, k): v for k, v in calibration.lr_scales.items()}}
    monitor = DivergenceMonitor(calibration.reference_loss, _classes(model), start.accuracy,
                                config.loss_blowup, config.collapse_drop)
    RecoveringRun(trainer, train, val, monitor, result, accuracy_floor, progress and context.is_main).run()
    result.findings = prepared.findings() if hasattr(prepared, "findings") else {}
    result.model = write_back(model, module.cpu())
    result.seconds = time.perf_counter() - started
    return result


def _teacher_source(recipe, model: onnx.ModelProto, reference: onnx.ModelProto | None, train: Dataset,
                    val: Dataset, config: FineTuneConfig, progress: bool,
                    result: FineTuneResult) -> onnx.ModelProto | None:
    """The model a recipe's `prepare` gets as its reference: the vendor's, a teacher fine-tuned from `model` by the
    recipe's `teacher_recipe` (with that recipe's own settings but the run's epoch budget, device, seed and batch
    size), or None."""
    if recipe.teacher_recipe is not None:
        own = {name: None for name in _FALLBACKS if name != "epochs"}
        settings = replace(config, recipe=recipe.teacher_recipe, **own)
        teacher = fine_tune(model, train, val, settings, progress=progress)
        result.teacher = {"recipe": recipe.teacher_recipe, "best_val_accuracy": teacher.best_val_accuracy,
                          "failure": teacher.failure, "seconds": teacher.seconds}
        return teacher.model
    return reference if recipe.uses_reference else None


def _classes(model: onnx.ModelProto) -> int:
    """Number of classes from the output shape (2 when unknown: only sets the loss bound's floor)."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    sizes = [d.dim_value for d in dims[1:] if d.HasField("dim_value")]
    return int(np.prod(sizes)) if sizes and len(sizes) == len(dims) - 1 else 2


def trainable_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The graph we train, and what it outputs; weights go back into `model` itself later.

    Fixed batch-1 graphs are made batch-symbolic (the converted module then trains on
    whole batches). A final Softmax/LogSoftmax over the classes is dropped so the loss
    sees logits: cross-entropy on saturated probabilities has vanishing gradients.
    """
    if has_fixed_batch_of_one(model):
        model = make_batch_symbolic(model) or model
    graph = model.graph
    producer = next((n for n in graph.node if graph.output[0].name in n.output), None)
    if producer is None or producer.op_type not in ("Softmax", "LogSoftmax") or not _over_classes(model, producer):
        return model, output_kind(model)
    logits = onnx.ModelProto()
    logits.CopyFrom(model)
    logits.graph.node.remove(next(n for n in logits.graph.node if n.name == producer.name))
    del logits.graph.output[1:]
    logits.graph.output[0].CopyFrom(onnx.helper.make_tensor_value_info(producer.input[0], onnx.TensorProto.FLOAT, None))
    return logits, "logits"


def _over_classes(model: onnx.ModelProto, softmax: onnx.NodeProto) -> bool:
    """True when the softmax normalises over axis 1 of a (batch, classes) output."""
    dims = model.graph.output[0].type.tensor_type.shape.dim
    axis = next((a.i for a in softmax.attribute if a.name == "axis"), None)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
    default = -1 if opset >= 13 else 1
    return len(dims) == 2 and (default if axis is None else axis) in (1, -1)


def output_kind(model: onnx.ModelProto) -> str:
    """'logits', 'probabilities' (final Softmax) or 'log_probabilities' (final LogSoftmax)."""
    output = model.graph.output[0].name
    producer = next((node for node in model.graph.node if output in node.output), None)
    kinds = {"Softmax": "probabilities", "LogSoftmax": "log_probabilities"}
    return kinds.get(producer.op_type, "logits") if producer is not None else "logits"


def add_weight_noise(module: torch.nn.Module, relative_std: float, seed: int) -> None:
    """W += N(0, (relative_std * std(W))^2) for every multi-element parameter (paper §4)."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.numel() > 1:
                noise = torch.randn(parameter.shape, generator=generator) * relative_std * parameter.detach().float().std()
                parameter.add_(noise.to(parameter.device, parameter.dtype))
