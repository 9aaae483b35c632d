"""The prune curve without rebuilding the network at every step (paper §3.1, Fig. 6).

The pruning defense needs clean accuracy (and, for the report, attack success)
after pruning 0, 1, 2, ... channels in the profiled order. Pruning the first k
channels gives exactly the original model with those channels forced to zero at
the prune point (surgery is tested against that masked reference), so the curve
only needs the part of the graph *after* the cut to be re-evaluated:

1. Split the graph at the prune point. The *tail* is every node downstream of the
   prune-point tensor; the tensors that cross the cut (the prune-point tensor, plus
   e.g. a residual or a parallel branch that joins later) become its inputs.
2. Per batch, run the vendor model once with those crossing tensors tapped (the
   *head* pass, as costly as one profiling pass).
3. Evaluate the tail for many steps at once: the prune-point tensor is multiplied
   by each step's 0/1 channel mask in NumPy and the masked copies are stacked
   along the batch axis, so one onnxruntime call covers many steps.
4. When the tail is *affine* in the prune-point tensor (pooling, Flatten/Reshape,
   Gemm/MatMul, constant Add/Mul, up to an optional final Softmax), removing channel c
   subtracts a fixed per-sample contribution from the logits, so the whole curve is
   a running sum of per-channel contributions, computed from one tail pass with one
   channel kept at a time. The affine path is verified against the real logits on
   every batch; any mismatch falls back to the masked path.

Both paths are exact (same predictions as building and running each pruned model),
which `bench/prune_sweep.py` checks side by side against the naive way.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.utils
import onnx_graphsurgeon as gs

from fp_onnx.batch import has_fixed_batch_of_one, make_batch_symbolic
from fp_onnx.data import Dataset, check_fits
from fp_onnx.errors import BadModelError
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.progress import progress_bar
from fp_onnx.prune_point import PrunePoint
from fp_onnx.runtime import RuntimeOptions, create_session

AFFINE_OPS = frozenset({
    "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Identity", "Dropout",
    "GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div",
    "Constant", "Shape", "Gather", "Concat", "Cast",
})
"""Ops that keep the tail affine when every input other than the traced one is constant."""
MONOTONE_LAST_OPS = frozenset({"Softmax", "LogSoftmax"})
"""A final op that does not change the argmax; the affine path drops it."""
MAX_TAIL_ELEMENTS = 16 * 1024 * 1024
"""Elements of masked prune-point tensor stacked into one tail call (64 MiB of float32)."""


@dataclass(frozen=True)
class GraphCut:
    """The vendor graph split at a prune point."""

    crossing: tuple[str, ...]
    """Tensors the tail reads from the head; crossing[0] is the prune-point tensor."""
    tail: onnx.ModelProto
    output: str
    affine_tail: onnx.ModelProto | None
    """The tail up to the logits (before a final softmax) when it is affine in the prune-point
    tensor and reads nothing else from the head; None otherwise."""


def cut_at(model: onnx.ModelProto, point: PrunePoint) -> GraphCut:
    """Split `model` at `point.tensor` into head taps and a tail model (inputs: crossing tensors)."""
    graph = gs.import_onnx(model)
    output = graph.outputs[0].name
    tail_nodes = _downstream(graph, point.tensor)
    produced = {t.name for node in tail_nodes for t in node.outputs}
    crossing = [point.tensor]
    for node in tail_nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Variable) and tensor.name and tensor.name not in produced and tensor.name not in crossing:
                crossing.append(tensor.name)
    if output not in produced:
        raise BadModelError(f"the classifier output '{output}' does not depend on prune point '{point.tensor}'")
    extractor = onnx.utils.Extractor(model)
    tail = extractor.extract_model(crossing, [output])
    affine_tail = None
    if len(crossing) == 1 and _is_affine(tail_nodes, point.tensor, output):
        last = next(node for node in tail_nodes if node.outputs[0].name == output)
        logits = last.inputs[0].name if last.op in MONOTONE_LAST_OPS else output
        affine_tail = extractor.extract_model(crossing, [logits])
    return GraphCut(tuple(crossing), tail, output, affine_tail)


def _downstream(graph: gs.Graph, start: str) -> list[gs.Node]:
    """Nodes reachable from tensor `start`, plus the Constant nodes they read, in graph order."""
    reached: set[str] = {start}
    nodes: list[gs.Node] = []
    for node in graph.toposort().nodes:  # toposort returns the graph; nodes are in order
        if any(t.name in reached for t in node.inputs):
            nodes.append(node)
            reached.update(t.name for t in node.outputs)
    constants = [
        producer for node in nodes for tensor in node.inputs
        for producer in tensor.inputs if producer.op == "Constant" and producer not in nodes
    ]
    return constants + nodes


def _is_affine(nodes: Sequence[gs.Node], start: str, output: str) -> bool:
    """Every tail op is affine in the traced tensor (other inputs constant), bar a final softmax."""
    traced = {start}
    for node in nodes:
        inputs = [t for t in node.inputs if t.name]
        reads_traced = [t for t in inputs if t.name in traced]
        if not reads_traced:
            continue  # constant or shape computation
        others = [t for t in inputs if t.name not in traced]
        if node.op in MONOTONE_LAST_OPS and node.outputs[0].name == output:
            continue
        if node.op not in AFFINE_OPS or any(not _is_constant(t) for t in others):
            return False
        if node.op in ("Mul", "Div") and len(reads_traced) > 1:
            return False
        traced.update(t.name for t in node.outputs)
    return True


def _is_constant(tensor: gs.Tensor) -> bool:
    return isinstance(tensor, gs.Constant) or any(p.op == "Constant" for p in tensor.inputs)


def step_masks(order: Sequence[int], channels: int, steps: Sequence[int]) -> np.ndarray:
    """0/1 masks (len(steps), channels): step k zeroes the first k channels of `order`."""
    masks = np.ones((len(steps), channels), dtype=np.float32)
    for row, k in enumerate(steps):
        masks[row, list(order[:k])] = 0.0
    return masks


class PruneSweep:
    """Predictions of the pruned model for many prune steps, from one head pass per batch."""

    def __init__(self, model: onnx.ModelProto, point: PrunePoint, options: RuntimeOptions = RuntimeOptions()) -> None:
        if has_fixed_batch_of_one(model):
            symbolic = make_batch_symbolic(model)
            if symbolic is None:
                raise BadModelError("the fast prune sweep needs a graph that runs with a batch; this one fixes batch 1")
            model = symbolic
        self.point = point
        self.cut = cut_at(model, point)
        self.head = ModelRunner(model, taps=self.cut.crossing, options=options)
        self.tail = create_session(self.cut.tail, options)
        self.linear_map = None if self.cut.affine_tail is None else AffineTail(self.cut.affine_tail, point, options)

    @property
    def uses_running_sum(self) -> bool:
        return self.linear_map is not None

    def predictions(
        self, dataset: Dataset, order: Sequence[int], steps: Sequence[int], *, batch_size: int = 64,
        progress: bool = False, description: str = "prune sweep",
    ) -> np.ndarray:
        """Predicted classes (len(steps), len(dataset)) after pruning the first `steps[i]` channels of `order`."""
        check_fits(dataset, self.head.input)
        masks = step_masks(order, self.point.channels, steps)
        results = []
        with progress_bar(len(dataset), description, enabled=progress) as bar:
            for batch in dataset.batches(batch_size):
                crossing = self.head.run(batch.x)
                results.append(self._batch_predictions(crossing, masks, order, steps))
                bar.update(len(batch.x))
        return np.concatenate(results, axis=1)

    def _batch_predictions(self, crossing: dict[str, np.ndarray], masks: np.ndarray, order, steps) -> np.ndarray:
        if self.linear_map is not None:
            running = self.linear_map.step_predictions(crossing[self.point.tensor], order, steps)
            if running is not None:
                return running
            self.linear_map = None  # verification failed: fall back to the masked path for good
        chunks = [self._tail(crossing, chunk) for chunk in _chunks(crossing[self.point.tensor], masks)]
        return np.concatenate([_step_predictions(scores) for scores in chunks])

    def _tail(self, crossing: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
        """Tail scores for every (mask, sample) pair, shape (len(masks), batch, classes)."""
        activation = crossing[self.point.tensor]
        feeds = {self.point.tensor: _masked_stack(activation, masks, self.point.channel_axis)}
        for name in self.cut.crossing[1:]:
            feeds[name] = np.concatenate([crossing[name]] * len(masks))
        scores = self.tail.run([self.cut.output], feeds)[0]
        return scores.reshape(len(masks), activation.shape[0], -1)


def _step_predictions(scores: np.ndarray) -> np.ndarray:
    """(steps, batch, classes) scores -> (steps, batch) class ids."""
    return predictions(scores.reshape(-1, scores.shape[-1])).reshape(scores.shape[:2])


def _chunks(activation: np.ndarray, masks: np.ndarray) -> Iterator[np.ndarray]:
    size = max(1, MAX_TAIL_ELEMENTS // max(1, activation.size))
    for start in range(0, len(masks), size):
        yield masks[start : start + size]


def _masked_stack(activation: np.ndarray, masks: np.ndarray, channel_axis: int) -> np.ndarray:
    """Copies of `activation` (B, ...) masked by each row of `masks`, stacked to (len(masks) * B, ...)."""
    shape = [1] * activation.ndim
    shape[channel_axis] = masks.shape[1]
    masked = activation[None] * masks.reshape(len(masks), *shape)
    return masked.reshape(-1, *activation.shape[1:])


class AffineTail:
    """An affine tail, logits = b + L·a, with L probed once so every step follows from one pass.

    L is found by feeding the tail the zero tensor and one unit tensor per element of
    a sample (D + 1 rows, done once per model). Per batch, channel c contributes
    L_c·a_c to the logits, so pruning the first k channels of the order subtracts a
    running sum. Each batch is checked against the tail itself: a mismatch (the tail
    was not affine after all, e.g. a MaxPool) returns None and the caller falls back.
    """

    def __init__(self, model: onnx.ModelProto, point: PrunePoint, options: RuntimeOptions) -> None:
        self.point = point
        self.session = create_session(model, options)
        self.input = model.graph.input[0].name
        self.matrix: np.ndarray | None = None  # (C, positions, classes)
        self.bias: np.ndarray | None = None

    def _probe(self, sample_shape: tuple[int, ...]) -> None:
        size = int(np.prod(sample_shape))
        rows = []
        chunk = max(1, MAX_TAIL_ELEMENTS // size)
        for start in range(0, size + 1, chunk):
            count = min(chunk, size + 1 - start)
            probe = np.zeros((count, size), np.float32)
            index = np.arange(start, start + count)
            probe[(index > 0), index[index > 0] - 1] = 1.0
            rows.append(self.session.run(None, {self.input: probe.reshape(count, *sample_shape)})[0].reshape(count, -1))
        outputs = np.concatenate(rows).astype(np.float64)
        self.bias = outputs[0]
        linear = (outputs[1:] - outputs[0]).reshape(*sample_shape, -1)
        moved = np.moveaxis(linear, self.point.channel_axis - 1, 0)
        self.matrix = moved.reshape(moved.shape[0], -1, moved.shape[-1])

    def step_predictions(self, activation: np.ndarray, order, steps) -> np.ndarray | None:
        if self.matrix is None:
            self._probe(activation.shape[1:])
        per_channel = np.moveaxis(activation, self.point.channel_axis, 1).reshape(len(activation), self.point.channels, -1)
        contributions = np.einsum("bcp,cpk->cbk", per_channel.astype(np.float64), self.matrix)
        full = self.bias + contributions.sum(axis=0)
        actual = self.session.run(None, {self.input: activation})[0].reshape(len(activation), -1)
        if not np.allclose(full, actual, rtol=1e-4, atol=1e-4 * max(1.0, float(np.abs(actual).max()))):
            return None
        removed = np.concatenate([np.zeros((1, *full.shape)), np.cumsum(contributions[list(order)], axis=0)])
        return np.stack([predictions(full - removed[k]) for k in steps])
