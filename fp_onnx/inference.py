"""Run a vendor classifier on batches of data and read internal tensors on the way.

Profiling needs the activation tensor at the prune point next to the class scores,
from one forward pass. We add the wanted internal tensors ("taps") as extra graph
outputs of a private copy of the model; onnxruntime then keeps them alive through
its optimisations. Fixed batch-1 graphs are made batch-symbolic when that gives the
same answers as running sample by sample (checked on the first real batch);
otherwise the runner goes one sample at a time and says so once in `notes`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from fp_onnx.batch import has_fixed_batch_of_one, make_batch_symbolic
from fp_onnx.errors import BadDataError, BadModelError
from fp_onnx.memory import SESSION_COPIES, activation_bytes, budget_bytes, check_sample_fits, rows_within, weight_bytes
from fp_onnx.runtime import RuntimeOptions, active_device, create_session, run_failure
from fp_onnx.signature import TensorSpec, real_inputs, tensor_spec

_AGREEMENT = dict(rtol=1e-4, atol=1e-5)


class ModelRunner:
    """Feeds batches to one model; returns class scores and tapped tensors by name."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        taps: Sequence[str] = (),
        output: str | None = None,
        options: RuntimeOptions = RuntimeOptions(),
    ) -> None:
        self.input = single_input(model)
        self.output = output or model.graph.output[0].name
        if self.output not in {value.name for value in model.graph.output}:
            raise BadModelError(f"model has no output named '{self.output}'")
        self.taps = tuple(taps)
        self.notes: list[str] = []
        tapped = with_outputs(model, self.taps)
        self.sample_bytes, self._largest = activation_bytes(tapped)
        self.memory_budget = budget_bytes(options.max_memory)
        self._weight_bytes = weight_bytes(model)
        self._session = create_session(tapped, options)
        self._batched_session = None
        self._per_sample = False
        self._batch_checked = True
        if has_fixed_batch_of_one(model):
            self._prepare_batching(tapped, options)

    @property
    def device(self) -> str:
        return active_device(self._session)

    @property
    def runs_per_sample(self) -> bool:
        """True once the runner found that the (fixed batch-1) graph must be fed one sample at a time."""
        return self._per_sample

    def memory_room(self, share: float = 1.0, other_weights: int = 0) -> int:
        """`share` of the memory budget left for activations once the copies of the weights (this
        model's and `other_weights` bytes of the caller's other sessions) are set aside; at least a
        quarter of the budget, since the weights are there whatever we choose."""
        fixed = SESSION_COPIES * self._weight_bytes + other_weights
        return int(max(self.memory_budget - fixed, self.memory_budget // 4) * share)

    def batch_size(self, requested: int, share: float = 1.0, extra_per_sample: int = 0, other_weights: int = 0) -> int:
        """The largest batch up to `requested` whose activations (plus `extra_per_sample` bytes of the
        caller's own per-sample arrays) fit `share` of the memory room.

        Raises ResourceLimitError when not even one sample fits (fp_onnx.memory).
        """
        room = self.memory_room(share, other_weights)
        check_sample_fits(self.sample_bytes, self._largest, room, "the model")
        return rows_within(room, self.sample_bytes + extra_per_sample, requested)

    def _prepare_batching(self, tapped: onnx.ModelProto, options: RuntimeOptions) -> None:
        symbolic = make_batch_symbolic(tapped)
        if symbolic is None:
            self._fall_back_to_per_sample("a Reshape hard-codes it")
            return
        try:
            self._batched_session = create_session(symbolic, options)
            self._batch_checked = False
        except BadModelError:
            self._fall_back_to_per_sample("onnxruntime rejects the batch-symbolic graph")

    def _fall_back_to_per_sample(self, why: str) -> None:
        self._per_sample = True
        self.notes.append(f"the model fixes its batch size at 1 ({why}); running one sample at a time")

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for one batch: {output name: scores, tap name: tensor, ...}."""
        x = np.ascontiguousarray(x, dtype=self.input.dtype)
        if not self._batch_checked and len(x) >= 2:
            self._check_batching(x[:2])
        if self._per_sample or not self._batch_checked:
            return _concatenate([self._run(self._session, x[i : i + 1]) for i in range(len(x))])
        return self._run(self._batched_session or self._session, x)

    def _check_batching(self, sample: np.ndarray) -> None:
        self._batch_checked = True
        try:
            batched = self._run(self._batched_session, sample)
        except (BadDataError, BadModelError):  # the batch-symbolic copy fails where the vendor graph does not
            self._fall_back_to_per_sample("the graph breaks with a larger batch")
            return
        single = _concatenate([self._run(self._session, sample[i : i + 1]) for i in range(len(sample))])
        if not all(np.allclose(batched[k], single[k], **_AGREEMENT) for k in single):
            self._fall_back_to_per_sample("batched results differ from single-sample ones")
        else:
            self.notes.append("the model fixes its batch size at 1; running it with a symbolic batch (verified)")

    def _run(self, session, x: np.ndarray) -> dict[str, np.ndarray]:
        names = [self.output, *self.taps]
        try:
            values = session.run(names, {self.input.name: x})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises untyped errors on bad feeds
            # A node failing on a batch that fits the input is the graph's fault; a refused feed is the data's.
            inside_node = "while running" in str(exc)
            raise run_failure(exc, f"onnxruntime {'failed running the model on' if inside_node else 'rejected'} a "
                                   f"batch of shape {list(x.shape)} for input {self.input.describe()}",
                              BadModelError if inside_node else BadDataError) from None
        for name, value in zip(names, values):
            if value.shape[:1] != (len(x),):
                raise BadModelError(
                    f"model output '{name}' has shape {list(value.shape)} for a batch of {len(x)} samples: it does "
                    "not follow the input batch (is the graph wired to its input?)"
                )
        return dict(zip(names, values))


def single_input(model: onnx.ModelProto) -> TensorSpec:
    """The classifier's one real input; multi-input models are out of scope."""
    inputs = real_inputs(model.graph)
    if len(inputs) != 1:
        names = ", ".join(v.name for v in inputs) or "none"
        raise BadModelError(f"fp-onnx defends single-input classifiers; this model has inputs: {names}")
    return tensor_spec(inputs[0])


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` that also outputs the named internal tensors."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {value.name for value in copy.graph.output}
    types = {value.name: value.type.tensor_type.elem_type for value in copy.graph.value_info}
    produced = {output for node in copy.graph.node for output in node.output}
    for name in names:
        if name in existing:
            continue
        if name not in produced:
            raise BadModelError(f"model has no tensor named '{name}'")
        elem_type = types.get(name, onnx.TensorProto.FLOAT)
        copy.graph.output.append(helper.make_tensor_value_info(name, elem_type, None))
    return copy


def predictions(scores: np.ndarray) -> np.ndarray:
    """Class ids from logits or probabilities, shape (N, classes[, 1, 1])."""
    flat = scores.reshape(scores.shape[0], -1)
    return flat.argmax(axis=1)


def _concatenate(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
