"""The prune curve without rebuilding the network at every step (paper §3.1, Fig. 6).

The pruning defense needs clean accuracy (and, for the report, attack success)
after pruning 0, 1, 2, ... channels in the profiled order. Pruning the first k
channels gives exactly the original model with those channels forced to zero at
the prune point (surgery is tested against that masked reference), so only the
part of the graph *after* the cut has to be re-evaluated per step:

1. Split the graph at the prune point. The *tail* is every node downstream of the
   prune-point tensor; the tensors that cross the cut (the prune-point tensor, plus
   e.g. a residual or a parallel branch that joins later) become its inputs.
2. Per batch, run the vendor model once with those crossing tensors tapped (the
   *head* pass, as costly as one profiling pass).
3. The tail's *affine prefix* (Conv, Gemm/MatMul, Flatten/Reshape, average pooling,
   BatchNormalization, constant Add/Mul ..., up to the first op that is not affine in
   the prune-point tensor) maps the prune-point tensor a to boundary tensors
   z = b + Σ_c L_c a_c. L is probed once per model (unit inputs); per batch every
   channel's contribution L_c a_c is one matrix product, and pruning the first k
   channels subtracts a running sum. When the prefix reaches the logits (pooling and
   affine layers only, bar a final softmax), the whole curve follows from that one
   pass ("running-sum"); otherwise only the rest of the tail runs per step, on the
   running sums ("affine-prefix").
4. Without an affine prefix, the tail is evaluated on masked copies of the
   prune-point tensor, many steps stacked along the batch axis per onnxruntime call
   ("masked-tail").

Every batch checks the probed map against the prefix itself (a mismatch falls back
to the masked path), so all paths give the predictions of building and running each
pruned model; `bench/prune_sweep.py` checks that side by side against the naive way.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import onnx
import onnx.utils
import onnx_graphsurgeon as gs

from fp_onnx.batch import has_fixed_batch_of_one, make_batch_symbolic
from fp_onnx.data import Dataset, check_fits
from fp_onnx.errors import BadModelError, UnsupportedOpError
from fp_onnx.graph import axes_of, constant_value, producer
from fp_onnx.inference import ModelRunner, predictions
from fp_onnx.profile import channels_first
from fp_onnx.progress import progress_bar
from fp_onnx.prune_point import PrunePoint
from fp_onnx.memory import SESSION_COPIES, activation_bytes, output_bytes, rows_within, weight_bytes
from fp_onnx.runtime import ONNXRUNTIME_ERRORS, RuntimeOptions, create_session, run_failure

AFFINE_OPS = frozenset({
    "Conv", "BatchNormalization", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Flatten", "Reshape", "Transpose",
    "Squeeze", "Unsqueeze", "Identity", "Dropout", "GlobalAveragePool", "AveragePool", "ReduceMean", "ReduceSum",
})
"""Ops that are affine in the traced input when every other input is a constant."""
MONOTONE_LAST_OPS = frozenset({"Softmax", "LogSoftmax"})
"""A final op that does not change the argmax."""
MAX_STACK_ELEMENTS = 16 * 1024 * 1024
"""Elements stacked into one tail call (64 MiB of float32)."""
PROBE_SCALE = 1024.0
"""Size of the probing unit inputs (a power of two: exact scaling). Each column of the linear map is
(prefix(s*e) - prefix(0)) / s; with s = 1 a large bias (a centred classifier over large activations)
swamps the float32 difference, with a large s the linear part dominates it."""
MAX_PROBE_ELEMENTS = 64 * 1024 * 1024
"""Largest probed linear map (inputs per sample x outputs per sample) we hold in memory."""
TAIL_FAILURE = "onnxruntime failed on the graph after the prune point"
MAX_TAIL_ROWS = 1 << 20
"""Upper bound on rows per tail call; the memory plan (fp_onnx.memory) usually sets a lower one."""


@dataclass(frozen=True)
class GraphCut:
    """The vendor graph split at a prune point."""

    crossing: tuple[str, ...]
    """Tensors the tail reads from the head; crossing[0] is the prune-point tensor."""
    output: str
    tail: onnx.ModelProto
    """crossing -> output: the masked path."""
    prefix: onnx.ModelProto | None = None
    """prune-point tensor -> boundaries, affine; None when the tail starts with a non-affine op."""
    boundaries: tuple[str, ...] = ()
    rest: onnx.ModelProto | None = None
    """boundaries + other crossing -> output; None when a boundary is the logits themselves."""
    stackable: bool = True
    """False when another crossing tensor is not a float activation (dynamo's ConvNeXt head gathers with
    indices computed from the batch size): steps cannot be stacked along the batch axis, so the tail
    runs once per step."""


def cut_at(model: onnx.ModelProto, point: PrunePoint) -> GraphCut:
    """Split `model` at `point.tensor` into head taps, a tail, and the tail's affine prefix."""
    graph = gs.import_onnx(model)
    output = graph.outputs[0].name
    _refuse_control_flow_after(graph, point.tensor)
    tail_nodes = _downstream(graph, point.tensor)
    produced = {t.name for node in tail_nodes for t in node.outputs}
    if output not in produced:
        raise BadModelError(f"the classifier output '{output}' does not depend on prune point '{point.tensor}'")
    crossing = [point.tensor]
    for node in tail_nodes:
        for tensor in node.inputs:
            if isinstance(tensor, gs.Variable) and tensor.name and tensor.name not in produced and tensor.name not in crossing:
                crossing.append(tensor.name)
    extractor = onnx.utils.Extractor(model)
    tensors = graph.tensors()
    stackable = all(_is_float(tensors[name]) for name in crossing[1:])
    cut = GraphCut(tuple(crossing), output, extractor.extract_model(crossing, [output]), stackable=stackable)
    boundaries = _affine_boundaries(tail_nodes, point.tensor, output)
    if boundaries is None or point.tensor in boundaries:
        return cut  # no affine prefix, or the tail also reads the prune-point tensor itself
    logits = len(boundaries) == 1 and boundaries[0] == _logits_tensor(tail_nodes, output)
    rest = None if logits else extractor.extract_model([*boundaries, *crossing[1:]], [output])
    return replace(cut, prefix=extractor.extract_model([point.tensor], list(boundaries)), boundaries=boundaries, rest=rest)


