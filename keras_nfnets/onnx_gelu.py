"""The tanh-approximate GELU of an exported ONNX graph, written in the form
onnxruntime fuses.

keras_nfnets' scaled GELU, `gamma * gelu_tanh(x)` (DeepMind's numerics),
reaches the ONNX file as a dozen elementwise ops in an order no runtime
recognises: TensorFlow's graph optimizer (which tf2onnx runs) moves the
constant `gamma` into the `1 + tanh` term, and tf2onnx leaves transposes
in the `x ** 3` branch. onnxruntime then runs every one of them, where it
runs timm's export of the same network as one fused GELU per activation.

`canonical_gelu(model)` finds each such subgraph and writes it again,
with standard ONNX ops, as

    Mul(Mul(x, 0.5), Add(Tanh(Mul(Add(x, Mul(Pow(x, 3), 0.044715)),
        sqrt(2 / pi))), 1)) * gamma

the order onnxruntime's `FastGeluFusion` recognises (one `FastGelu` kernel
per activation when a session starts). The values are the same up to
float rounding; a subgraph that does not match exactly is left as it is.
`NFNetModel.export(..., format="onnx")` applies it to the file it writes.

Example:
>>> import onnx
>>> model = onnx.load("nfnet_f0.onnx")
>>> keras_nfnets.onnx_gelu.canonical_gelu(model)   # activations rewritten
52
"""

import math

import numpy as np

from keras_nfnets import optional

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715
_PREFIX = "canonical_gelu/"


class _Graph:
    """Producers, consumers and scalar constants of an ONNX graph."""

    def __init__(self, graph, numpy_helper):
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.scalars = {}
        for init in graph.initializer:
            self._keep_scalar(init.name, numpy_helper.to_array(init))
        for node in graph.node:
            if node.op_type == "Constant" and node.attribute:
                attr = node.attribute[0]
                if attr.name == "value":
                    self._keep_scalar(node.output[0],
                                      numpy_helper.to_array(attr.t))

    def _keep_scalar(self, name, value):
        if value.size == 1 and value.dtype.kind == "f":
            self.scalars[name] = float(value.ravel()[0])

    def node(self, name, op_type):
        """The node of `op_type` that produces `name`, or None."""
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op_type else None

    def only_consumer(self, name, op_type):
        """The one consumer of `name`, if it is an `op_type`."""
        users = self.consumers.get(name, [])
        if len(users) == 1 and users[0].op_type == op_type:
            return users[0]
        return None

    def split_scalar(self, node, value=None):
        """(scalar, other input) of a binary node with one scalar constant
        input (equal to `value` in float32, if given); (None, None)
        otherwise."""
        for i in (0, 1):
            scalar = self.scalars.get(node.input[i])
            if scalar is None:
                continue
            if value is None or np.float32(scalar) == np.float32(value):
                return scalar, node.input[1 - i]
        return None, None

    def layout(self, name):
        """(source tensor, axis permutation from it) through `Transpose`s."""
        perms = []
        node = self.node(name, "Transpose")
        while node is not None:
            perm = next((list(a.ints) for a in node.attribute
                         if a.name == "perm"), None)
            if perm is None:
                break  # a reversing Transpose: its output is the source
            perms.append(perm)
            name = node.input[0]
            node = self.node(name, "Transpose")
        order = None
        for perm in reversed(perms):  # from the source outwards
            order = perm if order is None else [order[p] for p in perm]
        return name, order


def _then(first, second):
    """The axis order of `second` applied after `first` (None: none)."""
    if first is None or second is None:
        return second if first is None else first
    return [first[p] for p in second]


def _is_identity(order):
    return order is None or order == list(range(len(order)))


def _same_order(a, b):
    if a is None or b is None:
        return _is_identity(a) and _is_identity(b)
    return a == b


def _same_tensor(g, a, b):
    """Whether tensors `a` and `b` are the same source in the same axis
    order (a chain of transposes that cancels out counts as the same)."""
    source_a, order_a = g.layout(a)
    source_b, order_b = g.layout(b)
    return source_a == source_b and _same_order(order_a, order_b)


