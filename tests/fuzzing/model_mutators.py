"""Hostile vendor models: corrupted bytes, rewired graphs, odd versions, external-data path attacks.

Each mutator copies a seed folder into the case's `inputs`, damages the model in
one way and picks a command. Only the external-data variants that stay inside the
model's folder (a symlink to a file beside the model) are valid input; they must
succeed (`expect_ok`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fuzzing.cases import Case, CaseContext, mutator

HUGE = 2**62


def _load(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path), load_external_data=False)


def _save(model: onnx.ModelProto, path: Path) -> None:
    path.write_bytes(model.SerializeToString())


def _graph_case(ctx: CaseContext, edit, detail: str = "") -> Case:
    """Copy the seed, apply `edit(model) -> detail` to its graph, save, pick a command."""
    path = ctx.copy_seed()
    model = _load(path)
    detail = edit(model) or detail
    _save(model, path)
    return Case("", ctx.command_args(ctx.random_command(), path), detail)


def _tensor_names(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    names = [value.name for value in graph.input] + [init.name for init in graph.initializer]
    return names + [name for node in graph.node for name in node.output]


# --------------------------------------------------------------------------- bytes
@mutator("truncate", weight=2)
def truncate(ctx: CaseContext) -> Case:
    path = ctx.copy_seed()
    raw = path.read_bytes()
    keep = int(ctx.rng.integers(0, len(raw)))
    path.write_bytes(raw[:keep])
    return Case("", ctx.command_args(ctx.random_command(), path), f"kept {keep} of {len(raw)} bytes")


@mutator("bit_flip", weight=3)
def bit_flip(ctx: CaseContext) -> Case:
    path = ctx.copy_seed()
    raw = bytearray(path.read_bytes())
    flips = int(ctx.rng.integers(1, 17))
    for position in ctx.rng.integers(0, len(raw) * 8, flips):
        raw[position // 8] ^= 1 << (position % 8)
    path.write_bytes(bytes(raw))
    return Case("", ctx.command_args(ctx.random_command(), path), f"{flips} bits flipped")


@mutator("byte_splice", weight=1)
def byte_splice(ctx: CaseContext) -> Case:
    path = ctx.copy_seed()
    raw = path.read_bytes()
    start = int(ctx.rng.integers(0, len(raw)))
    junk = ctx.rng.bytes(int(ctx.rng.integers(1, 256)))
    path.write_bytes(raw[:start] + junk + raw[start + (len(junk) if ctx.chance(0.5) else 0):])
    return Case("", ctx.command_args(ctx.random_command(), path), f"{len(junk)} junk bytes at {start}")


# --------------------------------------------------------------------------- graph structure
@mutator("rewire_input", weight=4)
def rewire_input(ctx: CaseContext) -> Case:
    def edit(model):
        node = ctx.pick(list(model.graph.node))
        slot = int(ctx.rng.integers(len(node.input))) if node.input else 0
        target = ctx.pick(_tensor_names(model) + ["", "no_such_tensor"])
        if node.input:
            node.input[slot] = target
        else:
            node.input.append(target)
        return f"{node.op_type} '{node.name}' input {slot} <- '{target}'"

    return _graph_case(ctx, edit)


@mutator("remove_outputs", weight=2)
def remove_outputs(ctx: CaseContext) -> Case:
    def edit(model):
        outputs = model.graph.output
        choice = ctx.pick(["all", "rename", "extra"])
        if choice == "all":
            del outputs[:]
        elif choice == "rename":
            outputs[0].name = "not_produced"
        else:
            outputs.append(helper.make_tensor_value_info(ctx.pick(_tensor_names(model)), TensorProto.FLOAT, None))
        return f"graph outputs: {choice}"

    return _graph_case(ctx, edit)


@mutator("drop_node", weight=2)
def drop_node(ctx: CaseContext) -> Case:
    def edit(model):
        index = int(ctx.rng.integers(len(model.graph.node)))
        node = model.graph.node[index]
        del model.graph.node[index]
        return f"removed {node.op_type} '{node.name}'"

    return _graph_case(ctx, edit)


@mutator("bad_attribute", weight=4)
def bad_attribute(ctx: CaseContext) -> Case:
    values = [-1, 0, 1, 3, 7, 2**31, HUGE, -HUGE]

    def edit(model):
        node = ctx.pick(list(model.graph.node))
        if not node.attribute or ctx.chance(0.2):
            node.attribute.append(helper.make_attribute(ctx.pick(["axis", "group", "kernel_shape", "bogus"]),
                                                        ctx.pick([5, [0, 0], "x"])))
            return f"{node.op_type}: added attribute {node.attribute[-1].name}"
        attribute = ctx.pick(list(node.attribute))
        if attribute.type == onnx.AttributeProto.INT:
            attribute.i = ctx.pick(values)
        elif attribute.type == onnx.AttributeProto.INTS:
            count = int(ctx.rng.integers(0, 6))
            attribute.ClearField("ints")
            attribute.ints.extend(ctx.pick(values) for _ in range(count))
        elif attribute.type == onnx.AttributeProto.FLOAT:
            attribute.f = ctx.pick([float("nan"), float("inf"), -1.0, 0.0, 1e30])
        elif attribute.type == onnx.AttributeProto.STRING:
            attribute.s = ctx.pick([b"", b"NOTSET", b"\xff\xfe", b"SAME_UPPER", b"x" * 10000])
        else:
            node.attribute.remove(attribute)
            return f"{node.op_type}: removed {attribute.name}"
        return f"{node.op_type} '{node.name}': attribute {attribute.name} changed"

    return _graph_case(ctx, edit)


@mutator("wrong_dtype", weight=2)
def wrong_dtype(ctx: CaseContext) -> Case:
    types = [TensorProto.INT64, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.STRING, TensorProto.BOOL,
             TensorProto.UNDEFINED, 999]

    def edit(model):
        where = ctx.pick(["input", "output", "initializer"])
        elem_type = ctx.pick(types)
        if where == "initializer" and model.graph.initializer:
            tensor = ctx.pick(list(model.graph.initializer))
            tensor.data_type = elem_type
            return f"initializer '{tensor.name}' type {elem_type}"
        value = (model.graph.input if where == "input" else model.graph.output or model.graph.input)[0]
        value.type.tensor_type.elem_type = elem_type
        return f"{where} '{value.name}' type {elem_type}"

    return _graph_case(ctx, edit)


@mutator("huge_dims", weight=3)
def huge_dims(ctx: CaseContext) -> Case:
    def edit(model):
        where = ctx.pick(["input", "initializer", "reshape", "value_info"])
        size = ctx.pick([0, -1, 2**31, 2**40, HUGE])
        if where == "reshape":
            shape = numpy_helper.from_array(np.array([size, -1 if size > 0 else 1], np.int64), "fuzz_shape")
            model.graph.initializer.append(shape)
            node = model.graph.node[int(ctx.rng.integers(len(model.graph.node)))]
            reshaped = node.output[0]
            node.output[0] = f"{reshaped}_before_fuzz_reshape"
            model.graph.node.append(helper.make_node("Reshape", [node.output[0], "fuzz_shape"], [reshaped],
                                                     "fuzz_reshape"))
            _toposort(model)
            return f"Reshape of '{reshaped}' to [{size}, -1]"
        if where == "initializer" and model.graph.initializer:
            tensor = ctx.pick(list(model.graph.initializer))
            if tensor.dims:
                tensor.dims[int(ctx.rng.integers(len(tensor.dims)))] = size
            return f"initializer '{tensor.name}' dims {list(tensor.dims)}"
        values = model.graph.input if where == "input" else (model.graph.value_info or model.graph.input)
        dims = ctx.pick(list(values)).type.tensor_type.shape.dim
        if dims:
            dims[int(ctx.rng.integers(len(dims)))].dim_value = size
        return f"{where} dim set to {size}"

    return _graph_case(ctx, edit)


def _toposort(model: onnx.ModelProto) -> None:
    """Reorder nodes so every input is produced before use (the appended node moves to its place)."""
    produced = {value.name for value in model.graph.input} | {init.name for init in model.graph.initializer}
    pending, ordered = list(model.graph.node), []
    while pending:
        ready = [n for n in pending if all(not i or i in produced for i in n.input)] or pending[:1]
        for node in ready:
            ordered.append(node)
            produced.update(node.output)
            pending.remove(node)
    nodes = [onnx.NodeProto.FromString(n.SerializeToString()) for n in ordered]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


@mutator("bad_version", weight=2)
def bad_version(ctx: CaseContext) -> Case:
    def edit(model):
        choice = ctx.pick(["opset", "ir", "no_default", "unknown_domain", "ml_domain"])
        if choice == "opset":
            version = ctx.pick([0, 1, 6, 27, 28, 1000, 2**40])
            for opset in model.opset_import:
                if opset.domain in ("", "ai.onnx"):
                    opset.version = version
            return f"opset {version}"
        if choice == "ir":
            model.ir_version = ctx.pick([0, 1, 3, 14, 100])
            return f"ir_version {model.ir_version}"
        if choice == "no_default":
            kept = [o for o in model.opset_import if o.domain not in ("", "ai.onnx")]
            del model.opset_import[:]
            model.opset_import.extend(kept)
            return "no default-domain opset"
        domain = "com.vendor.secret" if choice == "unknown_domain" else "ai.onnx.ml"
        model.opset_import.append(helper.make_opsetid(domain, ctx.pick([1, 3, 99])))
        return f"extra opset import {domain}"

    return _graph_case(ctx, edit)


CONTRIB_OPS = [("com.microsoft", "QuickGelu"), ("com.microsoft", "Gelu"), ("com.microsoft", "FastGelu"),
               ("com.microsoft", "NoSuchOp"), ("", "NoSuchOp"), ("com.vendor", "Mystery")]


@mutator("contrib_op", weight=3)
def contrib_op(ctx: CaseContext) -> Case:
    def edit(model):
        candidates = [n for n in model.graph.node if n.op_type in ("Relu", "MaxPool", "Softmax", "Identity")]
        node = ctx.pick(candidates or list(model.graph.node))
        domain, op = ctx.pick(CONTRIB_OPS)
        old = node.op_type
        node.op_type, node.domain = op, domain
        del node.attribute[:]
        if domain and all(o.domain != domain for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid(domain, 1))
        return f"{old} '{node.name}' -> {domain or 'ai.onnx'}::{op}"

    return _graph_case(ctx, edit)


@mutator("resize_weight", weight=2)
def resize_weight(ctx: CaseContext) -> Case:
    """A conv weight with more or fewer output channels than its bias and the next layer expect."""
    def edit(model):
        convs = [n for n in model.graph.node if n.op_type == "Conv" and len(n.input) > 1]
        weights = {init.name: init for init in model.graph.initializer}
        node = ctx.pick(convs)
        if node.input[1] not in weights:
            return "conv weight is not an initializer; unchanged"
        tensor = weights[node.input[1]]
        array = numpy_helper.to_array(tensor) if tensor.data_location != TensorProto.EXTERNAL else None
        if array is None:
            tensor.dims[0] += 1
            return f"external weight '{tensor.name}' dims claim {list(tensor.dims)}"
        change = int(ctx.rng.integers(1, 4)) * ctx.pick([-1, 1])
        rows = max(1, array.shape[0] + change)
        resized = np.resize(array, (rows, *array.shape[1:]))
        tensor.CopyFrom(numpy_helper.from_array(resized.astype(array.dtype), tensor.name))
        return f"conv '{node.name}' weight now {list(resized.shape)}"

    return _graph_case(ctx, edit)


@mutator("odd_names", weight=2)
def odd_names(ctx: CaseContext) -> Case:
    def edit(model):
        choice = ctx.pick(["duplicate_output", "empty_node_names", "weird_node_name", "duplicate_input"])
        nodes = list(model.graph.node)
        if choice == "duplicate_output" and len(nodes) > 1:
            nodes[-1].output[0] = nodes[0].output[0]
        elif choice == "empty_node_names":
            for node in nodes:
                node.name = ""
        elif choice == "weird_node_name":
            ctx.pick(nodes).name = ctx.pick(["\n", "é" * 3000, "a/b\\c", "../../x", " "])
        else:
            model.graph.input.append(model.graph.input[0])
        return choice

    return _graph_case(ctx, edit)


@mutator("extra_input", weight=1)
def extra_input(ctx: CaseContext) -> Case:
    def edit(model):
        if ctx.chance(0.5):
            model.graph.input.append(helper.make_tensor_value_info("second_input", TensorProto.FLOAT, [1, 3]))
            return "a second real input"
        real = [v for v in model.graph.input if v.name not in {i.name for i in model.graph.initializer}]
        model.graph.input.remove(real[0])
        return "the real input removed"

    return _graph_case(ctx, edit)


# --------------------------------------------------------------------------- external data
def point_to_external(tensor: onnx.TensorProto, location: str, offset: str = "0", length: str | None = None) -> bytes:
    """Make `tensor` refer to external data at `location` (its inline bytes are dropped and returned)."""
    raw = tensor.raw_data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", offset), ("length", length or str(len(raw)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return raw


def with_function_constant(model: onnx.ModelProto, location: str) -> onnx.ModelProto:
    """Route the graph input through a model-local function whose Constant (a scalar 0.5) reads
    external data at `location`: onnx's loader never looks into functions (issue 11, item 4)."""
    value = numpy_helper.from_array(np.array(0.5, np.float32), "function_constant")
    point_to_external(value, location)
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    model.functions.append(helper.make_function(
        "fuzz.local", "AddConstant", ["x"], ["y"],
        [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])],
        opset_imports=[helper.make_opsetid("", opset)]))
    model.opset_import.append(helper.make_opsetid("fuzz.local", 1))
    first_input = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = ["fuzz_shifted" if name == first_input else name for name in node.input]
    model.graph.node.insert(0, helper.make_node("AddConstant", [first_input], ["fuzz_shifted"], "fuzz_call",
                                                domain="fuzz.local"))
    return model


