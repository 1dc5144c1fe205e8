"""The Ray engine: the dataset's shards computed by a pool of Ray actors.

A job is a Ray Data dataset with one row per pending shard (``{"shard": i}``, one block
each), mapped with ``map_batches`` over an actor pool. Each actor loads the model once —
from the spec the user gave (``model_spec``: ``load_model`` arguments) or from the module
shipped once through the object store — and the dataset once (shipped the same way: a
folder or file list travels as paths, which every node must see; Fashion-MNIST and tensor
datasets as their arrays). It checks the model's weight fingerprint against the driver's,
then computes whole shards with the local engine's code, batched from each shard's own
start, so a shard's bits are the local engine's. Results stream back to the driver as they
finish; the driver writes and commits them (workers need no shared file system). An actor
that dies is restarted and its shard retried (Ray Data's defaults for actor pools).
"""

from __future__ import annotations

import contextlib
import logging
import pickle
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError

__all__ = ["RayOptions", "ray_session", "ray_shards", "require_ray", "run_job", "run_remote"]


def require_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError:
        raise InputError("engine='ray' needs Ray: pip install 'cnnlens[ray]'") from None
    return ray


@dataclass(frozen=True)
class RayOptions:
    """``address``: a Ray cluster (``"auto"`` joins the one running on this machine; none
    starts a local one, unless Ray is already initialized in this process). ``workers``:
    actors in the pool (default: as many as the cluster's CPUs, or GPUs with ``num_gpus``,
    allow). ``num_cpus`` / ``num_gpus``: resources per actor (with GPUs the model runs on
    ``cuda``). ``model_spec``: ``load_model`` keyword arguments each actor loads the model
    with, instead of receiving it through the object store."""

    address: str | None = None
    workers: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    model_spec: dict[str, Any] | None = None


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Ray, initialized: the caller's session if there is one, else one started (or joined,
    with ``address``) for this job and shut down after it."""
    ray = require_ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray
    finally:
        ray.shutdown()


class ModelSource:
    """How actors get the model: ``load_model(**spec)``, or an object-store reference."""

    def __init__(self, model: Any, spec: dict[str, Any] | None, ray: Any) -> None:
        self.spec = spec
        self.ref = None if spec is not None else ray.put(model)

    def load(self, ray: Any, device: str) -> Any:
        if self.spec is not None:
            from ..models import load_model

            return load_model(**{**self.spec, "device": device})
        model = ray.get(self.ref)
        from ..models import LoadedModel

        module = model.module if isinstance(model, LoadedModel) else model
        module.to(device)
        return model


class ShardWorker:
    """A Ray Data actor: loads the model and dataset once, then turns ``{"shard": [i]}``
    batches into ``{"shard": [i], "result": [pickled result]}``. ``job(info, data, index)``
    computes one shard's result."""

    def __init__(
        self,
        job: Callable[[Any, Any, int], Any],
        model: ModelSource | None,
        data_ref: list[Any],
        layer: str | None,
        fingerprint: str | None,
        device: str,
        threads: int,
    ) -> None:
        import ray
        import torch

        from ._batches import model_info, probe_input

        torch.set_num_threads(threads)
        self.job = job
        self.data = ray.get(data_ref[0])
        self.info = None
        # Raised with the first shard, not here: Ray Data retries a failing constructor and
        # then reports the actor's death, while a shard's error reaches the driver as is.
        self.error: InputError | None = None
        if model is not None:
            loaded = model.load(ray, device)
            probe = probe_input(self.data, getattr(loaded, "preprocessing", None))
            self.info = model_info(loaded, layer, probe)
            if self.info.fingerprint != fingerprint:
                self.error = InputError(
                    f"the model a Ray worker loaded has weights {self.info.fingerprint}, not "
                    f"the driver's {fingerprint}: install the same model files on every node"
                )

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.error is not None:
            raise self.error
        shards = [int(i) for i in batch["shard"]]
        results = [pickle.dumps(self.job(self.info, self.data, i)) for i in shards]
        out = np.empty(len(results), dtype=object)
        out[:] = results
        return {"shard": np.asarray(shards, dtype=np.int64), "result": out}


