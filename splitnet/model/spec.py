"""The layer spec: a model as data, with shapes, parameters and FLOPs inferred from it.

Pure Python: no torch, no processes. Every other part of splitnet reads a
``ModelSpec``; nothing else parses the YAML.

Output sizes follow PyTorch's floor rule, ``out = floor((in + 2*pad - kernel) / stride) + 1``.
The paper quotes 224x224 inputs, but with conv1's 11x11 kernel at stride 4 that
gives 54.25; cuda-convnet2 and torchvision pad conv1 by 2, which gives the paper's
55x55 feature map: (224 + 4 - 11) // 4 + 1 = 55.

A pool with ``ceil: true`` rounds up instead, as cuda-convnet's pooling layers do
(``ceil((in - kernel) / stride) + 1`` outputs), and like torch's ``ceil_mode`` drops a
last window that would start beyond the padded input.

FLOPs are forward FLOPs per sample: a multiply-add counts 2, a bias add 1 per
output element, relu and dropout 1 per element, LRN (2 * size + 3) per element,
rnorm (2 * size^2 + 3) per element, max- and average-pool kernel^2 per output
element, flatten 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from splitnet.errors import SplitnetError

OPS = ("conv", "linear", "relu", "lrn", "rnorm", "maxpool", "avgpool", "dropout", "flatten")
WEIGHTED = ("conv", "linear")
CONNECT = ("group", "full")
DROPOUT_SCALES = ("train", "test")

# Keys each op accepts, with defaults (None = required).
_KEYS: dict[str, dict[str, Any]] = {
    "conv": {"out": None, "kernel": None, "stride": 1, "pad": 0, "connect": "full",
             "groups": 0, "bias_init": 0.0, "std": None},
    "linear": {"out": None, "connect": "full", "groups": 0, "bias_init": 0.0, "std": None},
    "relu": {},
    "lrn": {"size": None, "alpha": 1e-4, "beta": 0.75, "k": 1.0},
    # cuda-convnet's ``rnorm``: within each map over size x size neighbourhoods (see layers.RNorm)
    "rnorm": {"size": None, "alpha": None, "beta": 0.75, "k": 1.0},
    "maxpool": {"kernel": None, "stride": 0, "pad": 0, "ceil": False},
    "avgpool": {"kernel": None, "stride": 0, "pad": 0, "ceil": False},
    # scale: train divides kept units by 1 - p in training (inverted dropout); test keeps them
    # as they are and multiplies every output by 1 - p at test time (the paper's section 4.2)
    "dropout": {"p": 0.5, "scale": "train"},
    "flatten": {},
}
_MODEL_KEYS = ("name", "input", "groups", "init_std", "layers")


class SpecError(SplitnetError, ValueError):
    """A model spec that cannot be built; the message names the layer and the fix."""


@dataclass(frozen=True)
class Layer:
    """One layer as the user wrote it, plus what the loader inferred.

    ``groups`` is the layer's channel-group count: its own for conv/linear, inherited
    from its input for weightless ops. Shapes are (C, H, W); a flattened or linear
    activation is (features, 1, 1).
    """

    name: str
    op: str
    out: int = 0
    kernel: int = 0
    stride: int = 1
    pad: int = 0
    connect: str | None = None
    groups: int = 1
    bias_init: float = 0.0
    std: float | str | None = None
    p: float = 0.0
    scale: str = "train"
    ceil: bool = False
    size: int = 0
    alpha: float = 0.0
    beta: float = 0.0
    k: float = 0.0
    in_shape: tuple[int, int, int] = (0, 0, 0)
    out_shape: tuple[int, int, int] = (0, 0, 0)
    in_groups: int = 1
    flat: bool = False      # the output is a (features,) vector per sample, not a C x H x W map
    params: int = 0
    flops: int = 0

    @property
    def weighted(self) -> bool:
        return self.op in WEIGHTED

    @property
    def in_per_group(self) -> int:
        """Input channels one output channel reads (the weight's second dimension)."""
        c_in = self.in_shape[0]
        return c_in // self.groups if self.connect == "group" else c_in

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.op == "conv":
            return (self.out, self.in_per_group, self.kernel, self.kernel)
        if self.op == "linear":
            return (self.out, self.in_per_group)
        return ()

    def to_dict(self) -> dict[str, Any]:
        """The user-facing keys only (what a YAML file would hold)."""
        d: dict[str, Any] = {"name": self.name, "op": self.op}
        for key in _KEYS[self.op]:
            d[key] = getattr(self, key)
        return d


@dataclass(frozen=True)
class ModelSpec:
    name: str
    input_channels: int
    input_size: int
    groups: int
    init_std: float | str
    layers: tuple[Layer, ...] = field(default_factory=tuple)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_channels, self.input_size, self.input_size)

    @property
    def total_params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def total_flops(self) -> int:
        return sum(layer.flops for layer in self.layers)

    @property
    def num_classes(self) -> int:
        return self.layers[-1].out_shape[0]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise SpecError(f"model {self.name!r} has no layer {name!r}; layers: "
                        + ", ".join(layer.name for layer in self.layers))

    def index(self, name: str) -> int:
        return self.layers.index(self.layer(name))

    def std_of(self, layer: Layer) -> float:
        """The initial weights' standard deviation: N(0, 0.01) in the paper; 'he' = sqrt(2/fan_in)."""
        std = layer.std if layer.std is not None else self.init_std
        if std == "he":
            fan_in = layer.in_per_group * (layer.kernel**2 if layer.op == "conv" else 1)
            return (2.0 / fan_in) ** 0.5
        return float(std)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "input": {"channels": self.input_channels, "size": self.input_size},
            "groups": self.groups,
            "init_std": self.init_std,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelSpec:
        return load_spec(d)