def _refuse_control_flow_after(graph: gs.Graph, start: str) -> None:
    """Subgraphs (If/Loop/Scan) read outer tensors without listing them as inputs, so a cut cannot see
    what they depend on; they are fine before the prune point, not after it."""
    upstream, stack = set(), [graph.tensors().get(start)]
    while stack:
        tensor = stack.pop()
        node = producer(tensor) if tensor is not None else None
        if node is not None and id(node) not in upstream:
            upstream.add(id(node))
            stack.extend(node.inputs)
    for node in graph.nodes:
        if id(node) not in upstream and any(isinstance(v, gs.Graph) for v in node.attrs.values()):
            raise UnsupportedOpError(f"node '{node.name}' ({node.op}) runs a subgraph after the prune point; the "
                                     "prune sweep cannot cut through control flow; a --layer after it avoids it")


def _is_float(tensor: gs.Tensor) -> bool:
    try:
        return tensor.dtype is not None and np.issubdtype(np.dtype(tensor.dtype), np.floating)
    except TypeError:
        return False


def _downstream(graph: gs.Graph, start: str) -> list[gs.Node]:
    """Nodes reachable from tensor `start`, plus the nodes that make the constants they read
    (`Constant` nodes, and the `Identity` chains over initializers that the TorchScript exporter
    writes for deduplicated weights), in graph order."""
    reached: set[str] = {start}
    nodes: list[gs.Node] = []
    for node in graph.toposort().nodes:
        if any(t.name in reached for t in node.inputs):
            nodes.append(node)
            reached.update(t.name for t in node.outputs)
    constants: list[gs.Node] = []
    for tensor in [t for node in nodes for t in node.inputs]:
        for maker in _constant_makers(tensor):
            if maker not in nodes and maker not in constants:
                constants.append(maker)
    return constants + nodes