def _match(g, tanh):
    """(x, gamma or None, output node) of one scaled tanh-GELU around
    `tanh`, or None."""
    inner = g.node(tanh.input[0], "Mul")
    if inner is None:
        return None
    _, summed = g.split_scalar(inner, _SQRT_2_OVER_PI)
    add = g.node(summed, "Add") if summed else None
    if add is None:
        return None
    x = None
    for xi in (0, 1):
        cube_term, back = g.layout(add.input[1 - xi])
        scaled = g.node(cube_term, "Mul")
        if scaled is None:
            continue
        _, powered = g.split_scalar(scaled, _CUBIC)
        power = g.node(powered, "Pow") if powered else None
        if power is None or np.float32(g.scalars.get(power.input[1], 0)) != 3:
            continue
        # x**3 in x's axis order: the cube's input, through the transposes
        # before and after it, is x
        source, order = g.layout(power.input[0])
        x_source, x_order = g.layout(add.input[xi])
        if source == x_source and _same_order(_then(order, back), x_order):
            x = add.input[xi]
            break
    if x is None:
        return None
    one_plus = g.only_consumer(tanh.output[0], "Add")
    if one_plus is None or g.split_scalar(one_plus, 1.0)[0] is None:
        return None
    gamma = None
    scale = g.only_consumer(one_plus.output[0], "Mul")
    if scale is None:
        return None
    gamma_value, _ = g.split_scalar(scale)
    if gamma_value is not None:  # gamma * (1 + tanh(...))
        gamma = gamma_value
        out = g.only_consumer(scale.output[0], "Mul")
        feeding = scale.output[0]
    else:  # no gamma: the 0.5 x factor directly
        out, feeding = scale, one_plus.output[0]
    if out is None:
        return None
    half_name = out.input[1] if out.input[0] == feeding else out.input[0]
    half = g.node(half_name, "Mul")
    if half is None:
        return None
    _, halved = g.split_scalar(half, 0.5)
    if halved is None or not _same_tensor(g, halved, x):
        return None
    return x, gamma, out


def canonical_gelu(model):
    """Rewrites, in place, every scaled tanh-GELU subgraph of the ONNX
    `model` (a `ModelProto`) in the form onnxruntime fuses; returns how
    many. Only float32 graphs are changed: the new constants are float32."""
    onnx = optional.require("onnx", "ONNX GELU rewrite")
    from onnx import helper, numpy_helper  # pylint: disable=import-outside-toplevel
    graph = model.graph
    g = _Graph(graph, numpy_helper)
    # (a subgraph this function wrote is left alone: it is canonical)
    found = [m for m in (_match(g, t) for t in list(graph.node)
                         if t.op_type == "Tanh"
                         and not t.name.startswith(_PREFIX[:-1])) if m is not None]
    if not found:
        return 0
    taken = ({t.name for t in graph.initializer}
             | {o for n in graph.node for o in n.output})
    prefix = _PREFIX
    while any(name.startswith(prefix) for name in taken):
        prefix = prefix[:-1] + "_/"
    constants = {}

    def constant(value):
        key = float(np.float32(value))
        if key not in constants:
            name = f"{prefix}const_{len(constants)}"
            graph.initializer.append(numpy_helper.from_array(
                np.array(value, np.float32), name))
            constants[key] = name
        return constants[key]

    replaced, added = set(), []
    for i, (x, gamma, out) in enumerate(found):
        p = f"{prefix}{i}/"

        def op(kind, inputs, name, output=None):
            added.append(helper.make_node(kind, inputs, [output or p + name],
                                          name=p + name))
            return output or p + name
        cube = op("Pow", [x, constant(3.0)], "cube")
        inner = op("Add", [x, op("Mul", [cube, constant(_CUBIC)], "cubic")],
                   "inner")
        tanh = op("Tanh", [op("Mul", [inner, constant(_SQRT_2_OVER_PI)],
                              "scaled")], "tanh")
        one_plus = op("Add", [tanh, constant(1.0)], "one_plus")
        half = op("Mul", [x, constant(0.5)], "half_x")
        if gamma is None:
            op("Mul", [half, one_plus], "gelu", out.output[0])
        else:
            gelu = op("Mul", [half, one_plus], "gelu")
            op("Mul", [gelu, constant(gamma)], "gamma", out.output[0])
        replaced.add(id(out))
    nodes = [n for n in graph.node if id(n) not in replaced] + added
    nodes = _live(nodes, {o.name for o in graph.output})
    _set_nodes(graph, _topological(nodes, graph))
    used = {name for n in graph.node for name in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    produced = {o for n in graph.node for o in n.output}
    info = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(info)
    onnx.checker.check_model(model)
    return len(found)


def _live(nodes, outputs):
    """The nodes that something of `outputs` depends on."""
    producer = {o: n for n in nodes for o in n.output}
    live, stack = {}, list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live[id(node)] = node
        stack.extend(node.input)
    return [n for n in nodes if id(n) in live]


def _topological(nodes, graph):
    ready = ({i.name for i in graph.input}
             | {t.name for t in graph.initializer} | {""})
    order, pending = [], list(nodes)
    while pending:
        runnable = [n for n in pending if all(i in ready for i in n.input)]
        if not runnable:
            raise ValueError("the rewritten ONNX graph has a cycle or an "
                             "input that nothing produces")
        for node in runnable:
            order.append(node)
            ready.update(node.output)
        done = {id(n) for n in runnable}
        pending = [n for n in pending if id(n) not in done]
    return order


def _set_nodes(graph, nodes):
    del graph.node[:]
    graph.node.extend(nodes)


def canonical_gelu_file(path):
    """`canonical_gelu` on the ONNX file at `path`, rewritten in place when
    anything changed; returns how many activations were rewritten."""
    onnx = optional.require("onnx", "ONNX GELU rewrite")
    model = onnx.load(path)
    count = canonical_gelu(model)
    if count:
        onnx.save(model, path)
    return count