def _err(index: int, name: str, message: str) -> SpecError:
    return SpecError(f"layer {name!r} (#{index}): {message}")


def _positive_int(value: Any, index: int, name: str, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(index, name, f"{key}={value!r} must be an integer >= {minimum}")
    return value


def _out_size(size: int, kernel: int, stride: int, pad: int, index: int, name: str, ceil: bool = False) -> int:
    if kernel > size + 2 * pad:
        raise _err(index, name, f"kernel={kernel} is larger than its padded input "
                   f"{size}+2*{pad}={size + 2 * pad}; use kernel <= {size + 2 * pad} or more pad")
    out = (size + 2 * pad - kernel) // stride + 1
    if ceil:
        out = -(-(size + 2 * pad - kernel) // stride) + 1
        if (out - 1) * stride >= size + pad:  # torch's rule: no window starts in the right padding
            out -= 1
    if out <= 0:
        raise _err(index, name, f"output size {out} is not positive")
    return out


def load_spec(raw: Mapping[str, Any]) -> ModelSpec:
    """Validate a spec (a plain mapping, e.g. from YAML) and infer every layer's shapes."""
    if not isinstance(raw, Mapping):
        raise SpecError(f"a model spec is a mapping with keys {_MODEL_KEYS}, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_MODEL_KEYS))
    if unknown:
        raise SpecError(f"model spec: unknown key(s) {unknown}; valid keys: {list(_MODEL_KEYS)}")
    name = str(raw.get("name", "model"))
    inp = raw.get("input")
    if not isinstance(inp, Mapping) or "channels" not in inp or "size" not in inp:
        raise SpecError(f"model {name!r}: 'input' must be {{channels: C, size: S}}, got {inp!r}")
    channels = _positive_int(inp["channels"], -1, "input", "channels")
    size = _positive_int(inp["size"], -1, "input", "size")
    default_groups = _positive_int(raw.get("groups", 1), -1, "model", "groups")
    init_std = raw.get("init_std", 0.01)
    if init_std != "he" and (not isinstance(init_std, (int, float)) or init_std < 0):
        raise SpecError(f"model {name!r}: init_std={init_std!r} must be a number >= 0 or 'he'")
    raw_layers = raw.get("layers")
    if not isinstance(raw_layers, Sequence) or isinstance(raw_layers, str) or not raw_layers:
        raise SpecError(f"model {name!r}: 'layers' must be a non-empty list of layers")

    shape = (channels, size, size)
    groups = 1  # the input image is one group, replicated on every device
    flat = False
    seen: set[str] = set()
    layers: list[Layer] = []
    for i, item in enumerate(raw_layers):
        layer = _load_layer(i, item, shape, groups, default_groups, seen, flat)
        layers.append(layer)
        shape, groups, flat = layer.out_shape, layer.groups, layer.flat
    return ModelSpec(name, channels, size, default_groups, init_std, tuple(layers))


def _number(value: Any, index: int, name: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _err(index, name, f"{key}={value!r} must be a number")
    return float(value)


def _load_layer(i: int, item: Any, shape: tuple[int, int, int], in_groups: int,
                default_groups: int, seen: set[str], flat: bool) -> Layer:
    if not isinstance(item, Mapping):
        raise SpecError(f"layer #{i}: expected a mapping with 'name' and 'op', got {item!r}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise SpecError(f"layer #{i}: missing 'name' (a non-empty string)")
    if not name.isidentifier() or name.startswith("_"):
        raise SpecError(f"layer #{i}: name {name!r} must be an identifier (letters, digits, underscores; "
                        "not starting with a digit or underscore), since it names the layer's parameters")
    if name in seen:
        raise _err(i, name, "duplicate layer name; every layer needs its own name")
    if name in ("loss", "replicas", "conv_grads"):
        raise _err(i, name, "this name is reserved for the plan's pseudo-layers; rename it")
    seen.add(name)
    op = item.get("op")
    if op not in OPS:
        raise _err(i, name, f"unknown op {op!r}; valid ops: {', '.join(OPS)}")
    allowed = _KEYS[op]
    unknown = sorted(set(item) - set(allowed) - {"name", "op"})
    if unknown:
        hint = ""
        if "connect" in unknown and op not in WEIGHTED:
            hint = f" ('connect' only applies to layers with weights: {', '.join(WEIGHTED)})"
        raise _err(i, name, f"unknown key(s) {unknown} for op {op!r}; valid keys: "
                   f"{sorted(allowed) or 'none besides name and op'}{hint}")
    values = {key: item.get(key, default) for key, default in allowed.items()}
    missing = [key for key, v in values.items() if v is None and key != "std"]
    if missing:
        raise _err(i, name, f"op {op!r} needs {', '.join(missing)}")

    c, h, w = shape
    fields: dict[str, Any] = {"name": name, "op": op, "in_shape": shape, "in_groups": in_groups, "flat": flat}
    if flat and op in ("conv", "maxpool", "avgpool", "rnorm"):
        raise _err(i, name, f"{op} needs a C x H x W input, but its input is flat (after a flatten or "
                   "linear layer); move it before the flatten")
    if op == "conv" or op == "linear":
        out = _positive_int(values["out"], i, name, "out")
        groups = values["groups"] or default_groups
        groups = _positive_int(groups, i, name, "groups")
        connect = values["connect"]
        if connect not in CONNECT:
            raise _err(i, name, f"connect={connect!r}; valid: group, full")
        if connect == "group":
            # a connecting layer's width need not divide its groups (the shards may be uneven);
            # a group layer's towers must be equal
            if out % groups:
                raise _err(i, name, f"out={out} is not divisible by groups={groups}; "
                           f"use a multiple of {groups}, other groups, or connect: full")
            if in_groups != groups:
                raise _err(i, name, f"connect: group with groups={groups} but its input has "
                           f"{in_groups} group(s); use groups={in_groups} or connect: full")
            if c % groups:
                raise _err(i, name, f"input channels {c} not divisible by groups={groups}")
        std = values["std"]
        if std is not None and std != "he" and (not isinstance(std, (int, float)) or std < 0):
            raise _err(i, name, f"std={std!r} must be a number >= 0 or 'he'")
        fan_in = c // groups if connect == "group" else c
        fields.update(out=out, groups=groups, connect=connect,
                      bias_init=_number(values["bias_init"], i, name, "bias_init"), std=std)
        if op == "conv":
            kernel = _positive_int(values["kernel"], i, name, "kernel")
            stride = _positive_int(values["stride"], i, name, "stride")
            pad = _positive_int(values["pad"], i, name, "pad", minimum=0)
            ho = _out_size(h, kernel, stride, pad, i, name)
            wo = _out_size(w, kernel, stride, pad, i, name)
            out_shape = (out, ho, wo)
            macs = out * fan_in * kernel * kernel * ho * wo
            fields.update(kernel=kernel, stride=stride, pad=pad)
            params = out * fan_in * kernel * kernel + out
        else:
            if not flat:
                raise _err(i, name, f"linear needs a flat input, got a {c}x{h}x{w} map; "
                           "add a 'flatten' layer before it")
            out_shape = (out, 1, 1)
            fields["flat"] = True
            macs = out * fan_in
            params = out * fan_in + out
        flops = 2 * macs + out_shape[0] * out_shape[1] * out_shape[2]
        fields.update(out_shape=out_shape, params=params, flops=flops)
        return Layer(**fields)

    fields["groups"] = in_groups
    elements = c * h * w
    if op == "relu":
        fields.update(out_shape=shape, flops=elements)
    elif op == "dropout":
        p = values["p"]
        if not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
            raise _err(i, name, f"p={p!r} must be a probability in [0, 1)")
        if values["scale"] not in DROPOUT_SCALES:
            raise _err(i, name, f"scale={values['scale']!r}; valid: train (divide kept units by 1-p while "
                       "training) or test (multiply outputs by 1-p at test time, the paper's)")
        fields.update(out_shape=shape, p=float(p), scale=values["scale"], flops=elements)
    elif op == "lrn":
        n = _positive_int(values["size"], i, name, "size")
        if c // in_groups < 1 or c % in_groups:
            raise _err(i, name, f"its {c} input channels do not split into {in_groups} equal groups "
                       "(LRN normalises within each group); give the layer before it a width that "
                       f"{in_groups} divides, or groups: 1")
        fields.update(out_shape=shape, size=n, alpha=_number(values["alpha"], i, name, "alpha"),
                      beta=_number(values["beta"], i, name, "beta"), k=_number(values["k"], i, name, "k"),
                      flops=(2 * n + 3) * elements)
    elif op == "rnorm":
        n = _positive_int(values["size"], i, name, "size")
        fields.update(out_shape=shape, size=n, alpha=_number(values["alpha"], i, name, "alpha"),
                      beta=_number(values["beta"], i, name, "beta"), k=_number(values["k"], i, name, "k"),
                      flops=(2 * n * n + 3) * elements)
    elif op in ("maxpool", "avgpool"):
        kernel = _positive_int(values["kernel"], i, name, "kernel")
        stride = _positive_int(values["stride"] or kernel, i, name, "stride")
        pad = _positive_int(values["pad"], i, name, "pad", minimum=0)
        ceil = values["ceil"]
        if not isinstance(ceil, bool):
            raise _err(i, name, f"ceil={ceil!r} must be true (round the output size up, as cuda-convnet) "
                       "or false (down, as torch's default)")
        if pad * 2 > kernel:
            raise _err(i, name, f"pad={pad} must be at most half of kernel={kernel}")
        ho = _out_size(h, kernel, stride, pad, i, name, ceil)
        wo = _out_size(w, kernel, stride, pad, i, name, ceil)
        fields.update(kernel=kernel, stride=stride, pad=pad, ceil=ceil, out_shape=(c, ho, wo),
                      flops=c * ho * wo * kernel * kernel)
    elif op == "flatten":
        fields.update(out_shape=(elements, 1, 1), flat=True)
    return Layer(**fields)


def with_classes(raw: Mapping[str, Any], num_classes: int) -> dict[str, Any]:
    """The model as written, with its classifier (the last layer, when it has weights) as
    wide as the data has classes: every model then trains on CIFAR-100, an ImageNet subset
    or a user's three folders without editing its file. A model that ends in a weightless
    layer is returned as it is (training then checks its width against the data)."""
    layers = raw.get("layers")
    if not isinstance(layers, Sequence) or not layers or not isinstance(layers[-1], Mapping) \
            or layers[-1].get("op") not in WEIGHTED or isinstance(num_classes, bool) \
            or not isinstance(num_classes, int) or num_classes < 1:
        return dict(raw)  # not a classifier, or a class count that the data's own check refuses
    return {**raw, "layers": [*layers[:-1], {**layers[-1], "out": num_classes}]}


def spec_summary(spec: ModelSpec) -> dict[str, Any]:
    """The JSON shape `splitnet describe format=json` prints."""
    return {
        "name": spec.name,
        "total_params": spec.total_params,
        "total_flops": spec.total_flops,
        "layers": [
            {"name": layer.name, "op": layer.op, "groups": layer.groups, "connect": layer.connect,
             "out_shape": list(layer.out_shape), "params": layer.params, "flops": layer.flops}
            for layer in spec.layers
        ],
    }
