"""Incremental inference for occlusion (after Krypton, Nakandala et al., SIGMOD 2019).

An occluding window changes only a cone of each layer's activations: its projective field.
Instead of running every occluded copy through the whole network, this engine runs the
unoccluded image once, keeps every intermediate value, and for each copy recomputes only
the changed region of each layer from the cached values around it:

* a value that depends on the input is a :class:`Patched` value: the cached unoccluded
  tensor (1, C, H, W) plus, per copy, a patch (N, C, h, w) at a per-copy position. The
  patch size is the same for every copy of a batch, so each layer is one batched call;
* elementwise operations (BatchNorm in eval mode, activations, dropout at eval) act on the
  patch alone;
* windowed operations (convolution, max/average pooling, constant padding) compute the
  output box each patch can reach, cut the input region that box needs from the cached
  tensor with the patch pasted in (padding filled as the operation would fill it), and
  run the operation on that region without padding;
* residual sums, products and channel concatenations take the union of their operands'
  boxes;
* anything else (global pooling, flatten, a shape change, an operation this engine does not
  know) *densifies*: the full occluded tensors are assembled and the rest of the network
  runs on them as usual.

Every step computes exactly what the full forward pass computes for the changed region and
copies the unchanged rest, so the result equals plain occlusion up to float rounding (a
convolution over a cut region may sum in another order). What the engine skipped, and
where it densified, is reported by :func:`plan`.

With ``approximate=tau`` the patch is not allowed to grow beyond ``tau`` of each layer's
spatial size (Krypton's projective-field thresholding): changes outside the kept, centred
part of the cone are dropped. This trades exactness for speed; its quality is measured as
SSIM against the exact map (docs/performance.md).

The graph comes from ``torch.fx`` symbolic tracing (cached per model); a model that cannot
be traced uses the plain batched path.
"""

from __future__ import annotations

import math
import operator
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .._ops import REGISTRY, Kind
from ..models.efficientnet_lite0 import SamePad2d

__all__ = [
    "Engine",
    "Graph",
    "IncrementalPlan",
    "Occluder",
    "Patched",
    "plan",
    "trace",
    "traced_forward",
]


# --- operation kinds ----------------------------------------------------------------------

_ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Sigmoid,
    nn.Tanh,
    nn.LeakyReLU,
    nn.ELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.Dropout2d,
)
# operations that keep every value where it is and touch nothing else
_COPY_METHODS: frozenset[str] = frozenset({"contiguous", "clone"})
_BINARY_FUNCTIONS: frozenset[Any] = frozenset(
    {operator.add, operator.mul, operator.sub, torch.add, torch.mul, torch.sub, operator.iadd}
)
_BINARY_METHODS: frozenset[str] = frozenset({"add", "add_", "mul", "mul_", "sub", "sub_"})


def _inplace(node: torch.fx.Node, module: nn.Module | None) -> bool:
    if module is not None and getattr(module, "inplace", False):
        return True
    if node.kwargs.get("inplace", False):
        return True
    return node.op == "call_method" and str(node.target).endswith("_")


_ELEMENTWISE_KINDS = frozenset({Kind.RECTIFIER, Kind.ACTIVATION})


# --- tracing ------------------------------------------------------------------------------


