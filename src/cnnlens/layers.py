"""The layers of a model and their receptive fields.

:func:`layers` lists every submodule with its type, output shape (one dry forward pass),
parameter count and receptive field; :func:`receptive_field` gives one layer's.

How receptive fields are computed (exact for stacks of convolutions and pooling with
branches, TF-style ``F.pad`` included): the model is deep-copied in float64 and every
parameter is replaced by a positive constant (each weight tensor becomes an average), so no
two paths can cancel; inside a ``TorchFunctionMode`` rectifiers, other pointwise
activations and normalizations become the identity and max pooling becomes an average
over the same window, so every dependency carries a non-zero gradient. One forward pass
of two constant images records the gradient edge of every module call. For each call the
gradient of one central unit (image 0) and of its diagonal neighbour (image 1) with
respect to the calls that feed it gives, per axis, the window, stride and offset of the
call in its inputs' coordinates; composing these from the input onwards gives the size,
stride and offset in input pixels, the largest over paths. A unit's window must lie
strictly inside its input map to be measured: where the maps are too small the probe is
repeated on a larger image (grown by a multiple of the total stride, so that every
``SAME`` padding stays the same). Global pooling (adaptive pooling to 1x1, or a mean over
both spatial axes) cuts the field: its output has none, and squeeze-excitation gates do not
widen the field of the maps they scale. Only (B, C, H, W) maps have fields: outputs whose
two last sizes do not follow the input's size (channels-last tensors inside ConvNeXt blocks,
adaptive pooling to a fixed size) have none.
"""

from __future__ import annotations

import copy
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.graph import get_gradient_edge

from ._engine import Engine, Rule, RuleSet
from ._guard import guard
from ._modules import layer_name, resolve_layer
from ._ops import Call, Kind
from ._trace import trace_calls
from .errors import InputError

if TYPE_CHECKING:
    from .models import LoadedModel

__all__ = ["LayerInfo", "ReceptiveField", "layers", "receptive_field"]

_DEFAULT_SIZE = (224, 224)


@dataclass(frozen=True)
class ReceptiveField:
    """Where a layer looks in the input.

    ``size`` and ``stride`` are (h, w) in input pixels; ``size`` is the unclipped extent
    (it may exceed the image). ``start`` is the top-left corner of the box of unit (0, 0),
    negative where the window reaches into the padding. ``input_size`` and ``output_size``
    are the image and the layer's map (h, w) the field was computed for.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    start: tuple[int, int]
    input_size: tuple[int, int]
    output_size: tuple[int, int]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """The input box (top, left, bottom, right) seen by the unit at (y, x), clipped to
        the image; bottom and right are exclusive: ``image[..., top:bottom, left:right]``."""
        y, x = _index(y, self.output_size[0], "y"), _index(x, self.output_size[1], "x")
        top, left = self.unclipped(y, x)[:2]
        h, w = self.input_size
        return (
            max(top, 0),
            max(left, 0),
            min(top + self.size[0], h),
            min(left + self.size[1], w),
        )

    def unclipped(self, y: int, x: int) -> tuple[int, int, int, int]:
        """The box of unit (y, x) before clipping (it may reach outside the image)."""
        top = self.start[0] + y * self.stride[0]
        left = self.start[1] + x * self.stride[1]
        return (top, left, top + self.size[0], left + self.size[1])

    def center(self, y: int, x: int) -> tuple[float, float]:
        """The centre (row, column) of unit (y, x)'s unclipped box, in input pixels."""
        top, left, bottom, right = self.unclipped(y, x)
        return ((top + bottom - 1) / 2, (left + right - 1) / 2)


