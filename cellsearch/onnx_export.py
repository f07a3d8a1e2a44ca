"""ONNX export built from ONNX's own recurrent operators, for every cell variant.

ONNX's ``LSTM`` operator has a peephole input ``P`` and an ``input_forget`` attribute (i = 1 - f), and
``GRU`` has ``linear_before_reset`` (torch's GRU), so each layer maps onto one fused operator with
dynamic batch and sequence length and per-sequence ``sequence_lens``. The graph is written directly
with ``onnx.helper`` (no tracing): inputs ``x`` (batch, time, features) float32 and ``lengths``
(batch,) int64; output ``output`` (logits or scaled values) and the task's own outputs
(``Task.onnx_head``; classification: ``probabilities``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cellsearch.tasks import get_task

OPSET = 17


#: torch's LSTM gate blocks (i, f, g, o) in ONNX's order (i, o, f, c).
IOFC = [0, 3, 1, 2]


def gate_blocks(t: Any, order: list[int]) -> np.ndarray:
    """Reorder the gate blocks (first axis) of a torch weight or bias into an ONNX operator's order:
    ``order[k]`` is the torch block that goes k-th (``len(order)`` blocks in all)."""
    a = t.detach().cpu().numpy().astype(np.float32)
    h = a.shape[0] // len(order)
    return np.concatenate([a[k * h:(k + 1) * h] for k in order], axis=0)


def recurrent_operator(g: Graph, op: str, parts: list[dict[str, np.ndarray]], x: str, seq_lens: str, name: str,
                       hidden: int, **attrs: Any) -> tuple[str, str]:
    """One ONNX recurrent operator (``LSTM``, ``GRU``, ``RNN``) for a layer: ``parts`` holds each
    direction's weights by input name (``W``, ``R``, ``B``, ``P``), stacked along ONNX's direction axis;
    ``attrs`` are the operator's own. Returns (Y, Y_h) — what ``Cell.onnx_layer`` returns."""
    from onnx import helper

    names = {key: g.const(f"{name}_{key}", np.stack([p[key] for p in parts]), "float32") for key in parts[0]}
    inputs = [x, names["W"], names["R"], names.get("B", ""), seq_lens, "", "", names.get("P", "")]
    while inputs[-1] == "":
        inputs.pop()
    y, y_h = f"{name}_Y", f"{name}_Yh"
    outputs = [y, y_h] + ([f"{name}_Yc"] if op == "LSTM" else [])
    g.nodes.append(helper.make_node(op, inputs, outputs, hidden_size=hidden,
                                    direction="bidirectional" if len(parts) == 2 else "forward",
                                    **attrs))
    return y, y_h


class Graph:
    """A small builder: ``node`` appends one single-output node and returns its output's name;
    ``const`` adds a named initializer once."""

    def __init__(self) -> None:
        from onnx import TensorProto

        self.INT64, self.FLOAT, self.BOOL, self.INT32 = (TensorProto.INT64, TensorProto.FLOAT, TensorProto.BOOL,
                                                         TensorProto.INT32)
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._names: set[str] = set()

    def const(self, name: str, value: Any, dtype: str) -> str:
        from onnx import numpy_helper

        if name not in self._names:
            self._names.add(name)
            self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        from onnx import helper

        out = f"n{len(self.nodes)}_{op}"
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def mask(self, x: str, lengths: str) -> str:
        """(batch, time, 1) float: 1 at each sequence's real steps of ``x`` (batch, time, ...)."""
        steps = self.node("Range", [self.const("zero_i", 0, "int64"),
                                    self.node("Gather", [self.node("Shape", [x]), self.const("ax1", 1, "int64")]),
                                    self.const("one_i", 1, "int64")])
        less = self.node("Less", [self.node("Unsqueeze", [steps, self.const("ax0s", [0], "int64")]),
                                  self.node("Unsqueeze", [lengths, self.const("ax1s", [1], "int64")])])
        return self.node("Unsqueeze", [self.node("Cast", [less], to=self.FLOAT), self.const("ax2s", [2], "int64")])


def _input_layers(g: Graph, model: Any, x: str) -> str:
    """The model's input layer in ONNX: each input group sliced out and passed through its encoder's
    nodes (``Encoder.onnx_input``), the results side by side (a group of width 0 left out); ``x`` itself
    when there are no groups."""
    from cellsearch.data.encoders import get_encoder

    spec = model.spec
    if not spec.inputs:
        return x
    parts, start = [], 0
    for k, (group, layer, out) in enumerate(zip(spec.inputs, model.inputs.layers, model.inputs.out_widths)):
        if not out:  # channels the network leaves out (``unread``)
            start += group.width
            continue
        part = g.node("Slice", [x, g.const(f"in{k}_start", [start], "int64"),
                                g.const(f"in{k}_end", [start + group.width], "int64"), g.const("ax2s", [2], "int64")])
        parts.append(get_encoder(group.encoder).onnx_input(g, part, group.params, layer))
        start += group.width
    return g.node("Concat", parts, axis=2) if len(parts) > 1 else parts[0]