class _Tracer(torch.fx.Tracer):
    """torch.nn modules are leaves (the default), and so is the bundled model's SAME
    padding, whose pad amounts depend on the input's size."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, SamePad2d) or super().is_leaf_module(m, module_qualified_name)


@dataclass(frozen=True)
class Graph:
    """A traced forward pass: the nodes in order and which depend on the input."""

    nodes: tuple[torch.fx.Node, ...]
    dependent: frozenset[torch.fx.Node]
    output: torch.fx.Node


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[int, ...], Graph | str]] = (
    weakref.WeakKeyDictionary()
)


def _structure(module: nn.Module) -> tuple[int, ...]:
    return tuple(id(m) for m in module.modules())


def trace(module: nn.Module) -> Graph | str:
    """The traced graph of ``module`` (cached), or the reason it cannot be traced."""
    structure = _structure(module)
    cached = _GRAPHS.get(module)
    if cached is not None and cached[0] == structure:
        return cached[1]
    result: Graph | str
    try:
        graph = _Tracer().trace(module)
    except Exception as error:  # any tracing failure means: use the plain path
        result = f"the model cannot be traced by torch.fx ({type(error).__name__}: {error})"
    else:
        nodes = tuple(graph.nodes)
        placeholders = [n for n in nodes if n.op == "placeholder"]
        outputs = [n for n in nodes if n.op == "output"]
        if len(placeholders) != 1 or len(outputs) != 1:
            result = "the model's forward takes more than one input"
        else:
            dependent: set[torch.fx.Node] = set(placeholders)
            for node in nodes:
                if any(a in dependent for a in node.all_input_nodes):
                    dependent.add(node)
            result = Graph(nodes, frozenset(dependent), outputs[0])
    _GRAPHS[module] = (structure, result)
    return result


# --- the patched representation -------------------------------------------------------------


@dataclass
class Patched:
    """``count`` copies of ``base`` (1, C, H, W), copy i with ``patch[i]`` at rows
    ``top[i]:top[i]+h`` and columns ``left[i]:left[i]+w``."""

    base: Tensor
    patch: Tensor
    top: Tensor
    left: Tensor

    @property
    def count(self) -> int:
        return int(self.patch.shape[0])

    def shape(self) -> torch.Size:
        return torch.Size((self.count, *self.base.shape[1:]))


def _region(
    value: Patched, top: Tensor, left: Tensor, height: int, width: int, fill: float
) -> Tensor:
    """(N, C, height, width): the window of each copy starting at (top[i], left[i]) in the
    copy's own coordinates; positions outside the tensor are ``fill``."""
    ph, pw = int(value.patch.shape[-2]), int(value.patch.shape[-1])
    dy, dx = value.top - top, value.left - left  # the patch's place in each region
    size_h, size_w = int(value.base.shape[-2]), int(value.base.shape[-1])
    oy, ox = int(dy[0]), int(dx[0])
    # the patch at the same place in every region, and wholly inside it
    uniform = bool((dy == oy).all()) and bool((dx == ox).all())
    inside = uniform and min(oy, ox) >= 0 and oy + ph <= height and ox + pw <= width
    if inside:
        if (oy, ox, height, width) == (0, 0, ph, pw):
            return value.patch  # the region is the patch itself (1x1 convolutions, same boxes)
        if _outside_patch_is_padding(value, height, width, (oy, ox)):
            # every position of the region is the patch or padding (a cone that covers
            # the whole map): no cached value is needed
            return F.pad(
                value.patch,
                (ox, width - ox - pw, oy, height - oy - ph),
                value=fill,
            )
    base = value.base[0]
    tops, lefts = top.tolist(), left.tolist()
    pad_top = max(0, -min(tops))
    pad_left = max(0, -min(lefts))
    pad_bottom = max(0, max(tops) + height - size_h)
    pad_right = max(0, max(lefts) + width - size_w)
    if pad_top or pad_left or pad_bottom or pad_right:
        base = F.pad(base, (pad_left, pad_right, pad_top, pad_bottom), value=fill)
    # slicing and stacking beats advanced indexing here: few copies, many channels
    out = torch.stack(
        [
            base[:, y + pad_top : y + pad_top + height, x + pad_left : x + pad_left + width]
            for y, x in zip(tops, lefts, strict=True)
        ]
    )
    if inside:
        out[:, :, oy : oy + ph, ox : ox + pw] = value.patch  # one copy for every copy
        return out
    for i, (y, x, py, px) in enumerate(
        zip(tops, lefts, value.top.tolist(), value.left.tolist(), strict=True)
    ):
        y0, y1 = max(y, py), min(y + height, py + ph)
        x0, x1 = max(x, px), min(x + width, px + pw)
        if y0 < y1 and x0 < x1:
            out[i, :, y0 - y : y1 - y, x0 - x : x1 - x] = value.patch[
                i, :, y0 - py : y1 - py, x0 - px : x1 - px
            ]
    return out