def _externalize(ctx: CaseContext, model: onnx.ModelProto, location: str, *, offset: str = "0",
                 length: str | None = None) -> onnx.TensorProto:
    """Move the largest inline initializer's bytes to `weights.bin` beside the model, referenced as `location`."""
    inline = [t for t in model.graph.initializer if t.data_location != TensorProto.EXTERNAL and t.raw_data]
    tensor = max(inline, key=lambda t: len(t.raw_data)) if inline else model.graph.initializer[0]
    (ctx.inputs / "weights.bin").write_bytes(point_to_external(tensor, location, offset, length))
    return tensor


EXTERNAL_ATTACKS = ("absolute_outside", "dotdot_outside", "symlink_outside", "symlink_inside", "symlink_loop",
                    "long_name", "directory", "fifo", "missing", "nul_byte", "backslash", "model_itself",
                    "bad_offset", "bad_length", "huge_length", "subfolder_inside")


@mutator("external_data", weight=6)
def external_data(ctx: CaseContext) -> Case:
    path = ctx.copy_seed()
    model = _load(path)
    attack = ctx.pick(EXTERNAL_ATTACKS)
    secret = ctx.outside / "secret.bin"
    valid = attack in ("symlink_inside", "subfolder_inside")
    if attack == "absolute_outside":
        _externalize(ctx, model, str(secret))
    elif attack == "dotdot_outside":
        _externalize(ctx, model, os.path.relpath(secret, ctx.inputs))
    elif attack == "symlink_outside":
        os.symlink(secret, ctx.inputs / "link.bin")
        _externalize(ctx, model, "link.bin")
    elif attack == "symlink_inside":
        _externalize(ctx, model, "link.bin")
        os.symlink("weights.bin", ctx.inputs / "link.bin")
    elif attack == "subfolder_inside":
        _externalize(ctx, model, "sub/weights.bin")
        (ctx.inputs / "sub").mkdir()
        (ctx.inputs / "weights.bin").rename(ctx.inputs / "sub" / "weights.bin")
    elif attack == "symlink_loop":
        os.symlink("loop_b.data", ctx.inputs / "loop_a.data")
        os.symlink("loop_a.data", ctx.inputs / "loop_b.data")
        _externalize(ctx, model, "loop_a.data")
    elif attack == "long_name":
        _externalize(ctx, model, "a" * int(ctx.pick([256, 5000])))
    elif attack == "directory":
        (ctx.inputs / "data_dir").mkdir()
        _externalize(ctx, model, "data_dir")
    elif attack == "fifo":
        os.mkfifo(ctx.inputs / "pipe.bin")
        _externalize(ctx, model, "pipe.bin")
    elif attack == "missing":
        _externalize(ctx, model, "absent.bin")
    elif attack == "nul_byte":
        _externalize(ctx, model, "weights.bin\0.txt")
    elif attack == "backslash":
        _externalize(ctx, model, "..\\outside\\secret.bin")
    elif attack == "model_itself":
        _externalize(ctx, model, "model.onnx")
    elif attack == "bad_offset":
        _externalize(ctx, model, "weights.bin", offset=ctx.pick(["-8", "1e3", "x", str(HUGE)]))
    elif attack == "bad_length":
        _externalize(ctx, model, "weights.bin", length=ctx.pick(["-1", "4", "abc"]))
    else:
        _externalize(ctx, model, "weights.bin", length=str(HUGE))
    _save(model, path)
    command = ctx.random_command() if not valid else ctx.pick(["layers", "profile", "prune"])
    return Case("", ctx.command_args(command, path), attack, expect_ok=valid)