def _prepare(g: Graph, model: Any) -> tuple[str, str]:
    """The model's ``prepare`` in ONNX: the input layer, zero steps after each end, z-normalise, read
    patches. Returns the names of (inputs, lengths) the stack reads."""
    from cellsearch.data.encoders import get_encoder

    spec = model.spec
    x, lengths = "x", "lengths"
    for group, layer in zip(spec.inputs, model.inputs.layers):
        x, lengths = get_encoder(group.encoder).onnx_resequence(g, x, lengths, group.params, layer)
    x = _input_layers(g, model, x)
    if not (spec.normalize or spec.patch > 1):
        return x, lengths
    mask = g.mask(x, lengths)
    x = g.node("Mul", [x, mask])
    axis1 = g.const("ax1s", [1], "int64")
    if spec.normalize:
        n = g.node("Reshape", [g.node("Cast", [g.node("Max", [lengths, g.const("one_i", 1, "int64")])], to=g.FLOAT),
                               g.const("shape_b11", [-1, 1, 1], "int64")])
        mean = g.node("Div", [g.node("ReduceSum", [x, axis1], keepdims=1), n])
        centred = g.node("Mul", [g.node("Sub", [x, mean]), mask])
        var = g.node("Div", [g.node("ReduceSum", [g.node("Mul", [centred, centred]), axis1], keepdims=1), n])
        std = g.node("Where", [g.node("Greater", [var, g.const("tiny", 1e-16, "float32")]), g.node("Sqrt", [var]),
                               g.const("one_f", [1.0], "float32")])
        x = g.node("Mul", [g.node("Div", [centred, std]), mask])
    p = spec.patch
    if p > 1:
        steps = g.node("Gather", [g.node("Shape", [x]), g.const("ax1", 1, "int64")])
        p_c = g.const("patch", p, "int64")
        pad = g.node("Mod", [g.node("Sub", [p_c, g.node("Mod", [steps, p_c])]), p_c])
        pads = g.node("Concat", [g.const("zeros4", [0, 0, 0, 0], "int64"),
                                 g.node("Unsqueeze", [pad, g.const("ax0s", [0], "int64")]),
                                 g.const("zeros1", [0], "int64")], axis=0)
        x = g.node("Pad", [x, pads])
        x = g.node("Reshape", [x, g.const("patch_shape", [0, -1, p * model.inputs.size], "int64")])
        lengths = g.node("Div", [g.node("Add", [lengths, g.const("patch_m1", p - 1, "int64")]), p_c])
    return x, lengths


def build_onnx(model: Any) -> Any:
    """The ONNX ``ModelProto`` of a ``SequenceModel`` or an ``EnsembleModel`` (eval-mode semantics:
    dropout off)."""
    if hasattr(model, "members"):  # an EnsembleModel
        return _ensemble_onnx(model)
    return _model_onnx(model)


def _ensemble_onnx(model: Any) -> Any:
    """One graph for an ensemble: each member's graph with its names prefixed (``m3/``, inside its
    subgraphs too: two theta members each hold a ``Scan`` body), all reading the shared ``x`` and
    ``lengths``, then the weighted average — of the members' probabilities for classification
    (``output`` is their log, as ``EnsembleModel`` returns), of their outputs otherwise."""
    from onnx import helper

    task = get_task(model.task)
    nodes, inits = [], []
    outs = []
    for k, member in enumerate(model.members):
        g = (_model_onnx(member) if hasattr(member, "spec") else reference_onnx(member)).graph
        prefix = f"m{k}/"
        nodes += [_prefixed_node(node, prefix) for node in g.node]
        for init in g.initializer:
            inits.append(_prefixed_init(init, prefix))
        outs.append(prefix + task.member_output())
    g = Graph()
    first = model.spec if model.spec is not None else model.members[0]
    n = first.n_outputs
    outputs = []
    for node_out, name in task.onnx_average(g, list(zip(outs, model.weights))):
        g.nodes.append(helper.make_node("Identity", [node_out], [name]))
        outputs.append(helper.make_tensor_value_info(name, g.FLOAT, ["batch", n]))
    return _checked_model(nodes + g.nodes, "cellsearch_ensemble", first.input_size, outputs, inits + g.inits)


#: Names every member graph reads as they are (the ensemble's inputs; "" is an omitted input).
SHARED_NAMES = frozenset({"x", "lengths", ""})


def _prefixed_init(init: Any, prefix: str) -> Any:
    import onnx

    new = onnx.TensorProto()
    new.CopyFrom(init)
    new.name = init.name if init.name in SHARED_NAMES else prefix + init.name
    return new


def _prefixed_node(node: Any, prefix: str) -> Any:
    """A copy of ``node`` with every name but the shared inputs prefixed, its subgraphs' names too."""
    import onnx

    def rename(name: str) -> str:
        return name if name in SHARED_NAMES else prefix + name

    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.input[:] = [rename(n) for n in node.input]
    new.output[:] = [rename(n) for n in node.output]
    for attr in new.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            sub = attr.g
            body = [_prefixed_node(n, prefix) for n in sub.node]
            del sub.node[:]
            sub.node.extend(body)
            for info in list(sub.input) + list(sub.output) + list(sub.value_info):
                info.name = rename(info.name)
            inits = [_prefixed_init(i, prefix) for i in sub.initializer]
            del sub.initializer[:]
            sub.initializer.extend(inits)
    return new