def _outside_patch_is_padding(
    value: Patched, height: int, width: int, offset: tuple[int, int]
) -> bool:
    """Whether, for every copy, every position of its region (which holds the whole patch
    at ``offset``) outside the patch lies outside the tensor."""
    oy, ox = offset
    ph, pw = int(value.patch.shape[-2]), int(value.patch.shape[-1])
    size_h, size_w = int(value.base.shape[-2]), int(value.base.shape[-1])
    # rows above and below the patch, columns left and right of it: all outside the map
    return (
        (oy == 0 or bool((value.top <= 0).all()))
        and (oy + ph == height or bool((value.top + ph >= size_h).all()))
        and (ox == 0 or bool((value.left <= 0).all()))
        and (ox + pw == width or bool((value.left + pw >= size_w).all()))
    )


def _dense(value: Patched) -> Tensor:
    h, w = value.base.shape[-2:]
    zeros = torch.zeros_like(value.top)
    return _region(value, zeros, zeros, int(h), int(w), 0.0)


def _limit(lo: Tensor, hi: Tensor, size: int, cap: int | None) -> tuple[Tensor, int]:
    """One common extent covering [lo[i], hi[i]] for every copy, inside [0, size): its
    per-copy start and its length. ``cap`` (approximate mode) keeps at most ``cap``
    positions, centred on each copy's interval."""
    length = max(1, min(size, int((hi - lo).max()) + 1))
    start = lo
    if cap is not None and length > cap:
        start = lo + ((hi - lo + 1 - cap) // 2).clamp(min=0)
        length = cap
    return start.clamp(0, size - length), length


@dataclass(frozen=True)
class _Window:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    fill: float
    run: Callable[[Tensor], Tensor]


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    return (int(value[0]), int(value[1]))


def _window(module: nn.Module, norm: nn.BatchNorm2d | None = None) -> _Window | None:
    """How a windowed leaf module is run on a cut region (no padding), or None when this
    engine cannot run it that way. ``norm``: an eval-mode BatchNorm that follows a
    convolution, folded into its weights."""
    if isinstance(module, nn.Conv2d):
        if not _plain_conv(module):
            return None
        conv = module
        weight, bias = (conv.weight, conv.bias) if norm is None else _fold(conv, norm)

        def run_conv(x: Tensor) -> Tensor:
            return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)

        return _Window(
            _pair(conv.kernel_size),
            _pair(conv.stride),
            _pair(conv.padding),
            _pair(conv.dilation),
            0.0,
            run_conv,
        )
    if isinstance(module, nn.MaxPool2d):
        if module.return_indices:
            return None
        pool = module
        kernel = _pair(pool.kernel_size)
        stride = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        dilation = _pair(pool.dilation)

        def run_max(x: Tensor) -> Tensor:
            # ceil_mode windows hanging over the edge see -inf there, as in the full pass
            return F.max_pool2d(x, kernel, stride, 0, dilation, ceil_mode=False)

        return _Window(kernel, stride, _pair(pool.padding), dilation, -math.inf, run_max)
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad or module.divisor_override:
            return None
        avg = module
        kernel = _pair(avg.kernel_size)
        stride = _pair(avg.stride if avg.stride is not None else avg.kernel_size)

        def run_avg(x: Tensor) -> Tensor:
            return F.avg_pool2d(x, kernel, stride, 0)

        return _Window(kernel, stride, _pair(avg.padding), (1, 1), 0.0, run_avg)
    return None