def run_job(
    job: Callable[[Any, Any, int], Any],
    model: Any,
    data: Any,
    info: Any,
    pending: list[int],
    options: RayOptions,
) -> Iterator[tuple[int, Any]]:
    """``(shard, job(info, data, shard))`` for every pending shard, in the order they
    finish, computed by an actor pool on the Ray cluster of ``options.address``."""
    ray = require_ray()
    if not pending:
        return
    with ray_session(options.address):
        import ray.data

        with warnings.catch_warnings():
            # Ray Data's context warns about its own deprecated defaults when it is made.
            warnings.simplefilter("ignore", DeprecationWarning)
            context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own bar counts rows
        context.print_on_execution_start = False
        device = "cuda" if options.num_gpus > 0 else "cpu"
        source = None if model is None else ModelSource(model, options.model_spec, ray)
        data_ref = [ray.put(data)]
        workers = options.workers or _default_workers(ray, options)
        shards = ray.data.from_items(
            [{"shard": i} for i in pending], override_num_blocks=len(pending)
        )
        results = shards.map_batches(
            ShardWorker,
            batch_size=1,
            fn_constructor_args=(
                job,
                source,
                data_ref,
                None if info is None else info.layer_name,
                None if info is None else info.fingerprint,
                device,
                max(1, int(options.num_cpus)),
            ),
            compute=ray.data.ActorPoolStrategy(size=max(1, min(workers, len(pending)))),
            num_cpus=options.num_cpus,
            num_gpus=options.num_gpus,
        )
        try:
            with _quiet_ray_data():
                for row in results.iter_rows():
                    yield int(row["shard"]), pickle.loads(row["result"])
        except Exception as exc:
            cause = _input_error(exc)
            if cause is not None:
                raise InputError(str(cause)) from None
            raise


@contextlib.contextmanager
def _quiet_ray_data() -> Iterator[None]:
    """Ray Data logs every execution at INFO and warns that its bars are off (ours count
    the rows); keep its warnings about real problems."""
    loggers = {
        logging.getLogger("ray.data"): logging.WARNING,
        logging.getLogger("ray.data._internal.progress"): logging.ERROR,
    }
    before = {logger: logger.level for logger in loggers}
    try:
        for logger, level in loggers.items():
            logger.setLevel(max(level, logger.getEffectiveLevel()))
        yield
    finally:
        for logger, level in before.items():
            logger.setLevel(level)


def _default_workers(ray: Any, options: RayOptions) -> int:
    resources = ray.cluster_resources()
    if options.num_gpus > 0:
        return max(1, int(resources.get("GPU", 0) / options.num_gpus))
    return max(1, int(resources.get("CPU", 1) / max(options.num_cpus, 1e-3)))


def _input_error(exc: BaseException) -> InputError | None:
    """The ``InputError`` a worker raised, through Ray's wrappers (which keep the original
    exception object, or at least its traceback text)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, InputError):
            return current
        cause = getattr(current, "cause", None)
        if isinstance(cause, BaseException) and id(cause) not in seen:
            current = cause
        else:
            current = current.__cause__ or current.__context__
    found = re.findall(r"cnnlens\.errors\.InputError: ([^\n]+)", str(exc))
    return InputError(found[-1]) if found else None


def run_remote(
    job: Any,
    model: Any,
    data: Any,
    info: Any,
    options: dict[str, Any],
    tick: Callable[[int], None],
    pending: list[int] | None = None,
) -> Iterator[tuple[int, Any]]:
    """:func:`run_job` for a job with ``shard_rows`` and ``total`` (default: all its
    shards), counting each finished shard's rows with ``tick``."""
    count = -(-job.total // job.shard_rows)
    shards = list(range(count)) if pending is None else pending
    for index, result in run_job(job, model, data, info, shards, _options(options)):
        tick(min(job.shard_rows, job.total - index * job.shard_rows))
        yield index, result


def ray_shards(
    model: Any,
    data: Any,
    info: Any,
    pool: str,
    batch_size: int,
    plan: Any,
    tick: Callable[[int], None],
    num_workers: int = 0,
    **options: Any,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``extract_features``' shards on Ray: (shard, features, labels) as they finish."""
    job = FeatureJob(pool, batch_size, plan.rows, plan.total, num_workers)
    for index, (features, labels) in run_remote(
        job, model, data, info, options, tick, plan.pending
    ):
        yield index, features, labels


def _options(options: dict[str, Any]) -> RayOptions:
    try:
        return RayOptions(**options)
    except TypeError as exc:
        raise InputError(f"unknown Ray option: {exc}") from None


@dataclass(frozen=True)
class FeatureJob:
    """One shard's features and labels, computed as the local engine does."""

    pool: str
    batch_size: int
    shard_rows: int
    total: int
    num_workers: int = 0  # DataLoader processes inside the actor (decoding pictures)

    def __call__(self, info: Any, data: Any, index: int) -> tuple[np.ndarray, np.ndarray]:
        from ._store import ShardPlan, local_shards

        plan = ShardPlan(self.shard_rows, self.total, [index])
        ((_, features, labels),) = local_shards(
            info, data, self.pool, self.batch_size, self.num_workers, plan, lambda _n: None
        )
        return features, labels