def _checked_model(nodes: list[Any], name: str, input_size: int, outputs: list[Any], inits: list[Any]) -> Any:
    """A checked ``ModelProto`` of ``nodes`` reading ``x`` (batch, time, ``input_size``) and
    ``lengths`` (batch): what every graph here ends with."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "time", input_size]),
         helper.make_tensor_value_info("lengths", TensorProto.INT64, ["batch"])],
        outputs, initializer=inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cellsearch")
    proto.ir_version = min(proto.ir_version, 9)
    onnx.checker.check_model(proto)
    return proto


def _resample_onnx(g: Graph, x: str, length: int, feats: int) -> str:
    """``cellsearch.refmembers.resample_torch`` in ONNX: each sequence's real steps of ``x`` linearly
    resampled to ``length`` steps (two ``GatherElements`` and a blend), flattened to (batch, length x feats)."""
    n = g.node("Max", ["lengths", g.const("one_i", 1, "int64")])
    last = g.node("Unsqueeze", [g.node("Sub", [n, g.const("one_i", 1, "int64")]), g.const("ax1s", [1], "int64")])
    pos = g.node("Mul", [g.node("Cast", [last], to=g.FLOAT),
                         g.const("grid", np.linspace(0.0, 1.0, length, dtype=np.float32)[None, :], "float32")])
    lo_f = g.node("Floor", [pos])
    lo = g.node("Cast", [lo_f], to=g.INT64)
    hi = g.node("Min", [g.node("Add", [lo, g.const("one_i", 1, "int64")]), last])
    w = g.node("Unsqueeze", [g.node("Sub", [pos, lo_f]), g.const("ax2s", [2], "int64")])
    ones = g.const("ones_i", np.ones((1, 1, feats), dtype=np.int64), "int64")

    def take(idx: str) -> str:
        full = g.node("Mul", [g.node("Unsqueeze", [idx, g.const("ax2s", [2], "int64")]), ones])
        return g.node("GatherElements", [x, full], axis=1)

    blend = g.node("Add", [g.node("Mul", [take(lo), g.node("Sub", [g.const("one_f", [1.0], "float32"), w])]),
                           g.node("Mul", [take(hi), w])])
    return g.node("Reshape", [blend, g.const("flat_shape", [0, -1], "int64")])


def _znormalise_onnx(g: Graph, x: str) -> str:
    """``cellsearch.refmembers.znormalise_torch`` in ONNX."""
    mask = g.mask(x, "lengths")
    axis1 = g.const("ax1s", [1], "int64")
    n = g.node("Reshape", [g.node("Cast", [g.node("Max", ["lengths", g.const("one_i", 1, "int64")])], to=g.FLOAT),
                           g.const("shape_b11", [-1, 1, 1], "int64")])
    mean = g.node("Div", [g.node("ReduceSum", [g.node("Mul", [x, mask]), axis1], keepdims=1), n])
    centred = g.node("Mul", [g.node("Sub", [x, mean]), mask])
    std = g.node("Sqrt", [g.node("Div", [g.node("ReduceSum", [g.node("Mul", [centred, centred]), axis1], keepdims=1),
                                         n])])
    safe = g.node("Where", [g.node("Greater", [std, g.const("tiny8", 1e-8, "float32")]), std,
                            g.const("one_f", [1.0], "float32")])
    return g.node("Mul", [g.node("Div", [centred, safe]), mask])


def _seasonal_onnx(g: Graph, season: int, horizon: int, target_index: int) -> str:
    """The seasonal naive forecast of the input windows ``x`` (``cellsearch.tasks.forecasting.seasonal_naive``):
    step h gathers the target channel at ``length - season + h mod season``; 0 (the last value, in
    window-scaled units) where a window is shorter than a season."""
    n = g.node("Unsqueeze", ["lengths", g.const("ax1s", [1], "int64")])
    idx = g.node("Max", [g.node("Add", [g.node("Sub", [n, g.const("season", season, "int64")]),
                                        g.const("h_mod", np.arange(horizon)[None, :] % season, "int64")]),
                         g.const("zero_i", 0, "int64")])
    channel = g.node("Gather", ["x", g.const("target_ch", target_index, "int64")], axis=2)
    values = g.node("GatherElements", [channel, idx], axis=1)
    return g.node("Where", [g.node("GreaterOrEqual", [n, g.const("season", season, "int64")]), values,
                            g.const("zero_f", [0.0], "float32")])


class _Local:
    """What ONNX forms of the forecasts fitted on each window share (``cellsearch.tasks.forecasting``,
    in double precision as torch computes them, for windows of any length): the target channel, the
    real lengths and steps, the seasonal adjustment (``deseasonalised``: ``Slice`` per weight of the
    moving average, a one-hot ``MatMul`` per phase, the seasonal strength; by ratio where the window's
    level channel says it is positive), the smoothing of every grid
    point at once in a ``Scan`` over the window's steps (padding left out), the grid point with the
    least error (``ArgMin``: the first of equals, as torch picks) and the seasonal index put back."""

    def __init__(self, g: Graph, member: Any, name: str) -> None:
        from onnx import TensorProto

        self.g, self.name, self.dbl, self.big = g, name, TensorProto.DOUBLE, int(np.iinfo(np.int64).max)
        self.m, self.horizon = max(1, int(member.season)), int(member.n_outputs)
        c = self.c
        y = g.node("Cast", [g.node("Gather", ["x", c("target", member.target_index, "int64")], axis=2)], to=self.dbl)
        t_len = g.node("Gather", [g.node("Shape", [y]), c("one_i", 1, "int64")])
        self.n1 = g.node("Unsqueeze", [g.node("Max", [g.node("Min", ["lengths", t_len]), c("one_i", 1, "int64")]),
                                       c("ax1s", [1], "int64")])
        self.nf = g.node("Cast", [self.n1], to=self.dbl)
        self.steps = g.node("Range", [c("zero_i", 0, "int64"), t_len, c("one_i", 1, "int64")])
        self.real = g.node("Less", [g.node("Unsqueeze", [self.steps, c("ax0s", [0], "int64")]), self.n1])
        self.real_d = g.node("Cast", [self.real], to=self.dbl)
        self.zero = c("zero", [0.0])
        self.d, self.idx, self.mult = y, None, None
        if self.m > 1:
            if int(getattr(member, "level_index", -1)) >= 0:
                self._level(y, int(member.level_index))
            self._deseasonalise(y)

    def _level(self, y: str, channel: int) -> None:
        """``cellsearch.tasks.forecasting.multiplicative``: the window's level (its first step's level
        channel, (batch, 1)), whether every real value plus it is positive (``self.mult``)
        and the level where so, else 0 (``self.lv``)."""
        g, c = self.g, self.c
        first = g.node("Gather", [g.node("Gather", ["x", c("level_ch", channel, "int64")], axis=2),
                                  c("first_step", [0], "int64")], axis=1)
        level = g.node("Cast", [first], to=self.dbl)
        positive = g.node("Or", [g.node("Greater", [g.node("Add", [y, level]), self.zero]), g.node("Not", [self.real])])
        self.mult = g.node("Equal", [g.node("ReduceMin", [g.node("Cast", [positive], to=self.dbl)], axes=[1],
                                            keepdims=1), c("one", [1.0])])
        self.lv = g.node("Where", [self.mult, level, self.zero])

    def c(self, name: str, value: Any, dtype: str = "float64") -> str:
        return self.g.const(f"{self.name}_{name}", value, dtype)

    def sl(self, x: str, start: int, end: int, axis: int = 1) -> str:
        c = self.c
        return self.g.node("Slice", [x, c(f"s{start}", [start], "int64"), c(f"e{end}", [end], "int64"),
                                     c(f"ax{axis}", [axis], "int64")])

    def rsum(self, x: str) -> str:
        return self.g.node("ReduceSum", [x, self.c("ax1s", [1], "int64")], keepdims=1)

    def _deseasonalise(self, y: str) -> None:
        """``cellsearch.tasks.forecasting.seasonal_indices`` and the values less them (``self.d``)."""
        from cellsearch.tasks.forecasting import SEASON_STRENGTH, moving_average_weights

        g, m, big, zero, n1, dbl = self.g, self.m, self.big, self.zero, self.n1, self.dbl
        c, sl, rsum = self.c, self.sl, self.rsum
        w = moving_average_weights(m)
        span, off = len(w), (len(w) - 1) // 2
        ends = [-(span - 1 - j) if span - 1 - j > 0 else big for j in range(span)]
        avg = None
        for j in range(span):
            term = g.node("Mul", [sl(y, j, ends[j]), c(f"w{j}", [w[j]])])
            avg = term if avg is None else g.node("Add", [avg, term])
        pos = sl(self.steps, off, ends[off], axis=0)
        ahead = g.node("Add", [pos, c("off", off, "int64")])
        ok = g.node("Less", [g.node("Unsqueeze", [ahead, c("ax0s", [0], "int64")]), n1])
        detrended = g.node("Where", [ok, g.node("Sub", [sl(y, off, ends[off]), avg]), zero])
        if self.mult is not None:  # the ratio less 1 where multiplicative
            base = g.node("Where", [g.node("And", [ok, self.mult]), g.node("Add", [avg, self.lv]), c("one", [1.0])])
            detrended = g.node("Where", [self.mult, g.node("Div", [detrended, base]), detrended])
        phases = c("phases", np.arange(m)[None, :], "int64")

        def one_hot(at: str) -> str:
            return g.node("Cast", [g.node("Equal", [g.node("Unsqueeze", [g.node("Mod", [at, c("m", m, "int64")]),
                                                                          c("ax1s", [1], "int64")]), phases])], to=dbl)

        pos_hot = one_hot(pos)
        sums = g.node("MatMul", [detrended, pos_hot])
        counts = g.node("MatMul", [g.node("Cast", [ok], to=dbl), pos_hot])
        idx = g.node("Div", [sums, g.node("Max", [counts, c("one", [1.0])])])
        idx = g.node("Sub", [idx, g.node("ReduceMean", [idx], axes=[1], keepdims=1)])
        okf = g.node("Cast", [ok], to=dbl)
        count = g.node("Max", [rsum(okf), c("one", [1.0])])
        left = g.node("Where", [ok, g.node("Sub", [detrended, g.node("MatMul", [idx, g.node("Transpose", [pos_hot])])]),
                                zero])

        def squares(v: str) -> str:
            dev = g.node("Mul", [g.node("Sub", [v, g.node("Div", [rsum(g.node("Mul", [v, okf])), count])]), okf])
            return rsum(g.node("Mul", [dev, dev]))

        def free(lost: float) -> str:  # degrees of freedom, at least 1
            return g.node("Max", [g.node("Sub", [count, c(f"lost{lost}", [lost])]), c("one", [1.0])])

        spread = g.node("Div", [squares(detrended), free(1.0)])
        rest = g.node("Div", [squares(left), free(float(m))])
        seasonal = g.node("And", [g.node("And", [
            g.node("GreaterOrEqual", [n1, c("three_m", 3 * m, "int64")]), g.node("Greater", [spread, zero])]),
            g.node("Less", [rest, g.node("Mul", [spread, c("kept", [1 - SEASON_STRENGTH])])])])
        self.idx = g.node("Where", [seasonal, idx, zero])
        self.d = self._adjust(y, g.node("MatMul", [self.idx, g.node("Transpose", [one_hot(self.steps)])]), True)

    def _adjust(self, v: str, at: str, out: bool) -> str:
        """``v`` with its seasonal indices ``at`` taken out (``out``) or put back: by difference, or by
        ratio in the series' own units where multiplicative."""
        g, one = self.g, self.c("one", [1.0])
        added = g.node("Sub" if out else "Add", [v, at])
        if self.mult is None:
            return added
        own = g.node("Add", [v, self.lv])
        factor = g.node("Add", [one, at])
        scaled = g.node("Div" if out else "Mul", [own, factor])
        return g.node("Where", [self.mult, g.node("Sub", [scaled, self.lv]), added])

    def scan(self, states: list[tuple[str, str]], constants: dict[str, np.ndarray],
             body: list[tuple[str, list[str], str]]) -> dict[str, str]:
        """A ``Scan`` over steps 1.. of the adjusted values (``v``, each (batch,) as ``v1`` (batch, 1)) and
        whether each is real (``live1``): ``states`` (name, initial value (batch, grid)) carried, each
        updated only at real steps to the body's value named ``name + "_new"``; ``constants`` (1, grid)
        and ``body`` (op, inputs, output) in the body's names. The states' final values by name."""
        from onnx import TensorProto, helper

        dbl, p = self.dbl, f"{self.name}_body/"
        width = next(iter(constants.values())).shape[1]
        nodes = [helper.make_node("Constant", [], [p + k], value=helper.make_tensor(p + k + "_t", dbl, list(v.shape),
                                                                                    v.ravel().tolist()))
                 for k, v in constants.items()]
        nodes += [helper.make_node("Constant", [], [p + "ax1"], value=helper.make_tensor(p + "ax1_t", TensorProto.INT64,
                                                                                         [1], [1])),
                  helper.make_node("Unsqueeze", [p + "v", p + "ax1"], [p + "v1"]),
                  helper.make_node("Unsqueeze", [p + "live", p + "ax1"], [p + "live1"])]
        nodes += [helper.make_node(op, [p + i for i in inputs], [p + out]) for op, inputs, out in body]
        nodes += [helper.make_node("Where", [p + "live1", p + k + "_new", p + k], [p + k + "_out"]) for k, _ in states]
        graph = helper.make_graph(
            nodes, f"{self.name}_smoothing",
            [*(helper.make_tensor_value_info(p + k, dbl, ["batch", width]) for k, _ in states),
             helper.make_tensor_value_info(p + "v", dbl, ["batch"]),
             helper.make_tensor_value_info(p + "live", TensorProto.BOOL, ["batch"])],
            [helper.make_tensor_value_info(p + k + "_out", dbl, ["batch", width]) for k, _ in states])
        # one padding step after the window (never live): a Scan over no steps stops onnxruntime (a window
        # of one step)
        g, nothing = self.g, self.g.node("Mul", [self.sl(self.d, 0, 1), self.zero])
        values = g.node("Concat", [self.d, nothing], axis=1)
        live = g.node("Concat", [self.real, g.node("Cast", [nothing], to=TensorProto.BOOL)], axis=1)
        out = f"n{len(self.g.nodes)}_Scan"
        self.g.nodes.append(helper.make_node(
            "Scan", [init for _, init in states] + [self.sl(values, 1, self.big), self.sl(live, 1, self.big)],
            [f"{out}_{k}" for k, _ in states], body=graph, num_scan_inputs=2, scan_input_axes=[1, 1]))
        return {k: f"{out}_{k}" for k, _ in states}

    def grid_start(self, value: str, width: int) -> str:
        """(batch, ``width``): ``value`` (batch, 1) repeated for every grid point."""
        return self.g.node("Mul", [value, self.c(f"ones{width}", np.ones((1, width)))])

    def output(self, forecast: str) -> str:
        """The forecast (batch, horizon) with each step's seasonal index added back, as float."""
        g, c = self.g, self.c
        if self.idx is not None:
            phase = g.node("Mod", [g.node("Add", [g.node("Sub", [self.n1, c("one_i", 1, "int64")]),
                                                  c("h_i", np.arange(1, self.horizon + 1)[None, :], "int64")]),
                                   c("m", self.m, "int64")])
            forecast = self._adjust(forecast, g.node("GatherElements", [self.idx, phase], axis=1), False)
        return g.node("Cast", [forecast], to=g.FLOAT)


