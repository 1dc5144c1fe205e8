"""The explorer's state and computation, apart from HTTP: the model and its layers, images
and their cached forward pass, explanations and their curves, and the job runner; the
look-inside views live in ``_inside``, the feature-store views in ``_index``.

Everything returns plain JSON-ready dicts; pictures inside them are PNG data URIs.
Every call on the served model goes through the model guard (``cnnlens._guard``): calls on
one model are serialized, so no two requests interleave their hooks or flags. Long jobs
run on the worker thread on a private copy of the model, and deletion/insertion curves on
another, so a minute of occlusion or a long curve does not hold up a Grad-CAM request.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from .._guard import guard
from .._modules import layer_name, resolve_layer
from ..attribution.api import Explanation, explain, method_spec, registry
from ..behaviour._inspect import mid_feature_layer
from ..dataset import FeatureStore
from ..errors import InputError
from ..evaluate import deletion_insertion
from ..images import sample_description, sample_image, sample_images
from ..layers import LayerInfo, layers
from ..models import LoadedModel
from ._errors import NotFoundError
from ._index import DatasetViews
from ._inside import Inside
from ._jobs import Job, Jobs, Progress, reporting
from ._options import LONG_METHODS, METHOD_OPTIONS, parse_options
from ._pictures import data_uri, map_picture, png_bytes, scale_for

__all__ = ["Explorer", "Limits", "NotFoundError"]


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 40_000_000
    images: int = 8  # images kept with their caches (least recently used dropped)
    explanations: int = 48  # cached explanations per image
    top_channels: int = 256
    visualize_steps: int = 512
    curve_steps: int = 64


ExplainKey = tuple[str, int, str | None, tuple[tuple[str, Any], ...]]


@dataclass
class ImageEntry:
    """One image and everything computed for it."""

    id: str
    name: str
    picture: Image.Image  # the crop the model saw
    inputs: Tensor
    probabilities: Tensor  # (classes,)
    activations: dict[str, Tensor] = field(default_factory=dict)
    explanations: OrderedDict[ExplainKey, tuple[Explanation, float]] = field(
        default_factory=OrderedDict
    )
    curves: dict[tuple[ExplainKey, int], dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExplainRequest:
    method: str
    target: int
    layer: str | None
    options: dict[str, Any]

    @property
    def key(self) -> ExplainKey:
        return (self.method, self.target, self.layer, tuple(sorted(self.options.items())))


class Explorer:
    """The served model, its images and caches, and the job runner."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        store: FeatureStore | None = None,
        dataset: Any = None,
        limits: Limits | None = None,
    ) -> None:
        self.model = model
        self.limits = limits or Limits()
        self.store = store
        self.inside = Inside(self)
        self.index = DatasetViews(self, store, dataset)
        self.jobs = Jobs()
        self._images: OrderedDict[str, ImageEntry] = OrderedDict()
        self._images_lock = threading.Lock()
        self._layers: list[LayerInfo] | None = None
        self._default_layer: str | None = None
        self._copies: dict[str, LoadedModel] = {}
        self._copies_lock = threading.Lock()

    # -- model ------------------------------------------------------------------------------
    def copy_of_model(self, purpose: str) -> LoadedModel:
        """A private copy of the model, one per ``purpose`` (made on first use): ``"jobs"``
        for the job thread, ``"curves"`` for deletion/insertion, so that neither holds up
        the interactive maps on the served model. Each copy has its own guard lock."""
        with self._copies_lock:
            found = self._copies.get(purpose)
            if found is None:
                with guard(self.model) as module:  # not copied halfway through another call
                    copied = copy.deepcopy(module)
                found = dataclasses.replace(self.model, module=copied)
                self._copies[purpose] = found
            return found

    def worker_model(self) -> LoadedModel:
        """The job thread's copy of the model (only that thread runs on it)."""
        return self.copy_of_model("jobs")

    def model_json(self) -> dict[str, Any]:
        methods = []
        for name, spec in sorted(registry().items()):
            methods.append(
                {
                    "name": name,
                    "kind": spec.kind,
                    "uses_layer": spec.uses_layer,
                    "signed": spec.kind in ("input", "occlusion", "cam"),
                    "long": name in LONG_METHODS,
                    "summary": spec.summary,
                    "options": [o.as_json() for o in METHOD_OPTIONS.get(name, ())],
                }
            )
        return {
            "name": self.model.name,
            "input_size": list(self.model.input_size),
            "classes": len(self.model.labels),
            "methods": methods,
            "samples": [{"name": n, "description": sample_description(n)} for n in sample_images()],
            "limits": dataclasses.asdict(self.limits),
            "index": self.index.index_json() if self.store is not None else None,
        }

    def classes_json(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Class labels for completion: those starting with ``query`` first, then those
        containing it, then close spellings."""
        labels = self.model.labels
        q = query.strip().lower()
        if not q:
            hits = list(range(len(labels)))
        else:
            starts = [i for i, label in enumerate(labels) if label.lower().startswith(q)]
            inside = [i for i, label in enumerate(labels) if q in label.lower() and i not in starts]
            hits = starts + inside
            if not hits:
                close = difflib.get_close_matches(q, [label.lower() for label in labels], n=limit)
                hits = [i for c in close for i, label in enumerate(labels) if label.lower() == c]
        return [{"index": i, "label": labels[i]} for i in hits[:limit]]

    def class_index(self, text: str | None, entry: ImageEntry) -> int:
        """A class given as an index or an exact label (any case); none: the top class."""
        if text is None or text == "":
            return int(entry.probabilities.argmax())
        classes = len(entry.probabilities)
        if text.lstrip("-").isdigit():
            index = int(text)
            if not 0 <= index < classes:
                raise InputError(f"class {index} is out of range for {classes} classes")
            return index
        lowered = text.strip().lower()
        for i, label in enumerate(self.model.labels):
            if label.lower() == lowered:
                return i
        close = difflib.get_close_matches(text, self.model.labels, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise InputError(f"unknown class {text!r}{hint}")

    def layer_infos(self) -> list[LayerInfo]:
        """The layers with a spatial feature map (C, h, w) larger than 1×1, with receptive
        fields; computed once (seconds on a large model: the CLI does it before serving)."""
        if self._layers is None:
            found = layers(self.model)
            self._layers = [
                info
                for info in found
                if info.calls
                and info.output_shape is not None
                and len(info.output_shape) == 3
                and info.output_shape[1] * info.output_shape[2] > 1
            ]
        return self._layers

    def layers_json(self) -> list[dict[str, Any]]:
        named = dict(self.model.module.named_modules())
        out = []
        for info in self.layer_infos():
            rf = info.receptive_field
            out.append(
                {
                    "name": info.name,
                    "type": info.type,
                    "shape": list(info.output_shape or ()),
                    "receptive_field": None
                    if rf is None
                    else {"size": list(rf.size), "stride": list(rf.stride)},
                    "weights": isinstance(named.get(info.name), nn.Conv2d),
                }
            )
        return out

    def default_layer(self) -> str | None:
        """The layer "Look inside" opens on: the one the report and ``cnnlens activations``
        show by default (:func:`cnnlens.behaviour._inspect.mid_feature_layer`, one dry pass
        at the model's input size); None when the explorer does not list it."""
        if self._default_layer is None:  # found once; "" when there is none
            height, width = self.model.input_size
            inputs = self.model.preprocess(Image.new("RGB", (width, height), "grey"))
            module = self.model.module
            try:  # (the dry pass locks the model itself before its hooks go on)
                self._default_layer = layer_name(module, mid_feature_layer(module, inputs))
            except InputError:  # no (B, C, H, W) output at all: nothing to look inside
                self._default_layer = ""
        known = {info.name for info in self.layer_infos()}
        return self._default_layer if self._default_layer in known else None

    def check_layer(self, name: str) -> str:
        """``name`` if it is one of the layers the explorer lists, else ``InputError``."""
        known = [info.name for info in self.layer_infos()]
        if name not in known:
            resolve_layer(self.model.module, name)  # unknown name: the usual hint
            raise InputError(f"layer {name!r} has no (C, h, w) feature map to show")
        return name

    # -- images -----------------------------------------------------------------------------
    def add_picture(self, picture: Image.Image, name: str) -> ImageEntry:
        """Register a picture: preprocess, run the model once, keep the result."""
        inputs = self.model.preprocess(picture)
        with guard(self.model) as module, torch.inference_mode():
            logits = module(inputs)
        if logits.dim() != 2:
            raise InputError(
                f"the model's output has shape {tuple(logits.shape)}, not (1, classes)"
            )
        crop = self.model.deprocess(inputs)
        digest = hashlib.sha256(inputs.detach().cpu().numpy().tobytes()).hexdigest()[:16]
        with self._images_lock:
            entry = self._images.get(digest)
            if entry is None:
                entry = ImageEntry(
                    id=digest,
                    name=name,
                    picture=crop,
                    inputs=inputs.detach(),
                    probabilities=logits.float().softmax(dim=1)[0].cpu(),
                )
                self._images[digest] = entry
            self._images.move_to_end(digest)
            while len(self._images) > self.limits.images:
                self._images.popitem(last=False)
        return entry

    def add_sample(self, name: str) -> ImageEntry:
        if name not in sample_images():
            raise NotFoundError(f"no sample image {name!r}; samples: {', '.join(sample_images())}")
        return self.add_picture(sample_image(name), name)

    def entry(self, image_id: str) -> ImageEntry:
        with self._images_lock:
            entry = self._images.get(image_id)
            if entry is None:
                raise NotFoundError(f"no image {image_id!r} (upload it or choose a sample first)")
            self._images.move_to_end(image_id)
            return entry

    def top(self, entry: ImageEntry, k: int) -> list[dict[str, Any]]:
        values, ids = entry.probabilities.topk(max(1, min(k, len(entry.probabilities))))
        return [
            {"index": int(i), "label": self.model.label(int(i)), "probability": float(v)}
            for v, i in zip(values, ids, strict=True)
        ]

    def image_json(self, entry: ImageEntry) -> dict[str, Any]:
        return {
            "id": entry.id,
            "name": entry.name,
            "size": [entry.picture.height, entry.picture.width],
            "picture": data_uri(png_bytes(entry.picture)),
            "top": self.top(entry, 5),
        }

    # -- explanations -----------------------------------------------------------------------
    def explain_request(
        self,
        entry: ImageEntry,
        method: str,
        target: str | None,
        layer: str | None,
        query: Mapping[str, str],
    ) -> ExplainRequest:
        spec = method_spec(method)
        if layer and not spec.uses_layer:
            raise InputError(f"method {method!r} works on the input and takes no layer")
        return ExplainRequest(
            method=method,
            target=self.class_index(target, entry),
            layer=self.check_layer(layer) if layer else None,
            options=parse_options(method, query),
        )

    def explanation(
        self, entry: ImageEntry, request: ExplainRequest, progress: Progress | None = None
    ) -> tuple[Explanation, float, bool]:
        """The explanation (cached per image), the seconds it took, and whether it was cached.
        With ``progress`` it runs on the worker's copy, counting forward passes."""
        cached = entry.explanations.get(request.key)
        if cached is not None:
            return cached[0], cached[1], True
        options = dict(request.options)
        if "progress" in method_spec(request.method).options:
            options["progress"] = False  # no bar on the server's terminal; jobs listen instead
        start = time.perf_counter()
        if progress is None:
            result = explain(
                self.model,
                entry.inputs,
                request.method,
                target=request.target,
                layer=request.layer,
                **options,
            )
        else:
            worker = self.worker_model()
            with reporting(progress):
                result = explain(
                    worker,
                    entry.inputs,
                    request.method,
                    target=request.target,
                    layer=request.layer,
                    **options,
                )
        seconds = time.perf_counter() - start
        entry.explanations[request.key] = (result, seconds)
        while len(entry.explanations) > self.limits.explanations:
            entry.explanations.popitem(last=False)
        return result, seconds, False

    def explain_json(
        self,
        entry: ImageEntry,
        request: ExplainRequest,
        *,
        display: str = "heatmap",
        values: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        if display not in ("heatmap", "signed"):
            raise InputError(f"display must be 'heatmap' or 'signed', got {display!r}")
        explanation, seconds, cached = self.explanation(entry, request, progress)
        shown = self._display_map(explanation, display)
        size = (entry.picture.height, entry.picture.width)
        clip = 0.995 if explanation.kind == "input" else None
        scale = scale_for(shown, signed=display == "signed", clip=clip)
        out: dict[str, Any] = {
            "image": entry.id,
            "method": request.method,
            "target": request.target,
            "label": self.model.label(request.target),
            "layer": explanation.layer,
            "options": request.options,
            "kind": explanation.kind,
            "signed": explanation.signed,
            "display": display,
            "seconds": seconds,
            "cached": cached,
            "map": data_uri(map_picture(shown, scale, size)),
            "scale": scale.as_json(),
        }
        if values:
            out["values"] = shown.tolist()
        return out

    def _display_map(self, explanation: Explanation, display: str) -> Tensor:
        """``heatmap``: the contract's [0, 1] map; ``signed``: the raw signed map in the
        attribution's units (summed over colour channels for input-space methods)."""
        if display == "heatmap":
            return explanation.heatmap()[0].cpu()
        if not explanation.signed:
            raise InputError(f"{explanation.method} gives a non-negative map; use display=heatmap")
        raw = explanation.attribution[0].detach().float().cpu()
        return raw.sum(dim=0) if raw.dim() == 3 else raw

    def curves_json(self, entry: ImageEntry, request: ExplainRequest, steps: int) -> dict[str, Any]:
        if not 2 <= steps <= self.limits.curve_steps:
            raise InputError(f"steps must be between 2 and {self.limits.curve_steps}, got {steps}")
        key = (request.key, steps)
        found = entry.curves.get(key)
        if found is not None:
            return found
        explanation, _, _ = self.explanation(entry, request)
        start = time.perf_counter()
        with guard(self.copy_of_model("curves")) as model:
            curves = deletion_insertion(
                model,
                entry.inputs,
                explanation,
                steps=steps,
                target=request.target,
                progress=False,
            )
        result = {
            "image": entry.id,
            "method": request.method,
            "target": request.target,
            "layer": explanation.layer,
            "steps": steps,
            "ranking": curves.ranking,
            "deletion_auc": float(curves.deletion_auc[0]),
            "insertion_auc": float(curves.insertion_auc[0]),
            "deletion": [float(v) for v in curves.deletion_curve[0]],
            "insertion": [float(v) for v in curves.insertion_curve[0]],
            "seconds": time.perf_counter() - start,
        }
        entry.curves[key] = result
        return result

    # -- jobs -------------------------------------------------------------------------------
    def explain_job(self, entry: ImageEntry, request: ExplainRequest, display: str) -> Job:
        params = {
            "image": entry.id,
            "method": request.method,
            "target": request.target,
            "layer": request.layer,
            "options": request.options,
            "display": display,
        }

        def work(progress: Progress) -> dict[str, Any]:
            return self.explain_json(entry, request, display=display, progress=progress)

        return self.jobs.submit(
            "explain", ("explain", entry.id, request.key, display), params, work
        )