def _constant_makers(tensor: gs.Tensor) -> list[gs.Node]:
    """The Identity/Constant nodes that compute the constant `tensor`, first one first; [] otherwise."""
    if constant_value(tensor) is None:
        return []
    makers = []
    while tensor.inputs:
        maker = tensor.inputs[0]
        makers.append(maker)
        if maker.op != "Identity":
            break
        tensor = maker.inputs[0]
    return makers[::-1]


def _logits_tensor(nodes: Sequence[gs.Node], output: str) -> str:
    last = next(node for node in nodes if node.outputs[0].name == output)
    return last.inputs[0].name if last.op in MONOTONE_LAST_OPS else output


def _affine_boundaries(nodes: Sequence[gs.Node], start: str, output: str) -> tuple[str, ...] | None:
    """Tensors where the affine prefix ends (affine in `start`, read by non-affine ops or the output)."""
    traced, prefix_nodes = {start}, []
    for node in nodes:
        if any(t.name in traced for t in node.inputs) and _is_affine_step(node, traced):
            prefix_nodes.append(node)
            traced.update(t.name for t in node.outputs)
    boundaries = []
    for name in [start, *[t.name for node in prefix_nodes for t in node.outputs]]:
        read_outside = any(node not in prefix_nodes and any(t.name == name for t in node.inputs) for node in nodes)
        if (read_outside or name == output) and name not in boundaries:
            boundaries.append(name)
    return tuple(boundaries) or None


def _is_affine_step(node: gs.Node, traced: set[str]) -> bool:
    """True when `node`'s output is affine in its traced inputs (all other inputs constant)."""
    if node.op not in AFFINE_OPS:
        return False
    traced_slots = [i for i, t in enumerate(node.inputs) if t.name in traced]
    others = [t for t in node.inputs if t.name and t.name not in traced]
    if not all(_is_constant(t) for t in others):
        return False
    if node.op in _LAYOUT_OPS and not _keeps_batch(node):
        return False  # e.g. a Reshape to [-1] (dynamo's ConvNeXt head): samples would no longer be rows
    if node.op in ("Add", "Sub"):
        return True
    if node.op in ("Mul", "MatMul", "Gemm"):
        return len(traced_slots) == 1  # constant x traced, in either position
    return traced_slots == [0]  # the data input only: not a traced weight, divisor or shape


_LAYOUT_OPS = frozenset({"Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze"})


def _keeps_batch(node: gs.Node) -> bool:
    """True when the op keeps the batch axis first and on its own, so the probed per-sample map applies."""
    if node.op == "Transpose":
        return list(node.attrs.get("perm", [1]))[:1] == [0]
    if node.op == "Flatten":
        return int(node.attrs.get("axis", 1)) >= 1
    if node.op in ("Squeeze", "Unsqueeze"):
        axes = axes_of(node)
        rank = len((node.outputs[0] if node.op == "Unsqueeze" else node.inputs[0]).shape or ())
        return axes is not None and rank > 0 and all(a % rank != 0 for a in axes)
    target = constant_value(node.inputs[1])  # Reshape: [0, ...] keeps the batch; so does [-1, rest of a sample]
    if target is None or target.ndim != 1 or not len(target):
        return False
    sample = (node.inputs[0].shape or [None])[1:]
    rest = [int(d) for d in target[1:]]
    whole_sample = all(isinstance(d, int) for d in sample) and all(d > 0 for d in rest) \
        and int(np.prod(sample)) == int(np.prod(rest))
    return int(target[0]) == 0 or (int(target[0]) == -1 and whole_sample)


def _is_constant(tensor: gs.Tensor) -> bool:
    return constant_value(tensor) is not None


def step_masks(order: Sequence[int], channels: int, steps: Sequence[int]) -> np.ndarray:
    """0/1 masks (len(steps), channels): step k zeroes the first k channels of `order`."""
    masks = np.ones((len(steps), channels), dtype=np.float32)
    for row, k in enumerate(steps):
        masks[row, list(order[:k])] = 0.0
    return masks