def _theta_onnx(g: Graph, member: Any) -> str:
    """``cellsearch.tasks.forecasting.theta_forecast`` in ONNX (``_Local``): the smoothing for every
    weight, the one with the least error, the least-squares slope and the drift."""
    from cellsearch.tasks.forecasting import THETA_ALPHAS

    w = _Local(g, member, "theta")
    c, d, nf, real_d = w.c, w.d, w.nf, w.real_d
    alphas = np.asarray(THETA_ALPHAS, dtype=np.float64)[None, :]
    start = w.grid_start(w.sl(d, 0, 1), alphas.shape[1])
    final = w.scan([("level", start), ("sse", g.node("Mul", [start, w.zero]))], {"alphas": alphas},
                   [("Sub", ["v1", "level"], "err"), ("Mul", ["err", "err"], "err2"),
                    ("Add", ["sse", "err2"], "sse_new"), ("Mul", ["alphas", "err"], "step"),
                    ("Add", ["level", "step"], "level_new")])
    best = g.node("ArgMin", [final["sse"]], axis=1, keepdims=1)
    level = g.node("GatherElements", [final["level"], best], axis=1)
    alpha = g.node("Gather", [c("alphas", alphas[0]), best])  # (batch, 1)
    steps_d = g.node("Unsqueeze", [g.node("Cast", [w.steps], to=w.dbl), c("ax0s", [0], "int64")])
    middle = g.node("Div", [g.node("Sub", [nf, c("one", [1.0])]), c("two", [2.0])])
    tc = g.node("Mul", [g.node("Sub", [steps_d, middle]), real_d])
    dc = g.node("Mul", [g.node("Sub", [d, g.node("Div", [w.rsum(g.node("Mul", [d, real_d])), nf])]), real_d])
    spread = g.node("Max", [w.rsum(g.node("Mul", [tc, tc])), c("eps", [1e-12])])
    slope = g.node("Div", [w.rsum(g.node("Mul", [tc, dc])), spread])
    h = c("h", np.arange(1, w.horizon + 1, dtype=np.float64)[None, :])
    keep = g.node("Sub", [c("one", [1.0]), alpha])
    bracket = g.node("Sub", [g.node("Add", [g.node("Sub", [h, c("one", [1.0])]), g.node("Reciprocal", [alpha])]),
                             g.node("Div", [g.node("Pow", [keep, nf]), alpha])])
    return w.output(g.node("Add", [level, g.node("Mul", [g.node("Div", [slope, c("two", [2.0])]), bracket])]))