@mutator("function_constant", weight=2)
def function_constant(ctx: CaseContext) -> Case:
    """The input first goes through a model-local function whose Constant reads external data (item 4)."""
    path = ctx.copy_seed()
    where = ctx.pick(["absolute", "outside", "inside"])
    location = {"absolute": str(ctx.outside / "secret.bin"), "outside": "../../outside/secret.bin",
                "inside": "constant.bin"}[where]
    (ctx.inputs / "constant.bin").write_bytes(np.array(0.5, np.float32).tobytes())
    _save(with_function_constant(_load(path), location), path)
    command = ctx.pick(["layers", "profile", "prune"])
    return Case("", ctx.command_args(command, path), f"function constant: {where}", expect_ok=where == "inside")


@mutator("model_path", weight=1)
def model_path(ctx: CaseContext) -> Case:
    """The model argument is not a plain file: a folder, a FIFO, a symlink loop, a device, an empty file."""
    path = ctx.copy_seed()
    kind = ctx.pick(["folder", "fifo", "symlink_loop", "device", "empty", "symlink_inside", "odd_name"])
    target = ctx.inputs / "vendor.onnx"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink_loop":
        os.symlink("vendor.onnx", target)
    elif kind == "device":
        os.symlink("/dev/zero", target)
    elif kind == "empty":
        target.write_bytes(b"")
    elif kind == "symlink_inside":
        os.symlink("model.onnx", target)
    else:
        target = ctx.inputs / "mödel with spaces\nand newline.onnx"
        target.write_bytes(path.read_bytes())
    valid = kind in ("symlink_inside", "odd_name") and ctx.seed.name != "dynamo_external"
    return Case("", ctx.command_args(ctx.pick(["layers", "profile", "prune"]), target), kind, expect_ok=valid)