class PruneSweep:
    """Predictions of the pruned model for many prune steps, from one head pass per batch."""

    def __init__(self, model: onnx.ModelProto, point: PrunePoint, options: RuntimeOptions = RuntimeOptions()) -> None:
        # A fixed batch-1 graph: the head runs the vendor graph through ModelRunner, which batches it
        # only after checking a batch-symbolic copy on real data; the tail is cut from that copy and
        # runs one row at a time whenever the head does (`per_sample`), as the README promises.
        symbolic = make_batch_symbolic(model) if has_fixed_batch_of_one(model) else model
        self.per_sample = symbolic is None
        options = replace(options, allow_spinning=False)  # head and tail sessions alternate on the same cores
        self.point = point
        self.cut = cut_at(symbolic or model, point)
        self.head = ModelRunner(model, taps=self.cut.crossing, options=options)
        self._options, self._tail = options, None  # the tail session is made when the masked path needs it
        self.rest = None if self.cut.rest is None else create_session(self.cut.rest, options)
        self.prefix = None
        if self.cut.prefix is not None and not self.per_sample:
            self.prefix = AffinePrefix(self.cut.prefix, self.cut.boundaries, point, options)
        self._plan_memory()

    @property
    def tail(self):
        if self._tail is None:
            self._tail = create_session(self.cut.tail, self._options)
        return self._tail

    def _plan_memory(self) -> None:
        """Rows per tail (or rest) call within half the memory room; the head pass gets the other half."""
        after_cut = self.cut.rest if self.prefix is not None and self.cut.rest is not None else self.cut.tail
        self.other_weights = SESSION_COPIES * weight_bytes(after_cut)
        room = self.head.memory_room(0.5, self.other_weights)
        self.tail_rows = rows_within(room, activation_bytes(self.cut.tail)[0], MAX_TAIL_ROWS)
        self.rest_rows = self.tail_rows if self.cut.rest is None else rows_within(
            room, activation_bytes(self.cut.rest)[0], MAX_TAIL_ROWS)
        # Affine path: per sample, every channel's contribution to every boundary value (float32).
        self.contribution_bytes = 0 if self.prefix is None else 4 * self.point.channels * output_bytes(self.cut.prefix)

    @property
    def method(self) -> str:
        if self.prefix is None:
            return "masked-tail"
        return "running-sum" if self.rest is None else "affine-prefix"

    def predictions(
        self, dataset: Dataset, order: Sequence[int], steps: Sequence[int], *, batch_size: int = 64,
        progress: bool = False, description: str = "prune sweep",
    ) -> np.ndarray:
        """Predicted classes (len(steps), len(dataset)) after pruning the first `steps[i]` channels of `order`."""
        check_fits(dataset, self.head.input)
        order, steps = [int(c) for c in order], [int(k) for k in steps]
        batch_size = self.head.batch_size(batch_size, share=0.5, extra_per_sample=self.contribution_bytes,
                                          other_weights=self.other_weights)
        results = []
        with progress_bar(len(dataset), description, enabled=progress) as bar:
            for batch in dataset.batches(batch_size):
                crossing = self.head.run(batch.x)
                if self.head.runs_per_sample and not self.per_sample:
                    self.per_sample, self.prefix = True, None  # the batch-symbolic copy failed its check
                results.append(self._batch_predictions(crossing, order, steps))
                bar.update(len(batch.x))
        return np.concatenate(results, axis=1)

    def _batch_predictions(self, crossing: dict[str, np.ndarray], order: list[int], steps: list[int]) -> np.ndarray:
        if self.prefix is not None:
            try:
                chunks = self.prefix.step_states(crossing[self.point.tensor], order, steps, self.rest_rows)
            except ONNXRUNTIME_ERRORS as exc:
                raise run_failure(exc, TAIL_FAILURE) from None
            if chunks is not None:
                return np.concatenate([self._from_states(states, crossing) for states in chunks])
            self.prefix = None  # the probed map did not hold: masked path from now on
        masks = step_masks(order, self.point.channels, steps)
        activation = crossing[self.point.tensor]
        chunks = (_chunks(activation.size, masks, max(1, self.tail_rows // len(activation))) if self.cut.stackable
                  else (masks[i:i + 1] for i in range(len(masks))))
        return np.concatenate([self._masked(crossing, chunk) for chunk in chunks])

    def _masked(self, crossing: dict[str, np.ndarray], masks: np.ndarray) -> np.ndarray:
        activation = crossing[self.point.tensor]
        feeds = {self.point.tensor: _masked_stack(activation, masks, self.point.channel_axis)}
        feeds.update(_tiled(crossing, self.cut.crossing[1:], len(masks)))
        return _step_predictions(self._run(self.tail, feeds), len(masks))

    def _run(self, session, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The tail's (or rest's) output for stacked rows; row by row for a graph that fixes batch 1."""
        try:
            if not self.per_sample:
                return session.run([self.cut.output], feeds)[0]
            rows = len(next(iter(feeds.values())))
            return np.concatenate([session.run([self.cut.output], {k: v[i : i + 1] for k, v in feeds.items()})[0]
                                   for i in range(rows)])
        except ONNXRUNTIME_ERRORS as exc:
            raise run_failure(exc, TAIL_FAILURE) from None

    def _from_states(self, states: list[np.ndarray], crossing: dict[str, np.ndarray]) -> np.ndarray:
        """Predictions for a chunk of steps from their boundary values, (steps, batch, ...) each."""
        steps = len(states[0])
        if steps > 1 and self.rest is not None and not self.cut.stackable:
            return np.concatenate([self._from_states([state[i:i + 1] for state in states], crossing)
                                   for i in range(steps)])
        if self.rest is None:
            return _step_predictions(states[0].reshape(steps * states[0].shape[1], -1), steps)
        feeds = {name: state.reshape(-1, *state.shape[2:]) for name, state in zip(self.cut.boundaries, states)}
        feeds.update(_tiled(crossing, self.cut.crossing[1:], steps))
        return _step_predictions(self._run(self.rest, feeds), steps)


def _tiled(crossing: dict[str, np.ndarray], names: Sequence[str], copies: int) -> dict[str, np.ndarray]:
    return {name: np.concatenate([crossing[name]] * copies) for name in names}


def _step_predictions(scores: np.ndarray, steps: int) -> np.ndarray:
    """(steps * batch, classes...) scores -> (steps, batch) class ids."""
    return predictions(scores).reshape(steps, -1)


def _chunks(per_step: int, masks: np.ndarray, max_steps: int) -> Iterator[np.ndarray]:
    size = max(1, min(max_steps, MAX_STACK_ELEMENTS // max(1, per_step)))
    for start in range(0, len(masks), size):
        yield masks[start : start + size]


def _masked_stack(activation: np.ndarray, masks: np.ndarray, channel_axis: int) -> np.ndarray:
    """Copies of `activation` (B, ...) masked by each row of `masks`, stacked to (len(masks) * B, ...)."""
    shape = [1] * activation.ndim
    shape[channel_axis] = masks.shape[1]
    masked = activation[None] * masks.reshape(len(masks), *shape)
    return masked.reshape(-1, *activation.shape[1:])


class AffinePrefix:
    """The tail's affine prefix z_j = b_j + Σ_c L_jc a_c, probed once, applied as running sums.

    L is found by feeding the prefix the zero tensor and one scaled unit tensor per
    element of a sample (done once per model, in chunks). Per batch, channel c contributes
    L_jc a_c to boundary j (one batched float32 matrix product); step k subtracts the
    contributions of the first k channels of the order from the prefix's real output.
    Each batch is checked against the prefix itself; a mismatch returns None.
    """

    def __init__(self, model: onnx.ModelProto, boundaries: tuple[str, ...], point: PrunePoint,
                 options: RuntimeOptions) -> None:
        self.point, self.boundaries = point, boundaries
        self.session = create_session(model, options)
        self.input = model.graph.input[0].name
        self.maps: list[np.ndarray] | None = None  # per boundary: (C, positions, outputs) float32
        self.bias: list[np.ndarray] = []

    def _probe(self, sample_shape: tuple[int, ...]) -> bool:
        size = int(np.prod(sample_shape))
        outputs = [[] for _ in self.boundaries]
        chunk = max(1, MAX_STACK_ELEMENTS // size)
        for start in range(0, size + 1, chunk):
            index = np.arange(start, min(size + 1, start + chunk))
            probe = np.zeros((len(index), size), np.float32)
            units = index > 0
            probe[units, index[units] - 1] = PROBE_SCALE
            results = self.session.run(list(self.boundaries), {self.input: probe.reshape(len(index), *sample_shape)})
            if start == 0 and size * sum(r[0].size for r in results) > MAX_PROBE_ELEMENTS:
                return False
            for collected, result in zip(outputs, results):
                collected.append(result.reshape(len(index), -1).astype(np.float64))
        self.maps, self.bias = [], []
        for collected in outputs:
            values = np.concatenate(collected)
            self.bias.append(values[0])
            linear = ((values[1:] - values[0]) / PROBE_SCALE).reshape(*sample_shape, -1)
            moved = np.moveaxis(linear, self.point.channel_axis - 1, 0)
            self.maps.append(np.ascontiguousarray(moved.reshape(moved.shape[0], -1, moved.shape[-1]), dtype=np.float32))
        return True

    def step_states(self, activation: np.ndarray, order: list[int], steps: list[int],
                    max_rows: int) -> Iterator[list[np.ndarray]] | None:
        """Chunks of steps; per boundary its value after each step, (steps, batch, *shape). None if not affine.

        A chunk holds at most `max_rows` (steps x batch) rows, so what the rest of the tail
        computes from it stays within the memory plan."""
        if self.maps is None and not self._probe(activation.shape[1:]):
            return None
        batch = len(activation)
        per_channel = np.ascontiguousarray(channels_first(activation, self.point.channel_axis).transpose(1, 0, 2),
                                           dtype=np.float32)  # (C, B, positions)
        actual = self.session.run(list(self.boundaries), {self.input: activation})
        contributions = []
        for linear, bias, real in zip(self.maps, self.bias, actual):
            contribution = np.matmul(per_channel, linear)  # (C, B, outputs)
            flat = real.reshape(batch, -1)
            scale = max(1.0, float(np.abs(flat).max()))
            if not np.allclose(bias + contribution.sum(axis=0, dtype=np.float64), flat, rtol=1e-4, atol=1e-4 * scale):
                return None
            contributions.append(contribution)
        return _running_states(actual, contributions, order, steps, max(1, max_rows // batch))


def _running_states(actual: list[np.ndarray], contributions: list[np.ndarray], order: list[int],
                    steps: list[int], max_steps: int) -> Iterator[list[np.ndarray]]:
    """Each boundary minus the running sum of its contributions in `order`, in chunks of `steps`.

    Starts from the prefix's real output (exact at step 0) and accumulates in float64.
    """
    batch = len(actual[0])
    current = [real.reshape(batch, -1).astype(np.float64) for real in actual]
    per_step = sum(c.size for c in current)
    rows = max(1, min(max_steps, MAX_STACK_ELEMENTS // per_step))
    wanted = set(steps)
    chunk: list[list[np.ndarray]] = [[] for _ in current]
    for k in range(max(steps) + 1):
        if k:
            for value, contribution in zip(current, contributions):
                np.subtract(value, contribution[order[k - 1]], out=value)
        if k in wanted:
            for collected, value in zip(chunk, current):
                collected.append(value.astype(np.float32))
        if len(chunk[0]) == rows or (k == max(steps) and chunk[0]):
            yield [np.stack(c).reshape(len(c), *real.shape) for c, real in zip(chunk, actual)]
            chunk = [[] for _ in current]