def _damped_onnx(g: Graph, member: Any) -> str:
    """``cellsearch.tasks.forecasting.damped_forecast`` in ONNX (``_Local``): level and trend for every
    grid point, the one with the least error, the damped sum of its trend."""
    from cellsearch.tasks.forecasting import damped_grid

    w = _Local(g, member, "damped")
    c, d = w.c, w.d
    grid = np.asarray(damped_grid(), dtype=np.float64)
    alpha, phi = grid[None, :, 0], grid[None, :, 2]
    level = w.grid_start(w.sl(d, 0, 1), len(grid))
    padded = g.node("Concat", [d, g.node("Mul", [w.sl(d, 0, 1), w.zero])], axis=1)  # a second step, if only padding
    first = g.node("Where", [g.node("GreaterOrEqual", [w.n1, c("two_i", 2, "int64")]),
                             g.node("Sub", [w.sl(padded, 1, 2), w.sl(d, 0, 1)]), w.zero])
    final = w.scan([("level", level), ("trend", w.grid_start(first, len(grid))),
                    ("sse", g.node("Mul", [level, w.zero]))],
                   {"alpha": alpha, "phi": phi, "alpha_beta": alpha * grid[None, :, 1]},
                   [("Mul", ["phi", "trend"], "pt"), ("Add", ["level", "pt"], "ahead"), ("Sub", ["v1", "ahead"], "err"),
                    ("Mul", ["err", "err"], "err2"), ("Add", ["sse", "err2"], "sse_new"),
                    ("Mul", ["alpha", "err"], "ae"), ("Add", ["ahead", "ae"], "level_new"),
                    ("Mul", ["alpha_beta", "err"], "be"), ("Add", ["pt", "be"], "trend_new")])
    best = g.node("ArgMin", [final["sse"]], axis=1, keepdims=1)
    powers = g.node("Pow", [g.node("Gather", [c("phis", grid[:, 2]), best]),  # (batch, 1) ** (1, horizon)
                            c("h", np.arange(1, w.horizon + 1, dtype=np.float64)[None, :])])
    damping = g.node("CumSum", [powers, c("ax1", 1, "int64")])
    trend = g.node("GatherElements", [final["trend"], best], axis=1)
    return w.output(g.node("Add", [g.node("GatherElements", [final["level"], best], axis=1),
                                   g.node("Mul", [damping, trend])]))