@mutator("subgraph", weight=1)
def subgraph(ctx: CaseContext) -> Case:
    """A Relu becomes an If on a constant condition whose branches compute it (valid, but control flow)."""
    def edit(model):
        relus = [n for n in model.graph.node if n.op_type == "Relu"]
        if not relus:
            return "no Relu; unchanged"
        node = ctx.pick(relus)
        source, result = node.input[0], node.output[0]
        branch = lambda name: helper.make_graph(  # noqa: E731
            [helper.make_node("Relu", [source], [f"{name}_out"], f"{name}_relu")], name, [],
            [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, None)])
        model.graph.initializer.append(numpy_helper.from_array(np.array(ctx.chance(0.5)), "fuzz_condition"))
        node.op_type = "If"
        del node.input[:]
        node.input.append("fuzz_condition")
        node.output[:] = [result]
        node.attribute.extend([helper.make_attribute("then_branch", branch("then")),
                               helper.make_attribute("else_branch", branch("else"))])
        return f"Relu '{node.name}' -> If"

    return _graph_case(ctx, edit)


@mutator("sparse_initializer", weight=1)
def sparse_initializer(ctx: CaseContext) -> Case:
    """An initializer stored sparse (valid), or with indices that point outside it."""
    def edit(model):
        tensor = ctx.pick([t for t in model.graph.initializer if t.dims and t.raw_data] or [None])
        if tensor is None:
            return "no inline initializer; unchanged"
        array = numpy_helper.to_array(tensor)
        flat = array.reshape(-1)
        indices = np.flatnonzero(flat)
        broken = ctx.chance(0.5)
        if broken:
            indices = indices.copy()
            indices[-1] = flat.size + int(ctx.rng.integers(1, 1000))
        sparse = helper.make_sparse_tensor(numpy_helper.from_array(flat[np.flatnonzero(flat)], tensor.name),
                                           numpy_helper.from_array(indices.astype(np.int64), f"{tensor.name}_idx"),
                                           list(array.shape))
        model.graph.initializer.remove(tensor)
        model.graph.sparse_initializer.append(sparse)
        return f"'{tensor.name}' sparse{' with an index out of range' if broken else ''}"

    return _graph_case(ctx, edit)


# --------------------------------------------------------------------------- controls
@mutator("valid_seed", weight=2)
def valid_seed(ctx: CaseContext) -> Case:
    """The seed itself, unchanged: every command must succeed on it (no valid model refused)."""
    path = ctx.copy_seed()
    return Case("", ctx.command_args(ctx.random_command(), path), ctx.seed.name, expect_ok=True)