def _index(value: object, limit: int, axis: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        index = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise InputError(f"{axis} must be an int, got {type(value).__name__}") from None
    if not 0 <= index < limit:
        raise InputError(f"{axis}={index} is outside the layer's map (0..{limit - 1})")
    return index


@dataclass(frozen=True)
class LayerInfo:
    """One submodule: its dotted ``name``, ``type`` (class name), ``output_shape`` of its
    last call without the batch dimension (``None`` when it did not run or returned no
    tensor), ``calls`` during one forward pass, ``parameters`` (including submodules') and
    ``receptive_field`` (``None`` without a spatial map or when not asked for)."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None
    calls: int
    parameters: int
    receptive_field: ReceptiveField | None


def layers(
    model: nn.Module | LoadedModel,
    input_size: int | tuple[int, int] | None = None,
    *,
    receptive_fields: bool = True,
    channels: int | None = None,
) -> list[LayerInfo]:
    """Every submodule of ``model`` in definition order (see :class:`LayerInfo`).

    ``input_size`` (h, w) defaults to the :class:`LoadedModel`'s input size, else 224x224;
    ``channels`` to the input channels of the first convolution (else 3). With
    ``receptive_fields=False`` the (cheaper) listing leaves them ``None``.
    """
    with guard(model, needs="the layer listing") as module:
        return _layers(model, module, input_size, receptive_fields, channels)


def _layers(
    model: nn.Module | LoadedModel,
    module: nn.Module,
    input_size: int | tuple[int, int] | None,
    receptive_fields: bool,
    channels: int | None,
) -> list[LayerInfo]:
    size = _input_size(model, input_size)
    chans = _channels(model, module, channels)
    device, dtype = _device_dtype(module)
    try:
        calls = trace_calls(module, torch.zeros(1, chans, *size, device=device, dtype=dtype))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(
            f"the model does not run on a (1, {chans}, {size[0]}, {size[1]}) input: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    count: dict[nn.Module, int] = {}
    shape: dict[nn.Module, tuple[int, ...] | None] = {}
    for call in calls:
        count[call.module] = count.get(call.module, 0) + 1
        shape[call.module] = None if call.output_shape is None else call.output_shape[1:]
    fields: dict[str, ReceptiveField | None] = {}
    if receptive_fields:
        fields = _Probe(module, size, chans).fields()
    return [
        LayerInfo(
            name=name,
            type=type(sub).__name__,
            output_shape=shape.get(sub),
            calls=count.get(sub, 0),
            parameters=sum(p.numel() for p in sub.parameters()),
            receptive_field=fields.get(name),
        )
        for name, sub in module.named_modules()
        if name
    ]


def receptive_field(
    model: nn.Module | LoadedModel,
    layer: nn.Module | str,
    input_size: int | tuple[int, int] | None = None,
    *,
    channels: int | None = None,
) -> ReceptiveField:
    """The receptive field of ``layer`` (its last call, for a module called several times)
    for an input of ``input_size`` (h, w): default the :class:`LoadedModel`'s, else 224x224.

    Raises :class:`InputError` for an unknown layer or one without a spatial map (after
    global pooling, a linear layer, one that did not run).
    """
    with guard(model, needs="receptive fields") as module:
        target = resolve_layer(module, layer)
        name = layer_name(module, target)
        size = _input_size(model, input_size)
        fields = _Probe(module, size, _channels(model, module, channels)).fields()
    if name not in fields:
        raise InputError(f"layer {name!r} did not run in a forward pass of the model")
    field = fields[name]
    if field is None:
        raise InputError(
            f"layer {name!r} has no spatial receptive field (its output is not a (B, C, H, W) "
            "map that depends locally on the input, e.g. after global pooling)"
        )
    return field


# --------------------------------------------------------------------------- arguments


def _input_size(
    model: nn.Module | LoadedModel, input_size: int | tuple[int, int] | None
) -> tuple[int, int]:
    if input_size is None:
        given = getattr(model, "input_size", None) if not isinstance(model, nn.Module) else None
        return tuple(given) if given is not None else _DEFAULT_SIZE  # type: ignore[return-value]
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if (
        not isinstance(input_size, Sequence)
        or len(input_size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)
    ):
        raise InputError(f"input_size must be a positive int or (h, w), got {input_size!r}")
    return (int(input_size[0]), int(input_size[1]))


def _channels(model: nn.Module | LoadedModel, module: nn.Module, channels: int | None) -> int:
    if channels is not None:
        if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
            raise InputError(f"channels must be a positive int, got {channels!r}")
        return channels
    for sub in module.modules():
        if isinstance(sub, nn.Conv2d):
            return sub.in_channels
    preprocessing = getattr(model, "preprocessing", None)
    return 1 if getattr(preprocessing, "grayscale", False) else 3


def _device_dtype(module: nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in module.parameters():
        if p.is_floating_point():
            return p.device, p.dtype
    return torch.device("cpu"), torch.float32


# --------------------------------------------------------------------------- probe mode


def _uniform_conv(bound: dict[str, Any]) -> Tensor:
    """``conv2d`` as if every weight were 1 / fan-in: the mean over each group's input
    channels, box-filtered once per group and repeated for the group's output channels.
    Same output shape and dependencies as the convolution, at a fraction of the cost."""
    x: Tensor = bound["input"]
    weight: Tensor = bound["weight"]
    groups = int(bound.get("groups", 1))
    squeeze = x.dim() == 3
    xb = x.unsqueeze(0) if squeeze else x
    b, c, h, w = xb.shape
    out_channels, _, kh, kw = weight.shape
    mean = xb.reshape(b, groups, c // groups, h, w).mean(2)
    kernel = torch.full((groups, 1, kh, kw), 1.0 / (kh * kw), dtype=xb.dtype, device=xb.device)
    y = F.conv2d(
        mean,
        kernel,
        None,
        bound.get("stride", 1),
        bound.get("padding", 0),
        bound.get("dilation", 1),
        groups,
    )
    per = out_channels // groups
    y = y.unsqueeze(2).expand(b, groups, per, *y.shape[-2:]).reshape(b, out_channels, *y.shape[-2:])
    y = y.contiguous()  # a broadcast view would break later in-place ops (``out += x``)
    return y.squeeze(0) if squeeze else y


def _uniform_linear(bound: dict[str, Any]) -> Tensor:
    """``linear`` as if every weight were 1 / fan-in."""
    x: Tensor = bound["input"]
    weight: Tensor = bound["weight"]
    return x.mean(-1, keepdim=True).expand(*x.shape[:-1], weight.shape[0]).contiguous()


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def _positive_pool(call: Call) -> Any:
    """Max pooling replaced by a sum over the same windows (same output shape), so every
    input of a window gets a gradient."""
    bound = call.bound
    x: Tensor = bound["input"]
    with torch.no_grad():
        reference = call.run()
    ref = reference[0] if isinstance(reference, tuple) else reference
    kh, kw = _pair(bound["kernel_size"])
    stride = bound.get("stride")
    sh, sw = (kh, kw) if stride is None or stride == [] or stride == () else _pair(stride)
    ph, pw = _pair(bound.get("padding", 0))
    dh, dw = _pair(bound.get("dilation", 1))
    squeeze = x.dim() == 3
    xb = x.unsqueeze(0) if squeeze else x
    oh, ow = ref.shape[-2:]
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1 - (xb.shape[-2] + 2 * ph)
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1 - (xb.shape[-1] + 2 * pw)
    padded = F.pad(xb, (pw, pw + max(need_w, 0), ph, ph + max(need_h, 0)))
    c = xb.shape[1]
    weight = torch.full((c, 1, kh, kw), 1.0 / (kh * kw), dtype=xb.dtype, device=xb.device)
    out = F.conv2d(padded, weight, stride=(sh, sw), dilation=(dh, dw), groups=c)
    out = out[..., :oh, :ow]
    out = out.squeeze(0) if squeeze else out
    if isinstance(reference, tuple):
        return (out, reference[1])
    return out


def _is_global(out: Tensor) -> bool:
    return out.dim() == 4 and tuple(out.shape[-2:]) == (1, 1)


def _spatial_reduction(call: Call) -> bool:
    x = call.x
    dims = call.args[1] if len(call.args) > 1 else call.kwargs.get("dim")
    if not isinstance(x, Tensor) or x.dim() != 4 or dims is None:
        return False
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return {d % 4 for d in dims} >= {2, 3}


class _ProbeRule(Rule):
    """Inside a receptive-field probe: pointwise activations pass gradients unchanged,
    normalizations are the identity, convolutions and linear layers average, max pooling
    averages its window, global pooling is detached."""

    name = "probe"

    def __call__(self, call: Call) -> Any:
        kind, op, x = call.kind, call.op, call.x
        if kind in _IDENTITIES or op in ("local_response_norm", "instance_norm"):
            return x
        if kind in (Kind.RECTIFIER, Kind.ACTIVATION, Kind.SOFTMAX):
            # The activation's value (bounded gates stay bounded) with the gradient of the
            # identity. Computed out of place: in-place variants must not touch the input.
            with torch.no_grad():
                shift = call.apply(x.detach()) - x.detach()
            return x + shift
        if op == "conv2d":
            return _uniform_conv(call.bound)
        if op == "linear":
            return _uniform_linear(call.bound)
        if op == "max_pool2d":
            return _positive_pool(call)
        if op in ("adaptive_max_pool2d", "adaptive_avg_pool2d"):
            output_size = call.args[1] if len(call.args) > 1 else call.kwargs["output_size"]
            out = F.adaptive_avg_pool2d(x, output_size)
            if _is_global(out):
                out = out.detach()
            if op == "adaptive_max_pool2d" and (
                call.func is F.adaptive_max_pool2d_with_indices or call.bound.get("return_indices")
            ):
                with torch.no_grad():
                    indices = call.run()[1]
                return (out, indices)
            return out
        result = call.run()
        if op in _REDUCTIONS and isinstance(result, Tensor) and _spatial_reduction(call):
            return result.detach()
        return result


_IDENTITIES = frozenset({Kind.BATCH_NORM, Kind.BATCH_STATS, Kind.NORMALIZATION, Kind.DROPOUT})
_REDUCTIONS = frozenset({"mean", "sum", "amax", "amin"})
_PROBE = _ProbeRule()
_PROBE_RULES = RuleSet("receptive field", dict.fromkeys(Kind, _PROBE))


def _probe_mode() -> Engine:
    return Engine(_PROBE_RULES, warn=False)


# --------------------------------------------------------------------------- probe


@dataclass(frozen=True)
class _Axis:
    size: int
    stride: int
    start: int


@dataclass
class _Record:
    """One module call of the probe forward pass. ``leaf`` is a detached copy of the output
    that the rest of the network was given (through a clone) instead, so gradients of
    ``select`` stop at the calls that feed this one."""

    name: str
    shape: tuple[int, ...]
    leaf: Tensor | None = None
    select: Tensor | None = None  # unit (image 0) + neighbour (image 1), over channels
    units: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))  # (u, v) per axis


_PENDING = "pending"
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_Fields = tuple[_Axis, _Axis]
_IDENTITY: _Fields = (_Axis(1, 1, 0), _Axis(1, 1, 0))


class _Probe:
    """Receptive fields of every module call of ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module, size: tuple[int, int], channels: int) -> None:
        self.model = model
        self.size = size
        self.channels = channels
        self.device = _device_dtype(model)[0]

    def _copy(self) -> nn.Module:
        """A structural copy of the model in eval mode, without hooks, whose parameters are
        constant ones (broadcast views: no memory) and whose buffers are float64."""
        memo: dict[int, Any] = {}
        for p in self.model.parameters():
            one = torch.ones((), dtype=torch.float64, device=p.device)
            memo[id(p)] = nn.Parameter(one.expand(p.shape), requires_grad=False)
        for b in self.model.buffers():
            memo[id(b)] = b.detach().to(torch.float64) if b.is_floating_point() else b.clone()
        probe = copy.deepcopy(self.model, memo)
        for m in probe.modules():
            for attr in _HOOK_DICTS:
                hooks = getattr(m, attr, None)
                if hooks is not None:
                    hooks.clear()
            m.training = False
        return probe

    def _shapes(self, probe: nn.Module, size: tuple[int, int]) -> list[tuple[int, ...]]:
        """Output shapes of every module call (tensor outputs only), without gradients."""
        shapes: list[tuple[int, ...]] = []

        def hook(_module: nn.Module, _inputs: object, output: object) -> None:
            if isinstance(output, Tensor):
                shapes.append(tuple(output.shape))

        x = torch.ones(2, self.channels, *size, dtype=torch.float64, device=self.device)
        handles = [m.register_forward_hook(hook) for m in probe.modules() if m is not probe]
        try:
            with torch.no_grad(), _probe_mode():
                probe(x)
        finally:
            for handle in handles:
                handle.remove()
        return shapes

    def _run(
        self, probe: nn.Module, size: tuple[int, int], maps: Sequence[bool]
    ) -> tuple[list[_Record], Tensor]:
        names = {m: n for n, m in probe.named_modules() if n}
        records: list[_Record] = []

        def hook(module: nn.Module, _inputs: object, output: object) -> Tensor | None:
            if not isinstance(output, Tensor):
                return None
            record = _Record(names[module], tuple(output.shape))
            records.append(record)
            if len(records) > len(maps) or not maps[len(records) - 1] or not output.requires_grad:
                return None
            h, w = record.shape[-2:]
            uh, uw = h // 2, w // 2
            vh = uh + 1 if uh + 1 < h else uh - 1
            vw = uw + 1 if uw + 1 < w else uw - 1
            record.units = ((uh, vh), (uw, vw))
            select = output[0, :, uh, uw].sum()
            if vh >= 0 and vw >= 0:
                select = select + output[1, :, vh, vw].sum()
            record.select = select
            record.leaf = output.detach().requires_grad_(True)
            return record.leaf.clone()

        x = torch.ones(2, self.channels, *size, dtype=torch.float64, device=self.device)
        x.requires_grad_(True)
        handles = [m.register_forward_hook(hook) for m in names]
        try:
            with torch.enable_grad(), _probe_mode():
                probe(x)
        finally:
            for handle in handles:
                handle.remove()
        return records, x

    def fields(self) -> dict[str, ReceptiveField | None]:
        """Receptive field of each module's last call, by name."""
        # Many small ops: one thread is faster than several (and far faster on a busy
        # machine). The setting is restored afterwards.
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._fields()
        finally:
            torch.set_num_threads(threads)

    def _fields(self) -> dict[str, ReceptiveField | None]:
        probe = self._copy()
        results: list[Any] = []  # per record: _Fields | None | _PENDING
        base: list[_Record] = []
        shapes = self._shapes(probe, self.size)
        moduli = self._moduli(shapes)
        grown = self._shapes(probe, (self.size[0] + moduli[0], self.size[1] + moduli[1]))
        # (B, C, H, W) maps: the channels stay, both spatial sizes follow the input's.
        # Channels-last tensors (ConvNeXt's permuted blocks) and adaptive pooling are not.
        maps = [
            len(a) == 4 and len(b) == 4 and a[1] == b[1] and a[2] != b[2] and a[3] != b[3]
            for a, b in zip(shapes, grown, strict=False)
        ]
        grow = 0
        while True:
            size = (self.size[0] + grow * moduli[0], self.size[1] + grow * moduli[1])
            try:
                records, x = self._run(probe, size, maps)
            except Exception as exc:
                if grow == 0:
                    raise
                raise InputError(
                    f"receptive fields: the model does not run on a {size[0]}x{size[1]} "
                    f"input ({type(exc).__name__}: {exc})"
                ) from exc
            if grow == 0:
                base = records
                results = [_PENDING] * len(records)
            elif [r.name for r in records] != [r.name for r in base]:
                raise RuntimeError("the model's module calls change with the input size")
            _resolve(records, x, results, final=grow >= _MAX_GROWTH)
            if _PENDING not in results:
                break
            grow = 1 if grow == 0 else grow * 2
        fields: dict[str, ReceptiveField | None] = {}
        for record, result in zip(base, results, strict=True):
            if result is None or len(record.shape) != 4:
                fields[record.name] = None
                continue
            ah, aw = result
            fields[record.name] = ReceptiveField(
                size=(ah.size, aw.size),
                stride=(ah.stride, aw.stride),
                start=(ah.start, aw.start),
                input_size=self.size,
                output_size=(record.shape[2], record.shape[3]),
            )
        return fields

    def _moduli(self, shapes: list[tuple[int, ...]]) -> tuple[int, int]:
        """Growth steps that keep every layer's padding: a power of two at least twice the
        largest size ratio between the input and a map."""
        out = []
        for axis in (0, 1):
            ratio = 1.0
            for shape in shapes:
                if len(shape) == 4 and shape[2:] != (1, 1):
                    ratio = max(ratio, self.size[axis] / max(shape[2 + axis], 1))
            out.append(2 ** (math.ceil(math.log2(ratio)) + 1))
        return (out[0], out[1])