def _drift_onnx(g: Graph, member: Any) -> str:
    """``cellsearch.tasks.forecasting.drift_forecast`` in ONNX (``_Local``): the last real adjusted
    value and the mean step from the first to it."""
    w = _Local(g, member, "drift")
    c = w.c
    last = g.node("GatherElements", [w.d, g.node("Sub", [w.n1, c("one_i", 1, "int64")])], axis=1)
    steps = g.node("Max", [g.node("Sub", [w.nf, c("one", [1.0])]), c("one", [1.0])])
    slope = g.node("Div", [g.node("Sub", [last, w.sl(w.d, 0, 1)]), steps])
    h = c("h", np.arange(1, w.horizon + 1, dtype=np.float64)[None, :])
    return w.output(g.node("Add", [last, g.node("Mul", [slope, h])]))


def reference_onnx(member: Any) -> Any:
    """The ONNX ``ModelProto`` of a reference member (``cellsearch.refmembers``): ridge (resample,
    one ``Gemm``) or 1-NN (z-normalise, resample, the distances to the stored sequences by one
    ``MatMul``, a softmax, the stored labels' average); classification's temperature and log after.
    Raises ``UnsupportedFormatError`` for a member kind it does not know."""
    from onnx import helper

    from cellsearch.errors import UnsupportedFormatError

    kind = getattr(member, "kind", None)
    if kind not in ("ridge", "1nn", "tfidf", "rocket", *FORECASTS):
        raise UnsupportedFormatError(f"member {getattr(member, 'arch', type(member).__name__)} has no ONNX form")
    g = Graph()
    length, feats = member.length, member.input_size
    task = get_task(member.task)
    if kind in FORECASTS:
        out = _forecast_onnx(g, member)
    elif kind == "rocket":
        out = g.node("Gemm", [_rocket_onnx(g, member),
                              g.const("rocket_W", member.linear.weight.detach().cpu().numpy(), "float32"),
                              g.const("rocket_b", member.linear.bias.detach().cpu().numpy(), "float32")], transB=1)
        if task.labels:
            out = g.node("LogSoftmax", [g.node("Mul", [out, g.const("temperature", [member.temperature], "float32")])],
                         axis=1)
    elif kind == "tfidf":
        out = _tfidf_onnx(g, member)
        if task.labels:
            out = g.node("LogSoftmax", [g.node("Mul", [out, g.const("temperature", [member.temperature], "float32")])],
                         axis=1)
    elif kind == "ridge":
        flat = _resample_onnx(g, "x", length, feats)
        weight = member.linear.weight.detach().cpu().numpy().astype(np.float32)
        bias = member.linear.bias.detach().cpu().numpy().astype(np.float32)
        out = g.node("Gemm", [flat, g.const("ridge_W", weight, "float32"), g.const("ridge_b", bias, "float32")],
                     transB=1)
        if task.labels:
            out = g.node("LogSoftmax", [g.node("Mul", [out, g.const("temperature", [member.temperature], "float32")])],
                         axis=1)
    else:
        q = _resample_onnx(g, _znormalise_onnx(g, "x"), length, feats)
        bank = member.bank.detach().cpu().numpy().astype(np.float32)
        sq = g.node("ReduceSum", [g.node("Mul", [q, q]), g.const("ax1s", [1], "int64")], keepdims=1)
        cross = g.node("MatMul", [q, g.const("bank_T", bank.T.copy(), "float32")])
        twice = g.node("Mul", [cross, g.const("two_f", [2.0], "float32")])
        d2 = g.node("Max", [g.node("Add", [g.node("Sub", [sq, twice]),
                                           g.const("bank_sq", (bank * bank).sum(1)[None, :], "float32")]),
                            g.const("zero_f", [0.0], "float32")])
        scale = -member.temperature / (length * feats)
        w = g.node("Softmax", [g.node("Mul", [d2, g.const("nn_scale", [scale], "float32")])], axis=1)
        values = member.values.detach().cpu().numpy().astype(np.float32)
        out = g.node("MatMul", [w, g.const("nn_values", values, "float32")])
        if task.labels:
            from cellsearch.refmembers import NN_FLOOR

            out = g.node("Log", [g.node("Add", [g.node("Mul", [out, g.const("nn_keep", [1 - NN_FLOOR], "float32")]),
                                                g.const("nn_floor", [NN_FLOOR / member.n_outputs], "float32")])])
    g.nodes.append(helper.make_node("Identity", [out], ["output"]))
    outputs = [helper.make_tensor_value_info("output", g.FLOAT, ["batch", member.n_outputs])]
    for node_out, name in task.onnx_head(g, "output"):
        g.nodes.append(helper.make_node("Identity", [node_out], [name]))
        outputs.append(helper.make_tensor_value_info(name, g.FLOAT, ["batch", member.n_outputs]))
    return _checked_model(g.nodes, "cellsearch_reference", feats, outputs, g.inits)


