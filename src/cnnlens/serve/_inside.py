"""Look inside: a layer's activations for an image, one channel over the image with the
receptive field of its peak, a convolution channel's weights, and its feature visualization
(a background job, cached)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._modules import resolve_layer
from .._trace import trace_calls
from ..behaviour import activations, filters, visualize
from ..behaviour._inspect import top_channels
from ..errors import InputError
from ..layers import _channels, _device_dtype, _input_size, receptive_field
from ..render import grid, tensor_to_image
from ..render._behaviour import filter_tiles, rgb_filter_tiles
from ._jobs import Job, Progress, reporting
from ._pictures import ColorScale, data_uri, map_picture, png_bytes, tile_picture

if TYPE_CHECKING:
    from ..models import LoadedModel
    from ._explorer import Explorer, ImageEntry

__all__ = ["Inside", "varied_channel"]


WEIGHTS_SIDE = 192  # the weights picture's width in pixels, about (drawn 1:1 on the page)


class Inside:
    """The explorer's look-inside views; the model, layers and jobs are the explorer's."""

    def __init__(self, explorer: Explorer) -> None:
        self.explorer = explorer
        self._feeders: dict[str, str] | None = None

    def layer_maps(self, entry: ImageEntry, layer: str) -> Tensor:
        """(C, h, w) activations of ``layer`` for the image (recorded once per image)."""
        self.explorer.check_layer(layer)
        maps = entry.activations.get(layer)
        if maps is None:
            maps = activations(self.explorer.model, entry.inputs, layer)[0].detach().float().cpu()
            entry.activations[layer] = maps
        return maps

    def activations_json(self, entry: ImageEntry, layer: str, top: int) -> dict[str, Any]:
        if not 1 <= top <= self.explorer.limits.top_channels:
            raise InputError(
                f"top must be between 1 and {self.explorer.limits.top_channels}, got {top}"
            )
        maps = self.layer_maps(entry, layer)
        values, ids = top_channels(maps[None], top)
        shown = maps[ids[0]]
        scale = ColorScale("inferno", min(0.0, float(shown.min())), float(shown.max()) or 1.0)
        return {
            "image": entry.id,
            "layer": layer,
            "shape": list(maps.shape),
            "channels": int(maps.shape[0]),
            "order": "mean activation, highest first",
            "default_channel": varied_channel(shown, ids[0]),
            "scale": scale.as_json(),
            "tiles": [
                {
                    "channel": int(c),
                    "mean": float(v),
                    "max": float(maps[int(c)].max()),
                    "png": data_uri(tile_picture(maps[int(c)], scale)),
                }
                for v, c in zip(values[0], ids[0], strict=True)
            ],
        }

    def channel_json(self, entry: ImageEntry, layer: str, channel: int) -> dict[str, Any]:
        maps = self.layer_maps(entry, layer)
        if not 0 <= channel < maps.shape[0]:
            raise InputError(f"channel {channel} is out of range for {maps.shape[0]} channels")
        values = maps[channel]
        scale = ColorScale("inferno", min(0.0, float(values.min())), float(values.max()) or 1.0)
        # A constant map (e.g. a ReLU channel that is zero everywhere) has no peak: argmax
        # would name (0, 0) and the box would point at a corner that means nothing.
        constant = bool(values.max() == values.min())
        peak = None if constant else divmod(int(values.flatten().argmax()), values.shape[1])
        size = (entry.picture.height, entry.picture.width)
        return {
            "image": entry.id,
            "layer": layer,
            "channel": channel,
            "mean": float(values.mean()),
            "max": float(values.max()),
            "constant": constant,
            "peak": None if peak is None else list(peak),
            "peak_box": None if peak is None else self._peak_box(layer, *peak),
            "map": data_uri(map_picture(values, scale, size)),
            "scale": scale.as_json(),
        }

    def _peak_box(self, layer: str, y: int, x: int) -> list[int] | None:
        """The input region (top, left, bottom, right) that position (y, x) of ``layer``
        sees, or None where the receptive field cannot be computed."""
        info = next(i for i in self.explorer.layer_infos() if i.name == layer)
        field = info.receptive_field
        if field is None:
            try:
                field = receptive_field(self.explorer.model, layer)
            except InputError:
                return None
        return list(field.box(y, x))

    def weights_json(self, layer: str, channel: int) -> dict[str, Any]:
        """A convolution channel's weights; for a layer without weights (ReLU, batch norm,
        pooling) those of the convolution that feeds it, named in the note."""
        self.explorer.check_layer(layer)
        module = resolve_layer(self.explorer.model.module, layer)
        source, prefix = layer, ""
        if not isinstance(module, nn.Conv2d):
            if self._feeders is None:
                self._feeders = feeding_convolutions(self.explorer.model)
            feeder = self._feeders.get(layer)
            if feeder is None:
                return {
                    "layer": layer,
                    "channel": channel,
                    "weights_of": None,
                    "picture": None,
                    "note": f"{type(module).__name__} has no convolution weights to show",
                }
            prefix = (
                f"{type(module).__name__} has no convolution weights; these are of {feeder}, "
                f"the last convolution run before it with as many channels: "
            )
            source, module = feeder, resolve_layer(self.explorer.model.module, feeder)
            assert isinstance(module, nn.Conv2d)
        if not 0 <= channel < module.out_channels:
            raise InputError(
                f"channel {channel} is out of range for {module.out_channels} channels"
            )
        weights = filters(self.explorer.model.module, module)[channel]  # (in / groups, kh, kw)
        kh, kw = weights.shape[-2:]
        if weights.shape[0] == 3:
            picture = rgb_filter_tiles(weights[None], scale=max(1, WEIGHTS_SIDE // max(kh, kw)))[0]
            note = f"RGB filter {weights.shape[-2]}×{weights.shape[-1]} (grey = 0)"
        else:
            strongest = weights.flatten(1).norm(dim=1).argsort(descending=True)[:64]
            columns = min(8, len(strongest))
            # about WEIGHTS_SIDE px across whatever the count: one depthwise 5×5 kernel is a
            # large square, 64 kernels 3×3 are 24 px tiles
            scale = max(2, WEIGHTS_SIDE // (columns * max(kh, kw)))
            tiles = filter_tiles(weights[strongest], scale=scale)
            picture = grid(tiles, columns=columns, pad=2)
            note = (
                f"{len(tiles)} of {weights.shape[0]} input kernels "
                f"{weights.shape[-2]}×{weights.shape[-1]}, strongest first (blue −, red +)"
            )
        return {
            "layer": layer,
            "channel": channel,
            "weights_of": source,
            "picture": data_uri(png_bytes(picture)),
            "note": prefix + note,
        }

    def visualization_json(self, layer: str, channel: int, steps: int, size: int) -> Any:
        """The feature visualization job already asked for (running or done), else None."""
        self._check_visual(layer, channel, steps, size)
        job = self.explorer.jobs.find(("visualize", layer, channel, steps, size))
        return {"job": None if job is None else job.as_json()}

    def _check_visual(self, layer: str, channel: int, steps: int, size: int) -> None:
        self.explorer.check_layer(layer)
        shape = next(i.output_shape for i in self.explorer.layer_infos() if i.name == layer)
        assert shape is not None
        if not 0 <= channel < shape[0]:
            raise InputError(f"channel {channel} is out of range for {shape[0]} channels")
        if not 1 <= steps <= self.explorer.limits.visualize_steps:
            raise InputError(f"steps must be between 1 and {self.explorer.limits.visualize_steps}")
        if not 32 <= size <= 512:
            raise InputError(f"size must be between 32 and 512 pixels, got {size}")

    def visualize_job(self, layer: str, channel: int, steps: int, size: int) -> Job:
        self._check_visual(layer, channel, steps, size)
        params = {"layer": layer, "channel": channel, "steps": steps, "size": size}

        def work(progress: Progress) -> dict[str, Any]:
            worker = self.explorer.worker_model()
            start = time.perf_counter()
            with reporting(progress):
                image = visualize(
                    worker,
                    f"{layer}:{channel}",
                    steps=steps,
                    seed=0,
                    size=(size, size),
                    progress=False,
                )
            return {
                **params,
                "picture": data_uri(png_bytes(tensor_to_image(image[0]))),
                "seconds": time.perf_counter() - start,
            }

        return self.explorer.jobs.submit(
            "visualize", ("visualize", layer, channel, steps, size), params, work
        )


def varied_channel(maps: Tensor, channels: Tensor) -> int:
    """Of ``channels`` (their maps (n, h, w)), the one whose map varies most over the image
    (largest spatial standard deviation): the channel the page opens on. The most active
    channel is often a constant map (a saturated ReLU6), which shows nothing."""
    spread = maps.flatten(1).double().std(dim=1, correction=0)
    return int(channels[int(spread.argmax())])


def feeding_convolutions(model: LoadedModel) -> dict[str, str]:
    """For each module with a (C, h, w) output that is not a convolution: the last
    ``nn.Conv2d`` that ran before it (its last call) with C output channels, from one
    forward pass of zeros. Execution order, not definition order: a module defined before
    the convolution it follows is still matched."""
    module = model.module
    device, dtype = _device_dtype(module)
    zeros = torch.zeros(
        1, _channels(model, module, None), *_input_size(model, None), device=device, dtype=dtype
    )
    last_conv: dict[int, str] = {}  # output channels -> the last convolution run with them
    feeders: dict[str, str] = {}
    for call in trace_calls(module, zeros):
        if isinstance(call.module, nn.Conv2d):
            last_conv[call.module.out_channels] = call.name
        elif call.output_shape is not None and len(call.output_shape) == 4:
            found = last_conv.get(call.output_shape[1])
            if found is None:
                feeders.pop(call.name, None)
            else:
                feeders[call.name] = found
    return feeders