_MAX_GROWTH = 8


def _resolve(records: list[_Record], x: Tensor, results: list[Any], *, final: bool) -> None:
    """Fill in the pending ``results`` whose inputs are known."""
    # Keyed by the autograd nodes themselves (kept alive here: ids of freed nodes recur).
    leaves: dict[object, int] = {get_gradient_edge(x).node: -1}
    for i, record in enumerate(records):
        if record.leaf is not None:
            leaves[get_gradient_edge(record.leaf).node] = i
    for i, record in enumerate(records):
        if results[i] is not _PENDING:
            continue
        if record.select is None:
            results[i] = None
            continue
        sources: list[tuple[Tensor, _Fields]] = []
        pending = False
        for p in sorted(_predecessors(record.select, leaves)):
            if p == -1:
                sources.append((x, _IDENTITY))
            elif results[p] is _PENDING:
                pending = True
            elif results[p] is not None:
                leaf = records[p].leaf
                assert leaf is not None
                sources.append((leaf, results[p]))
        if pending:
            if final:
                results[i] = None
            continue
        if not sources:
            results[i] = None
            continue
        grads = torch.autograd.grad(
            record.select, [t for t, _ in sources], retain_graph=True, allow_unused=True
        )
        results[i] = _compose(record, grads, [f for _, f in sources], final)


