"""The views over a feature store (``--index``): the image's nearest neighbours in feature
and pixel space, a channel's top dataset patches, and the dataset's items as pictures."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from ..dataset import FeatureStore, open_dataset, pixel_nearest, top_patches
from ..errors import InputError
from ..render import tensor_to_image
from ._errors import NotFoundError
from ._jobs import Job, Progress, reporting
from ._pictures import data_uri, png_bytes

if TYPE_CHECKING:
    from ._explorer import Explorer, ImageEntry

__all__ = ["DatasetViews"]


class DatasetViews:
    """Neighbours, patches and items of the feature store given with ``--index`` (and the
    dataset it indexes: given, else the one the store names, opened on first use)."""

    def __init__(self, explorer: Explorer, store: FeatureStore | None, dataset: Any) -> None:
        self.explorer = explorer
        self.store = store
        self._dataset = dataset

    def dataset(self) -> Any:
        if self.store is None:
            raise NotFoundError("no feature store: start the server with --index STORE")
        if self._dataset is None:
            if self.store.dataset is None:
                raise InputError("the feature store does not record which dataset it indexes")
            self._dataset = open_dataset(self.store.dataset)
        return self._dataset

    def index_json(self) -> dict[str, Any]:
        if self.store is None:
            raise NotFoundError("no feature store: start the server with --index STORE")
        return {
            "rows": self.store.count,
            "dim": self.store.dim,
            "model": self.store.model_name,
            "layer": self.store.layer,
            "dataset": self.store.dataset,
        }

    def item_png(self, row: int) -> bytes:
        data = self.dataset()
        if not 0 <= row < len(data):
            raise NotFoundError(f"no item {row}: the dataset has {len(data)} items")
        picture = data[row][0]
        if not isinstance(picture, Image.Image):
            picture = tensor_to_image(torch.as_tensor(picture))
        return png_bytes(self.explorer.model.preprocessing.crop_image(picture))

    def _item(self, row: int, distance: float) -> dict[str, Any]:
        assert self.store is not None
        return {
            "row": row,
            "distance": distance,
            "label": self.store.label_name(row) if row < self.store.count else None,
            "picture": f"/api/index/items/{row}.png",
        }

    def neighbors_job(self, entry: ImageEntry, k: int) -> Job:
        store = self.store
        if store is None:
            raise NotFoundError("no feature store: start the server with --index STORE")
        if not 1 <= k <= min(64, store.count):
            raise InputError(f"k must be between 1 and {min(64, store.count)}, got {k}")
        params = {"image": entry.id, "k": k}

        def work(progress: Progress) -> dict[str, Any]:
            worker = self.explorer.worker_model()
            progress.update(0, None, "feature space")
            rows, distances = store.nearest(entry.picture, k, model=worker)
            features = [self._item(int(r), float(d)) for r, d in zip(rows, distances, strict=True)]
            with reporting(progress):
                rows, distances = pixel_nearest(
                    self.dataset(), entry.picture, k, model=worker, progress=False
                )
            pixels = [self._item(int(r), float(d)) for r, d in zip(rows, distances, strict=True)]
            return {
                **params,
                "feature_space": features,
                "pixel_space": pixels,
                "layer": store.layer,
            }

        return self.explorer.jobs.submit("neighbors", ("neighbors", entry.id, k), params, work)

    def patches_job(self, layer: str, channel: int, k: int) -> Job:
        self.explorer.check_layer(layer)
        data = self.dataset()
        if not 1 <= k <= 36:
            raise InputError(f"k must be between 1 and 36, got {k}")
        params = {"layer": layer, "channel": channel, "k": k}

        def work(progress: Progress) -> dict[str, Any]:
            worker = self.explorer.worker_model()
            with reporting(progress):
                found = top_patches(worker, data, layer, channels=[channel], k=k, progress=False)
            patches = []
            for patch in found[channel]:
                pixels = worker.preprocessing.invert(patch.pixels)
                picture = tensor_to_image(pixels)
                side = max(picture.size)
                if side < 64:  # tiny patches (28-pixel datasets) are shown enlarged
                    factor = max(1, 64 // side)
                    picture = picture.resize(
                        (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
                    )
                patches.append(
                    {
                        "row": patch.index,
                        "activation": patch.activation,
                        "position": list(patch.position),
                        "box": list(patch.box),
                        "picture": data_uri(png_bytes(picture)),
                        "label": self.store.label_name(patch.index)
                        if self.store is not None and patch.index < self.store.count
                        else None,
                    }
                )
            return {**params, "patches": patches}

        return self.explorer.jobs.submit("patches", ("patches", layer, channel, k), params, work)