def _plain_conv(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weights and bias of ``norm(conv(x))`` as one convolution (eval mode: the norm is a
    per-channel affine map). Equal to the two steps up to float rounding."""
    assert norm.running_mean is not None and norm.running_var is not None
    scale = (norm.running_var + norm.eps).rsqrt()
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    if conv.bias is not None:
        shift = shift + conv.bias * scale
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    return weight.detach(), shift.detach()


def _elementwise_module(module: nn.Module) -> bool:
    if isinstance(module, _ELEMENTWISE_MODULES):
        return True
    if isinstance(module, nn.BatchNorm2d):
        # per-channel affine only in eval mode with running statistics
        return not module.training and module.running_mean is not None
    return False


def _broadcasts_per_channel(value: Any) -> bool:
    """A constant operand that is the same at every spatial position."""
    if isinstance(value, (int, float, bool)):
        return True
    if isinstance(value, Tensor):
        return value.numel() == 1 or (value.dim() >= 2 and value.shape[-2:] == (1, 1))
    return False


# --- the interpreter ------------------------------------------------------------------------


@dataclass
class IncrementalPlan:
    """What the engine does for one model and input size: per traced operation the kind it
    was given (``"elementwise"``, ``"window"``, ``"merge"``, ``"dense"``), and where the
    incremental part ends (the first operation that densified, with the reason)."""

    steps: list[tuple[str, str]] = field(default_factory=list)
    densified_at: str | None = None
    reason: str | None = None
    fallback: str | None = None
    macs_incremental: int = 0
    macs_full: int = 0

    @property
    def estimated_cost(self) -> float:
        """Multiply-adds of convolutions and linear layers, incremental over full (1.0
        when nothing could be traced)."""
        return self.macs_incremental / self.macs_full if self.macs_full else 1.0

    def count(self, module: nn.Module | None, computed: Tensor, full_numel: int) -> None:
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels // module.groups * math.prod(_pair(module.kernel_size))
        elif isinstance(module, nn.Linear):
            fan_in = module.in_features
        else:
            return
        self.macs_incremental += computed.numel() * fan_in
        self.macs_full += full_numel * fan_in


def _node_name(node: torch.fx.Node) -> str:
    return str(node.target) if node.op == "call_module" else node.name


def _fetch(values: dict[torch.fx.Node, Any], arg: Any) -> Any:
    return torch.fx.node.map_arg(arg, lambda n: values[n])


@dataclass(frozen=True)
class _Program:
    """What every pass needs about the model, worked out once per occlusion call: the leaf
    module of each node, how each windowed module runs on a cut region (a convolution
    followed only by an eval-mode BatchNorm runs with the norm folded into its weights,
    and the norm then passes its patch through), and after which node each value is no
    longer needed."""

    module: nn.Module
    graph: Graph
    modules: dict[torch.fx.Node, nn.Module]
    windows: dict[torch.fx.Node, _Window]
    folded: frozenset[torch.fx.Node]
    release: dict[torch.fx.Node, tuple[torch.fx.Node, ...]]


def _program(module: nn.Module, graph: Graph) -> _Program:
    modules = {
        node: module.get_submodule(str(node.target))
        for node in graph.nodes
        if node.op == "call_module"
    }
    windows: dict[torch.fx.Node, _Window] = {}
    folded: set[torch.fx.Node] = set()
    for node, leaf in modules.items():
        norm = _foldable_norm(node, leaf, modules)
        window = _window(leaf, None if norm is None else norm[1])
        if window is not None:
            windows[node] = window
            if norm is not None:
                folded.add(norm[0])
    last_use: dict[torch.fx.Node, torch.fx.Node] = {}
    for node in graph.nodes:
        for source in node.all_input_nodes:
            last_use[source] = node
    release: dict[torch.fx.Node, list[torch.fx.Node]] = {}
    for source, node in last_use.items():
        release.setdefault(node, []).append(source)
    return _Program(
        module,
        graph,
        modules,
        windows,
        frozenset(folded),
        {node: tuple(sources) for node, sources in release.items()},
    )


def _foldable_norm(
    node: torch.fx.Node, leaf: nn.Module, modules: dict[torch.fx.Node, nn.Module]
) -> tuple[torch.fx.Node, nn.BatchNorm2d] | None:
    """The eval-mode BatchNorm (node, module) that is the only reader of convolution
    ``node``."""
    if not _plain_conv(leaf) or len(node.users) != 1:
        return None
    (user,) = node.users
    norm = modules.get(user)
    if (
        isinstance(norm, nn.BatchNorm2d)
        and _elementwise_module(norm)
        and user.args == (node,)
        and not user.kwargs
    ):
        return user, norm
    return None


class _Run:
    """One pass of the graph for a batch of occluded copies of one item."""

    def __init__(
        self,
        program: _Program,
        cache: dict[torch.fx.Node, Any],
        cap: float | None,
        plan: IncrementalPlan | None,
    ) -> None:
        self.program = program
        self.module = program.module
        self.graph = program.graph
        self.cache = cache
        self.cap = cap
        self.plan = plan
        # nodes whose patch this pass created for them alone: an in-place operation that is
        # their only reader may write it without a copy
        self.owned: set[torch.fx.Node] = set()

    def _note(self, node: torch.fx.Node, kind: str, reason: str | None = None) -> None:
        if self.plan is None:
            return
        self.plan.steps.append((_node_name(node), kind))
        if kind == "dense" and self.plan.densified_at is None and reason is not None:
            self.plan.densified_at = _node_name(node)
            self.plan.reason = reason

    def _caps(self, size: tuple[int, int]) -> tuple[int | None, int | None]:
        if self.cap is None:
            return None, None
        return (max(1, math.ceil(self.cap * size[0])), max(1, math.ceil(self.cap * size[1])))

    def run(self, start: Patched) -> Tensor:
        values: dict[torch.fx.Node, Any] = {}
        for node in self.graph.nodes:
            if node.op == "placeholder":
                values[node] = start
            elif node.op == "output":
                result = _fetch(values, node.args[0])
                if isinstance(result, Patched):
                    result = _dense(result)
                if not isinstance(result, Tensor):
                    raise TypeError("the model's output is not a tensor")
                return result
            elif node not in self.graph.dependent:
                values[node] = self.cache[node]
            else:
                values[node] = self._step(node, values)
            for source in self.program.release.get(node, ()):
                del values[source]  # bounded memory: drop what no later node reads
        raise RuntimeError("the traced graph has no output")

    def _step(self, node: torch.fx.Node, values: dict[torch.fx.Node, Any]) -> Any:
        args = _fetch(values, node.args)
        kwargs = _fetch(values, node.kwargs)
        module = self.program.modules.get(node)
        inputs = [values[n] for n in node.all_input_nodes if n in self.graph.dependent]
        patched = any(isinstance(v, Patched) for v in inputs)
        # a tensor that depends on the input and is not patched is already dense: every
        # position of it may differ between copies, so nothing after it is incremental
        dense_operand = any(isinstance(v, Tensor) for v in inputs)
        if patched and not dense_operand:
            result = self._incremental(node, module, args, kwargs)
            if result is not None:
                return result
        reason = None
        if patched:
            reason = f"{node.op} {node.target} has no incremental rule"
        self._note(node, "dense", reason)
        dense_args = torch.fx.node.map_aggregate(
            args, lambda a: _dense(a) if isinstance(a, Patched) else a
        )
        dense_kwargs = torch.fx.node.map_aggregate(
            kwargs, lambda a: _dense(a) if isinstance(a, Patched) else a
        )
        out = _call(node, module, dense_args, dense_kwargs, self.module)
        if self.plan is not None and isinstance(out, Tensor):
            self.plan.count(module, out, out.numel())
        return out

    def _incremental(
        self,
        node: torch.fx.Node,
        module: nn.Module | None,
        args: Sequence[Any],
        kwargs: dict[str, Any],
    ) -> Any:
        base = self.cache[node]
        first = args[0] if args else None
        # shape queries answer for the whole batch of copies
        if (
            node.op == "call_method"
            and node.target in ("size", "dim")
            and isinstance(first, Patched)
        ):
            shape = first.shape()
            if node.target == "dim":
                return len(shape)
            return shape if len(args) == 1 and not kwargs else shape[args[1]]
        if node.op == "call_function" and node.target is getattr and args[1] == "shape":
            return first.shape() if isinstance(first, Patched) else None
        if not isinstance(base, Tensor) or base.dim() != 4:
            return None
        source = node.args[0] if node.args else None
        if node in self.program.folded and isinstance(first, Patched):
            # the convolution before it ran with this norm folded in
            self._note(node, "elementwise")
            if source in self.owned:
                self.owned.add(node)
            return Patched(base, first.patch, first.top, first.left)
        if _is_elementwise(node, module) and isinstance(first, Patched):
            # functions may take ``inplace`` by position: never let them write a patch that
            # another node may read
            inplace = module is None or _inplace(node, module)
            owned = inplace and source in self.owned and len(source.users) == 1  # type: ignore[union-attr]
            x = first.patch.clone() if inplace and not owned else first.patch
            out = _call(node, module, (x, *args[1:]), kwargs, self.module)
            self._note(node, "elementwise")
            if out is not first.patch or owned:
                self.owned.add(node)
            return Patched(base, out, first.top, first.left)
        if module is not None and isinstance(first, Patched) and len(args) == 1:
            if isinstance(module, SamePad2d):
                pad_left, _, pad_top, _ = module.padding_for(*first.base.shape[-2:])
                out_value = Patched(base, first.patch, first.top + pad_top, first.left + pad_left)
                self._note(node, "window")
                return out_value
            window = self.program.windows.get(node)
            if window is not None:
                self._note(node, "window")
                out_value = self._windowed(first, window, base)
                if self.plan is not None:
                    self.plan.count(module, out_value.patch, out_value.count * base.numel())
                self.owned.add(node)
                return out_value
        if _is_binary(node) and len(args) == 2 and not kwargs:
            result = self._binary(node, module, args, base)
        elif node.op == "call_function" and node.target is torch.cat:
            result = self._cat(node, args, kwargs, base)
        else:
            return None
        if result is not None:
            self.owned.add(node)
        return result

    def _windowed(self, x: Patched, window: _Window, base: Tensor) -> Patched:
        out_h, out_w = base.shape[-2:]
        caps = self._caps((int(out_h), int(out_w)))
        starts: list[Tensor] = []
        lengths: list[int] = []
        for axis, (pos, extent, out_size) in enumerate(
            ((x.top, x.patch.shape[-2], out_h), (x.left, x.patch.shape[-1], out_w))
        ):
            k, s, p, d = (
                window.kernel[axis],
                window.stride[axis],
                window.padding[axis],
                window.dilation[axis],
            )
            reach = (k - 1) * d
            lo = torch.div(pos + p - reach + s - 1, s, rounding_mode="floor").clamp(min=0)
            hi = torch.div(pos + int(extent) - 1 + p, s, rounding_mode="floor").clamp(
                max=int(out_size) - 1
            )
            start, length = _limit(lo, torch.maximum(hi, lo), int(out_size), caps[axis])
            starts.append(start * s - p)
            lengths.append((length - 1) * s + reach + 1)
        region = _region(x, starts[0], starts[1], lengths[0], lengths[1], window.fill)
        out = window.run(region)
        top = (starts[0] + window.padding[0]) // window.stride[0]
        left = (starts[1] + window.padding[1]) // window.stride[1]
        return Patched(base, out, top, left)

    def _merge_boxes(
        self, operands: Sequence[Patched], base: Tensor
    ) -> tuple[Tensor, Tensor, int, int]:
        size_h, size_w = int(base.shape[-2]), int(base.shape[-1])
        caps = self._caps((size_h, size_w))
        top = torch.stack([o.top for o in operands]).amin(0)
        left = torch.stack([o.left for o in operands]).amin(0)
        bottom = torch.stack([o.top + o.patch.shape[-2] - 1 for o in operands]).amax(0)
        right = torch.stack([o.left + o.patch.shape[-1] - 1 for o in operands]).amax(0)
        top, height = _limit(top, bottom, size_h, caps[0])
        left, width = _limit(left, right, size_w, caps[1])
        return top, left, height, width

    def _binary(
        self, node: torch.fx.Node, module: nn.Module | None, args: Sequence[Any], base: Tensor
    ) -> Patched | None:
        a, b = args
        operands = [v for v in (a, b) if isinstance(v, Patched)]
        others = [v for v in (a, b) if not isinstance(v, Patched)]
        if not all(_broadcasts_per_channel(v) for v in others):
            return None
        if any(o.base.shape[-2:] != base.shape[-2:] for o in operands):
            return None
        top, left, height, width = self._merge_boxes(operands, base)

        def cut(v: Any) -> Any:
            return _region(v, top, left, height, width, 0.0) if isinstance(v, Patched) else v

        ca, cb = cut(a), cut(b)
        name = _binary_name(node)
        if self._writable(a, ca, node.args[0], cb):
            out = _BINARY_INPLACE[name](ca, cb)
        elif name != "sub" and self._writable(b, cb, node.args[1], ca):
            out = _BINARY_INPLACE[name](cb, ca)  # addition and product commute
        else:
            out = _BINARY[name](ca, cb)
        self._note(node, "merge")
        return Patched(base, out, top, left)

    def _writable(self, value: Any, cut: Any, source: Any, other: Any) -> bool:
        """Whether the result may be written into ``cut``, the region of ``value`` (from
        node ``source``): it is a copy made for this step, or the patch of a node this step
        alone reads; and the other operand broadcasts to it without a type change."""
        if not isinstance(value, Patched):
            return False
        fresh = cut is not value.patch or (source in self.owned and len(source.users) == 1)
        if not fresh:
            return False
        if isinstance(other, Tensor):
            fits = other.dim() <= cut.dim() and all(
                o in (1, c)
                for o, c in zip(reversed(other.shape), reversed(cut.shape), strict=False)
            )
            return fits and torch.result_type(cut, other) == cut.dtype
        return torch.result_type(cut, other) == cut.dtype

    def _cat(
        self, node: torch.fx.Node, args: Sequence[Any], kwargs: dict[str, Any], base: Tensor
    ) -> Patched | None:
        tensors = args[0]
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        if dim not in (1, -3) or not isinstance(tensors, (list, tuple)):
            return None
        if not all(isinstance(t, Patched) for t in tensors):
            return None
        top, left, height, width = self._merge_boxes(list(tensors), base)
        out = torch.cat([_region(t, top, left, height, width, 0.0) for t in tensors], dim=1)
        self._note(node, "merge")
        return Patched(base, out, top, left)


def _is_elementwise(node: torch.fx.Node, module: nn.Module | None) -> bool:
    """Whether the node maps each value on its own (the interception engine's operation
    registry says which torch callables are activations and rectifiers)."""
    if module is not None:
        return _elementwise_module(module)
    if any(isinstance(a, torch.fx.Node) for a in (*node.args[1:], *node.kwargs.values())):
        return False  # a second tensor operand: not a function of one value
    if node.op == "call_function":
        entry = REGISTRY.get(node.target)  # type: ignore[arg-type]
    elif node.op == "call_method":
        if node.target in _COPY_METHODS:
            return True
        entry = REGISTRY.get(getattr(Tensor, str(node.target), None))  # type: ignore[arg-type]
    else:
        return False
    return entry is not None and entry.kinds <= _ELEMENTWISE_KINDS


def _is_binary(node: torch.fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _BINARY_FUNCTIONS
    return node.op == "call_method" and node.target in _BINARY_METHODS


_BINARY: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "mul": operator.mul,
    "sub": operator.sub,
}
_BINARY_INPLACE: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.iadd,
    "mul": operator.imul,
    "sub": operator.isub,
}


def _binary_name(node: torch.fx.Node) -> str:
    """ "add", "mul" or "sub" for a node that ``_is_binary`` accepts."""
    if node.target is operator.iadd:
        return "add"
    if node.op == "call_function":
        return getattr(node.target, "__name__", "").strip("_")
    return str(node.target).rstrip("_")


def _call(
    node: torch.fx.Node,
    module: nn.Module | None,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    root: nn.Module,
) -> Any:
    if node.op == "call_module":
        assert module is not None
        return module(*args, **kwargs)
    if node.op == "call_function":
        return node.target(*args, **kwargs)  # type: ignore[operator]
    if node.op == "call_method":
        self_obj, *rest = args
        return getattr(self_obj, str(node.target))(*rest, **kwargs)
    if node.op == "get_attr":
        return _attr(root, str(node.target))
    raise RuntimeError(f"unexpected node {node.op}")


def _attr(root: nn.Module, target: str) -> Any:
    value: Any = root
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _base_pass(module: nn.Module, graph: Graph, x: Tensor) -> dict[torch.fx.Node, Any]:
    """Every node's value for the unoccluded item ``x`` (1, C, H, W). In-place operations
    work on copies so each cached value stays what that node produced."""
    values: dict[torch.fx.Node, Any] = {}
    for node in graph.nodes:
        if node.op == "placeholder":
            values[node] = x
        elif node.op == "output":
            values[node] = _fetch(values, node.args[0])
        else:
            submodule = module.get_submodule(str(node.target)) if node.op == "call_module" else None
            args = _fetch(values, node.args)
            kwargs = _fetch(values, node.kwargs)
            if _inplace(node, submodule) and args and isinstance(args[0], Tensor):
                args = (args[0].clone(), *args[1:])
            values[node] = _call(node, submodule, args, kwargs, module)
    return values


def traced_forward(module: nn.Module, x: Tensor) -> Tensor:
    """The model's output computed node by node from the traced graph (for tests: it must
    equal ``module(x)``)."""
    graph = trace(module)
    if isinstance(graph, str):
        raise RuntimeError(graph)
    out = _base_pass(module, graph, x)[graph.output]
    assert isinstance(out, Tensor)
    return out


class Engine:
    """The incremental engine for one model in one occlusion call (BatchNorm folded into
    the convolutions as the model's current parameters say)."""

    def __init__(self, module: nn.Module, graph: Graph) -> None:
        self.program = _program(module, graph)

    def occluder(self, item: Tensor, approximate: float | None = None) -> Occluder:
        return Occluder(self.program, item, approximate)


class Occluder:
    """Scores of occluded copies of one item (1, C, H, W), computed incrementally from one
    traced pass of the unoccluded item (whose output is :attr:`clean`)."""

    def __init__(self, program: _Program, item: Tensor, approximate: float | None) -> None:
        self.program = program
        self.cache = _base_pass(program.module, program.graph, item)
        self.item = item
        self.approximate = approximate

    @property
    def clean(self) -> Any:
        """The model's output for the unoccluded item."""
        return self.cache[self.program.graph.output]

    def outputs(self, patches: Tensor, top: Tensor, left: Tensor) -> Tensor:
        """Model outputs for copies of the item with ``patches`` (N, C, h, w) pasted at
        (top[i], left[i])."""
        start = Patched(self.item, patches, top, left)
        return _Run(self.program, self.cache, self.approximate, None).run(start)

    def plan(self, window: tuple[int, int]) -> IncrementalPlan:
        """What the engine does for one window of ``window`` pixels in the middle of the
        item (its cone is not clipped by the borders)."""
        item = self.item
        result = IncrementalPlan()
        top = (int(item.shape[-2]) - window[0]) // 2
        left = (int(item.shape[-1]) - window[1]) // 2
        patch = item[:, :, top : top + window[0], left : left + window[1]].clone()
        where = (
            torch.tensor([top], device=item.device),
            torch.tensor([left], device=item.device),
        )
        _Run(self.program, self.cache, None, result).run(Patched(item, patch, *where))
        return result


def plan(module: nn.Module, inputs: Tensor, window: tuple[int, int]) -> IncrementalPlan:
    """What the incremental engine does on ``module`` for a window of ``window`` pixels."""
    graph = trace(module)
    if isinstance(graph, str):
        return IncrementalPlan(fallback=graph)
    with torch.inference_mode():
        return Engine(module, graph).occluder(inputs[:1]).plan(window)