def _rocket_onnx(g: Graph, member: Any) -> str:
    """``RocketMember.features`` in ONNX, standardised: the sequences zeroed after their ends, one
    ``Conv`` per dilation (zero padded, "same"), each kernel's proportion of positive values and its
    maximum over the real steps."""
    from cellsearch.refmembers import ROCKET_WIDTH

    mask = g.mask("x", "lengths")  # (B, T, 1)
    xt = g.node("Transpose", [g.node("Mul", ["x", mask])], perm=[0, 2, 1])
    convs = []
    for d, idx in member.groups():
        w = member.kernels[idx].detach().cpu().numpy()
        b = member.bias[idx].detach().cpu().numpy()
        pad = (ROCKET_WIDTH // 2) * d
        weights = [g.const(f"rocket_k{d}", w, "float32"), g.const(f"rocket_bias{d}", b, "float32")]
        convs.append(g.node("Conv", [xt, *weights], dilations=[d], pads=[pad, pad], kernel_shape=[ROCKET_WIDTH]))
    conv = g.node("Concat", convs, axis=1) if len(convs) > 1 else convs[0]  # (B, K, T)
    real = g.node("Transpose", [mask], perm=[0, 2, 1])  # (B, 1, T)
    axis2 = g.const("ax2s", [2], "int64")
    n = g.node("Unsqueeze", [g.node("Cast", [g.node("Max", ["lengths", g.const("one_i", 1, "int64")])], to=g.FLOAT),
                             g.const("ax1s", [1], "int64")])
    positive = g.node("Mul", [g.node("Cast", [g.node("Greater", [conv, g.const("zero_f", [0.0], "float32")])],
                                     to=g.FLOAT), real])
    ppv = g.node("Div", [g.node("ReduceSum", [positive, axis2], keepdims=0), n])
    inside = g.node("Cast", [real], to=g.BOOL)
    top = g.node("ReduceMax", [g.node("Where", [inside, conv, g.const("minus_inf", [-np.inf], "float32")])],
                 axes=[2], keepdims=0)  # opset 17: axes an attribute
    top = g.node("Where", [g.node("IsInf", [top]), g.const("zero_f", [0.0], "float32"), top])
    feats = g.node("Concat", [ppv, top], axis=1)
    mean = member.mean.detach().cpu().numpy()
    std = member.safe_std().detach().cpu().numpy()
    return g.node("Div", [g.node("Sub", [feats, g.const("rocket_mean", mean, "float32")]),
                          g.const("rocket_std", std, "float32")])


def _tfidf_onnx(g: Graph, member: Any) -> str:
    """``TfidfMember`` in ONNX, before its softmax: word pieces and the pairs of ``x`` that its table of
    pairs holds, their counts per document by one ``Unique`` over (document, feature) keys, the
    sublinear TF-IDF weights scaled to unit length, and the weighted sum of the features' rows of the
    linear map."""
    from onnx import helper

    from cellsearch.data.encoders.text import onnx_kept_ids
    from cellsearch.refmembers import PAIR_PRIME

    ids = onnx_kept_ids(g, "x", member.vocab, member.unk, "tf")
    big = g.const("tf_end", [2 ** 62], "int64")
    first = g.node("Slice", [ids, g.const("tf_0", [0], "int64"), g.const("tf_m1", [-1], "int64"),
                             g.const("ax1s", [1], "int64")])
    second = g.node("Slice", [ids, g.const("tf_1", [1], "int64"), big, g.const("ax1s", [1], "int64")])
    prime, buckets = g.const("tf_prime", PAIR_PRIME, "int64"), g.const("tf_buckets", member.buckets, "int64")
    slot1 = g.node("Mod", [g.node("Add", [g.node("Mul", [first, prime]), second]), buckets])
    slot2 = g.node("Mod", [g.node("Add", [g.node("Add", [g.node("Mul", [second, prime]), first]),
                                          g.const("one_i", 1, "int64")]), buckets])
    key = g.node("Add", [g.node("Mul", [first, g.const("tf_vocab", member.vocab, "int64")]), second])
    table = g.const("tf_pair_keys", member.pair_keys.detach().cpu().numpy().astype(np.int64), "int64")
    slot = g.node("Where", [g.node("Equal", [g.node("Gather", [table, slot1]), key]), slot1, slot2])
    known = g.node("Equal", [g.node("Gather", [table, slot]), key])
    pairs = g.node("Add", [slot, g.const("tf_vocab", member.vocab, "int64")])
    feats = g.node("Concat", [ids, pairs], axis=1)
    steps = g.node("Gather", [g.node("Shape", [ids]), g.const("one_i", 1, "int64")])
    lengths = g.node("Unsqueeze", ["lengths", g.const("ax1s", [1], "int64")])
    real = g.node("Concat", [
        g.node("Less", [g.node("Unsqueeze", [g.node("Range", [g.const("zero_i", 0, "int64"), steps,
                                                              g.const("one_i", 1, "int64")]),
                                             g.const("ax0s", [0], "int64")]), lengths]),
        g.node("And", [g.node("Less", [g.node("Unsqueeze", [g.node("Range", [g.const("one_i", 1, "int64"), steps,
                                                                            g.const("one_i", 1, "int64")]),
                                                           g.const("ax0s", [0], "int64")]), lengths]), known])],
        axis=1)
    rows = g.node("Range", [g.const("zero_i", 0, "int64"),
                            g.node("Gather", [g.node("Shape", [ids]), g.const("zero_i", 0, "int64")]),
                            g.const("one_i", 1, "int64")])
    keys = g.node("Add", [g.node("Mul", [g.node("Unsqueeze", [rows, g.const("ax1s", [1], "int64")]),
                                         g.const("tf_width", member.vocab + member.buckets, "int64")]), feats])
    keys = g.node("Where", [real, keys, g.const("tf_pad", -1, "int64")])
    flat = g.node("Reshape", [keys, g.const("tf_flat", [-1], "int64")])
    names = [f"tf_unique_{k}" for k in range(4)]
    g.nodes.append(helper.make_node("Unique", [flat], names, sorted=1))
    tf = g.node("Cast", [g.node("Reshape", [g.node("Gather", [names[3], names[2]]), g.node("Shape", [keys])])],
                to=g.FLOAT)
    idf = member.idf.detach().cpu().numpy().astype(np.float32)
    each = g.node("Mul", [g.node("Add", [g.const("one_f", [1.0], "float32"), g.node("Log", [tf])]),
                          g.node("Gather", [g.const("tf_idf", idf, "float32"), feats])])
    realf = g.node("Cast", [real], to=g.FLOAT)
    norm = g.node("Max", [g.node("Sqrt", [g.node("ReduceSum", [
        g.node("Mul", [g.node("Div", [g.node("Mul", [each, each]), tf]), realf]), g.const("ax1s", [1], "int64")],
        keepdims=1)]), g.const("tf_eps", [1e-12], "float32")])
    w = g.node("Div", [g.node("Mul", [g.node("Div", [each, tf]), realf]), norm])
    table = member.weight.detach().cpu().numpy().astype(np.float32)
    rows_w = g.node("Gather", [g.const("tf_W", table, "float32"), feats])
    summed = g.node("ReduceSum", [g.node("Mul", [g.node("Unsqueeze", [w, g.const("ax2s", [2], "int64")]), rows_w]),
                                  g.const("ax1s", [1], "int64")], keepdims=0)
    return g.node("Add", [summed, g.const("tf_b", member.bias.detach().cpu().numpy().astype(np.float32), "float32")])


def _forecast_onnx(g: Graph, member: Any) -> str:
    """The forecast of a forecasting reference member (``FORECASTS``) read from ``x``: as the
    member's own graph and as a model's base (``SequenceModel.base_member``)."""
    return FORECASTS[member.kind](g, member)


def _repeat_onnx(g: Graph, member: Any) -> str:
    """The naive and seasonal naive members: the value a season back (``_seasonal_onnx``)."""
    return _seasonal_onnx(g, member.season, member.n_outputs, member.target_index)


#: The forecasting members' ONNX forms by kind (``cellsearch.refmembers``).
FORECASTS = {"naive": _repeat_onnx, "seasonal_naive": _repeat_onnx, "theta": _theta_onnx, "damped": _damped_onnx,
             "drift": _drift_onnx}


def _model_onnx(model: Any) -> Any:
    """The ONNX ``ModelProto`` of one ``SequenceModel``."""
    from onnx import TensorProto, helper

    spec = model.spec
    g = Graph()
    nodes = g.nodes

    def const(name: str, arr: np.ndarray) -> str:
        return g.const(name, arr, np.asarray(arr).dtype.name)

    x, lengths = _prepare(g, model)
    nodes.append(helper.make_node("Transpose", [x], ["x_tbf"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Cast", [lengths], ["seq_lens"], to=TensorProto.INT32))
    current = "x_tbf"
    last_h = ""
    for k, layer in enumerate(model.stack.layers):
        cells = [layer.fwd] + ([layer.bwd] if layer.bwd is not None else [])
        y, y_h = type(layer.fwd).onnx_layer(g, cells, current, "seq_lens", f"l{k}")
        # (T, D, B, H) -> (T, B, D*H): directions side by side, as the stack concatenates them.
        nodes.append(helper.make_node("Transpose", [y], [f"l{k}_Yt"], perm=[0, 2, 1, 3]))
        shape = const(f"l{k}_shape", np.array([0, 0, -1], dtype=np.int64))
        nodes.append(helper.make_node("Reshape", [f"l{k}_Yt", shape], [f"l{k}_out"]))
        current = f"l{k}_out"
        last_h = y_h
    # The final states (forward: last real step; backward: first step), then the pooling's own nodes.
    nodes.append(helper.make_node("Transpose", [last_h], ["h_bdh"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Reshape", ["h_bdh", const("h_shape", np.array([0, -1], dtype=np.int64))],
                                  ["last"]))
    y = g.node("Transpose", [current], perm=[1, 0, 2])
    float_lengths = g.node("Unsqueeze", [g.node("Cast", [lengths], to=g.FLOAT), g.const("ax1s", [1], "int64")])
    features = model.pool.onnx(g, y, "last", g.mask(y, lengths), float_lengths)
    w = model.head.weight.detach().cpu().numpy().astype(np.float32)
    b = model.head.bias.detach().cpu().numpy().astype(np.float32)
    head = "output" if not spec.season else "head_out"
    nodes.append(helper.make_node("Gemm", [features, const("head_W", w), const("head_b", b)], [head], transB=1))
    if spec.season:  # the forecast the outputs correct, as SequenceModel.forecast_base computes it
        nodes.append(helper.make_node("Add", [head, _forecast_onnx(g, model.base_member)], ["output"]))
    outputs = [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", spec.n_outputs])]
    for node_out, name in get_task(spec.task).onnx_head(g, "output"):
        nodes.append(helper.make_node("Identity", [node_out], [name]))
        outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", spec.n_outputs]))
    return _checked_model(nodes, "cellsearch", spec.input_size, outputs, g.inits)


def export_onnx(model: Any, path: str | Path) -> Path:
    """Write ``model.onnx``; returns its path."""
    try:
        import onnx
    except ImportError:
        from cellsearch.errors import UserError

        raise UserError("--onnx needs the onnx package: pip install 'cellsearch[onnx]'") from None

    path = Path(path)
    onnx.save(build_onnx(model), str(path))
    return path
