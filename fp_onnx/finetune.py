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
"""
from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from fp_onnx.batch import has_fixed_batch_of_one, make_batch_symbolic
from fp_onnx.converters import onnx_to_torch, write_back
from fp_onnx.data import Dataset, check_fits, check_labels
from fp_onnx.distributed import DistributedContext
from fp_onnx.errors import BadDataError, BadOptionError
from fp_onnx.inference import single_input
from fp_onnx.signature import class_count
from fp_onnx.progress import progress_bar

OPTIMIZERS = ("sgd", "adam")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class FineTuneConfig:
    epochs: int = 30
    """Upper bound; early stopping usually ends sooner."""
    lr: float = 0.001
    batch_size: int = 64
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 0.0
    patience: int = 4
    noise: float = 0.0
    """Relative std of Gaussian weight noise added before fine-tuning (paper §4); 0 disables it."""
    device: str = "auto"
    mixed_precision: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise BadOptionError(f"--optimizer {self.optimizer}: choose one of {', '.join(OPTIMIZERS)}")
        if self.device not in DEVICES:
            raise BadOptionError(f"--device {self.device}: choose one of {', '.join(DEVICES)}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise BadOptionError(f"--{name.replace('_', '-')} must be at least 1")
        if self.lr <= 0:
            raise BadOptionError(f"--lr {self.lr}: must be positive")
        if self.noise < 0:
            raise BadOptionError(f"--noise {self.noise}: must be 0 or more")
        if self.patience < 1:
            raise BadOptionError("--patience must be at least 1")


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

    def to_dict(self) -> dict:
        return {
            "config": self.config,
            "device": self.device,
            "seconds": self.seconds,
            "initial_val_accuracy": self.initial_val_accuracy,
            "best_epoch": self.best_epoch,
            "best_val_accuracy": self.best_val_accuracy,
            "history": self.history,
        }


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
    progress: bool = False,
) -> FineTuneResult:
    """Fine-tune `model` on `train`, stop early on `val` accuracy, return the written-back ONNX model."""
    spec = single_input(model)
    for dataset in (train, val):
        check_fits(dataset, spec)
        check_labels(dataset, class_count(model))
        if dataset.labels is None:
            raise BadDataError(f"{dataset.source}: fine-tuning needs labels ('y')")
    started = time.perf_counter()
    context = DistributedContext.from_environment()
    device = context.device(torch_device(config.device))
    torch.manual_seed(config.seed)
    trainable, kind = _trainable_graph(model)
    module = onnx_to_torch(trainable).to(device)
    if config.noise:
        add_weight_noise(module, config.noise, config.seed)
    trainer = _Trainer(module, kind, config, device, context)
    result = FineTuneResult(model=model, device=device.type, config=asdict(config))
    result.initial_val_accuracy = trainer.evaluate(val)
    best, best_state, best_epoch, stale = -1.0, None, 0, 0
    for epoch in range(1, config.epochs + 1):
        loss = trainer.train_epoch(train, epoch, progress and context.is_main)
        val_accuracy = trainer.evaluate(val)
        result.history.append({"epoch": epoch, "train_loss": loss, "val_accuracy": val_accuracy})
        stale = 0 if val_accuracy > best + 1e-9 else stale + 1
        if val_accuracy >= best:  # ties go to the later, longer fine-tuned epoch
            best, best_state, best_epoch = val_accuracy, copy.deepcopy(module.state_dict()), epoch
        if stale >= config.patience:
            break
    module.load_state_dict(best_state)
    result.model = write_back(model, module.cpu())
    result.best_epoch, result.best_val_accuracy = best_epoch, best
    result.seconds = time.perf_counter() - started
    return result


def _trainable_graph(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
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


def classification_loss(scores: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Cross-entropy for whatever the vendor's graph outputs (softmax outputs are common)."""
    scores = scores.reshape(scores.shape[0], -1).float()
    if kind == "probabilities":
        return F.nll_loss(torch.log(scores.clamp_min(1e-12)), labels)
    if kind == "log_probabilities":
        return F.nll_loss(scores, labels)
    return F.cross_entropy(scores, labels)


def add_weight_noise(module: torch.nn.Module, relative_std: float, seed: int) -> None:
    """W += N(0, (relative_std * std(W))^2) for every multi-element parameter (paper §4)."""
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in module.parameters():
            if parameter.numel() > 1:
                noise = torch.randn(parameter.shape, generator=generator) * relative_std * parameter.detach().float().std()
                parameter.add_(noise.to(parameter.device, parameter.dtype))


class _Trainer:
    """One model, one optimizer: epochs of SGD/Adam and evaluation, on one device (or DDP ranks)."""

    def __init__(self, module, kind: str, config: FineTuneConfig, device: torch.device, context: DistributedContext):
        self.module, self.kind, self.config, self.device, self.context = module, kind, config, device, context
        self.model = context.wrap(module)
        parameters = [p for p in module.parameters() if p.requires_grad]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        else:
            self.optimizer = torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
        self.autocast = config.mixed_precision and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.autocast)

    def train_epoch(self, train: Dataset, epoch: int, progress: bool) -> float:
        self.model.train()
        order = np.random.default_rng([self.config.seed, epoch]).permutation(len(train))
        order = self.context.shard(order)
        labels = torch.from_numpy(train.labels)
        total, count = 0.0, 0
        with progress_bar(len(order), f"fine-tune epoch {epoch}", enabled=progress) as bar:
            for start in range(0, len(order), self.config.batch_size):
                indices = np.sort(order[start : start + self.config.batch_size])
                batch = train.take(indices)
                x = torch.from_numpy(np.asarray(batch.x, dtype=np.float32)).to(self.device)
                y = labels[indices].to(self.device)
                self.optimizer.zero_grad(set_to_none=True)
                with torch.autocast(self.device.type, enabled=self.autocast):
                    loss = classification_loss(self.model(x), y, self.kind)
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
                total += float(loss.detach()) * len(indices)
                count += len(indices)
                bar.update(len(indices))
        return total / max(1, count)

    @torch.no_grad()
    def evaluate(self, dataset: Dataset) -> float:
        self.module.eval()
        correct = 0
        for batch in dataset.batches(max(self.config.batch_size, 256)):
            x = torch.from_numpy(np.asarray(batch.x, dtype=np.float32)).to(self.device)
            scores = self.module(x).reshape(len(batch.x), -1)
            correct += int((scores.argmax(1).cpu().numpy() == batch.y).sum())
        return correct / len(dataset)