def _predecessors(select: Tensor, leaves: dict[object, int]) -> set[int]:
    """Indices of the records (or -1 for the input) whose leaves ``select`` depends on."""
    found: set[int] = set()
    stack: list[Any] = [select.grad_fn]
    seen: set[object] = set()  # the nodes themselves, kept alive
    while stack:
        node = stack.pop()
        for nxt, _ in getattr(node, "next_functions", ()):
            if nxt is None or nxt in seen:
                continue
            seen.add(nxt)
            if nxt in leaves:
                found.add(leaves[nxt])
            else:
                stack.append(nxt)
    return found


def _extent(mask: Tensor) -> tuple[int, int] | None:
    """First and one-past-last index where ``mask`` is true."""
    idx = torch.nonzero(mask).flatten()
    if idx.numel() == 0:
        return None
    return int(idx[0]), int(idx[-1]) + 1


def _compose(
    record: _Record,
    grads: Sequence[Tensor | None],
    fields: Sequence[tuple[_Axis, _Axis]],
    final: bool,
) -> Any:
    axes: list[_Axis] = []
    for axis in (0, 1):
        u, v = record.units[axis]
        if v < 0:  # a single unit along this axis: no stride to measure
            return None if final else _PENDING
        tops: list[int] = []
        bottoms: list[int] = []
        strides: list[int] = []
        for grad, field in zip(grads, fields, strict=True):
            if grad is None or grad.dim() != 4:
                continue
            # Reduce over the channels and the other spatial axis.
            nonzero = grad != 0
            first = _extent(nonzero[0].any(0).any(1 - axis))
            if first is None:
                continue
            second = _extent(nonzero[1].any(0).any(1 - axis))
            length = grad.shape[2 + axis]
            a0, b0 = first
            if a0 <= 0 or b0 >= length or second is None:
                return None if final else _PENDING
            local = (second[0] - a0) if v > u else (b0 - second[1])
            if local <= 0:
                return None  # not a strided window (upsampling, ...): no receptive field
            rf = field[axis]
            tops.append(rf.start + a0 * rf.stride)
            bottoms.append(rf.start + (b0 - 1) * rf.stride + rf.size)
            strides.append(local * rf.stride)
        if not tops:
            return None
        stride = max(strides)
        top = min(tops)
        axes.append(_Axis(max(bottoms) - top, stride, top - u * stride))
    return (axes[0], axes[1])
