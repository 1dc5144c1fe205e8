"""The Ray engine gives exactly the local engine's features, patches and pixel neighbours,
on a local Ray and on a two-node cluster (every node bound to 127.0.0.1), survives a
worker killed mid-job, and a driver killed mid-job resumes from its committed shards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import cnnlens
from cnnlens import FeatureStore, InputError
from cnnlens.dataset._sources import Head, fashion_mnist_root

# Ray replaces a loopback node address by the machine's network address unless it runs as
# a single-machine cluster; tests here talk to 127.0.0.1 only. Set before Ray is imported.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="Ray not installed (pip install 'cnnlens[ray]')")

pytestmark = pytest.mark.skipif(
    fashion_mnist_root() is None,
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; make system-deps)",
)

LAYER = "features.relu3"
PATCH_LAYER = "features.relu2"


def start_local_ray() -> None:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level="WARNING",
        configure_logging=False,
    )


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    """One local Ray for the module (starting it costs seconds on two cores)."""
    if ray.is_initialized():
        ray.shutdown()
    start_local_ray()
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def model() -> cnnlens.LoadedModel:
    return cnnlens.load_model("fashion_cnn")


def fashion(count: int) -> Head:
    return Head(cnnlens.datasets.fashion_mnist("test"), count)


def queries() -> list[Any]:
    train = cnnlens.datasets.fashion_mnist("train")
    return [train[i][0] for i in range(3)]


def assert_same_patches(ours: dict[int, Any], theirs: dict[int, Any]) -> None:
    assert list(ours) == list(theirs)
    for channel in ours:
        a, b = ours[channel], theirs[channel]
        assert [(p.index, p.position, p.activation, p.box) for p in a] == [
            (p.index, p.position, p.activation, p.box) for p in b
        ]
        assert all(torch.equal(p.pixels, q.pixels) for p, q in zip(a, b, strict=True))


def compare_engines(model: cnnlens.LoadedModel, count: int, tmp: Path, **options: Any) -> None:
    """Features (in memory and in a store), patches and pixel neighbours: Ray == local."""
    data = fashion(count)
    rows = 128 if count <= 1000 else 512
    local = cnnlens.extract_features(model, data, LAYER, shard_rows=rows, progress=False)
    if count > 1000:  # the in-memory path too (one Ray job more: slow tests only)
        remote = cnnlens.extract_features(
            model, data, LAYER, shard_rows=rows, progress=False, engine="ray", **options
        )
        np.testing.assert_array_equal(remote.features, local.features)
        np.testing.assert_array_equal(remote.labels, local.labels)
    stored = cnnlens.extract_features(
        model, data, LAYER, shard_rows=rows, out=tmp / "ray", engine="ray", **options
    )
    np.testing.assert_array_equal(np.asarray(stored.features), local.features)
    np.testing.assert_array_equal(stored.labels, local.labels)
    FeatureStore.open(tmp / "ray").verify()

    # Many channels of a rectified layer are 0 in places: ties are settled the same way.
    channels = [0, 1, 2, 5]
    patches = cnnlens.top_patches(model, data, PATCH_LAYER, channels=channels, k=6)
    remote_patches = cnnlens.top_patches(
        model, data, PATCH_LAYER, channels=channels, k=6, engine="ray", **options
    )
    assert_same_patches(remote_patches, patches)

    near = cnnlens.pixel_nearest(data, queries(), 7, model=model)
    remote_near = cnnlens.pixel_nearest(data, queries(), 7, model=model, engine="ray", **options)
    np.testing.assert_array_equal(remote_near[0], near[0])
    np.testing.assert_array_equal(remote_near[1], near[1])
    stored_near = stored.nearest(queries(), 5, model=model)
    local_near = local.nearest(queries(), 5, model=model)
    np.testing.assert_array_equal(stored_near[0], local_near[0])


def test_ray_engine_equals_local(
    local_ray: None, model: cnnlens.LoadedModel, tmp_path: Path
) -> None:
    compare_engines(model, 400, tmp_path, workers=1)


def test_ray_workers_refuse_other_weights(local_ray: None, model: cnnlens.LoadedModel) -> None:
    with pytest.raises(InputError, match="Ray worker loaded has weights"):
        cnnlens.extract_features(
            model,
            fashion(64),
            LAYER,
            progress=False,
            engine="ray",
            workers=1,
            model_spec={"spec": "fashion_cnn", "pretrained": False},
        )


def test_engine_ray_without_ray_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)
    data = torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8))
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    for call in (
        lambda: cnnlens.extract_features(net, data, "0", engine="ray"),
        lambda: cnnlens.top_patches(net, data, "0", engine="ray"),
        lambda: cnnlens.pixel_nearest(data, torch.zeros(1, 8, 8), 1, engine="ray"),
    ):
        with pytest.raises(InputError, match=r"pip install 'cnnlens\[ray\]'"):
            call()
    with pytest.raises(InputError, match="engine must be one of local, ray"):
        cnnlens.extract_features(net, data, "0", engine="spark")


# -- acceptance: a few thousand images, a two-node cluster, faults --------------------------


@pytest.mark.slow
def test_ray_equals_local_on_thousands_of_images(
    local_ray: None, model: cnnlens.LoadedModel, tmp_path: Path
) -> None:
    compare_engines(model, 3000, tmp_path)


@pytest.mark.slow
def test_two_node_cluster_equals_local(model: cnnlens.LoadedModel, tmp_path: Path) -> None:
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ray.init(address=cluster.address, logging_level="WARNING", configure_logging=False)
        cluster.wait_for_nodes()
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        # Here each actor loads the model from its spec instead of the object store.
        compare_engines(model, 3000, tmp_path, workers=2, model_spec={"spec": "fashion_cnn"})
    finally:
        ray.shutdown()
        cluster.shutdown()


class KillsItsWorker(torch.utils.data.Dataset[Any]):
    """Reading item ``fatal`` the first time (anywhere) kills the process reading it."""

    def __init__(self, base: Any, fatal: int, marker: Path) -> None:
        self.base = base
        self.fatal = fatal
        self.marker = marker
        self.driver = os.getpid()  # never kill the test process itself
        self.spec = getattr(base, "spec", None)
        self.classes = getattr(base, "classes", None)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Any:
        if index == self.fatal and os.getpid() != self.driver and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return self.base[index]


@pytest.mark.slow
def test_a_worker_killed_mid_job_is_retried_and_the_result_is_exact(
    local_ray: None, model: cnnlens.LoadedModel, tmp_path: Path
) -> None:
    base = fashion(2048)
    marker = tmp_path / "killed"
    data = KillsItsWorker(base, 1300, marker)
    clean = cnnlens.extract_features(model, base, LAYER, shard_rows=256, progress=False)
    remote = cnnlens.extract_features(
        model, data, LAYER, shard_rows=256, out=tmp_path / "s", engine="ray", workers=2
    )
    assert marker.exists(), "no worker was killed"
    assert int(marker.read_text()) != os.getpid()
    np.testing.assert_array_equal(np.asarray(remote.features), clean.features)
    np.testing.assert_array_equal(remote.labels, clean.labels)
    marker.unlink()
    patches = cnnlens.top_patches(model, base, PATCH_LAYER, channels=[3, 4], k=5)
    remote_patches = cnnlens.top_patches(
        model, data, PATCH_LAYER, channels=[3, 4], k=5, engine="ray", workers=2
    )
    assert marker.exists()
    assert_same_patches(remote_patches, patches)


_DRIVER = """
import sys, time
import ray
import cnnlens
from cnnlens.dataset import _shards
from cnnlens.dataset._sources import Head
write = _shards.write_shard
def slow_write(*args, **kwargs):
    time.sleep(1.0)
    return write(*args, **kwargs)
_shards.write_shard = slow_write
ray.init(address=sys.argv[1], logging_level="WARNING", configure_logging=False)
model = cnnlens.load_model("fashion_cnn")
data = Head(cnnlens.datasets.fashion_mnist("test"), 2048)
cnnlens.extract_features(model, data, "features.relu3", shard_rows=256, out=sys.argv[2],
                         engine="ray", workers=2, progress=False)
"""


@pytest.mark.slow
def test_a_killed_driver_resumes_from_its_committed_shards(
    local_ray: None, model: cnnlens.LoadedModel, tmp_path: Path
) -> None:
    folder = tmp_path / "store"
    address = ray.get_runtime_context().gcs_address
    with subprocess.Popen([sys.executable, "-c", _DRIVER, address, str(folder)]) as driver:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            manifest = folder / "manifest.json"
            if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 2:
                break
            assert driver.poll() is None, "the driver ended early"
            time.sleep(0.05)
        driver.kill()
    partial = json.loads((folder / "manifest.json").read_text())
    assert 2 <= len(partial["shards"]) < 8
    resumed = cnnlens.extract_features(
        model,
        fashion(2048),
        LAYER,
        shard_rows=256,
        out=folder,
        engine="ray",
        workers=2,
        progress=False,
    )
    clean = cnnlens.extract_features(
        model, fashion(2048), LAYER, shard_rows=256, out=tmp_path / "clean", progress=False
    )
    assert resumed.count == clean.count == 2048
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(clean.features))
    np.testing.assert_array_equal(resumed.labels, clean.labels)
    for shard in (tmp_path / "clean" / "shards").iterdir():
        assert (folder / "shards" / shard.name).read_bytes() == shard.read_bytes()


@pytest.mark.slow
def test_atlas_dataset_passes_on_ray_equal_local(
    local_ray: None, model: cnnlens.LoadedModel
) -> None:
    from cnnlens._atlas import build_atlas

    data = cnnlens.datasets.fashion_mnist("test")
    kwargs: dict[str, Any] = {"channels": 2, "k": 3, "steps": 2, "sample": 300, "progress": False}
    local = build_atlas(model, data, ["features.relu2"], **kwargs)
    remote = build_atlas(model, data, ["features.relu2"], engine="ray", workers=1, **kwargs)
    for a, b in zip(local.layers[0].channels, remote.layers[0].channels, strict=True):
        assert [(p.index, p.position, p.activation) for p in a.patches] == [
            (p.index, p.position, p.activation) for p in b.patches
        ]
    np.testing.assert_array_equal(local.points, remote.points)
    assert local.queries == remote.queries


@pytest.mark.slow
def test_index_and_patches_commands_on_ray(
    local_ray: None, model: cnnlens.LoadedModel, tmp_path: Path
) -> None:
    from cnnlens.cli import main

    args = ["fashion-mnist:test", "--model", "fashion_cnn", "--limit", "256"]
    ray_args = ["--engine", "ray", "--ray-workers", "1"]
    store = tmp_path / "store"
    assert main(["index", *args, "--layer", LAYER, *ray_args, "-o", str(store)]) == 0
    local = cnnlens.extract_features(model, fashion(256), LAYER, progress=False)
    np.testing.assert_array_equal(np.asarray(FeatureStore.open(store).features), local.features)
    assert main(["index", "--verify", "-o", str(store)]) == 0
    assert (
        main(["patches", *args, "--channels", "0-1", *ray_args, "-o", str(tmp_path / "p.png")]) == 0
    )
    assert main(["index", *args, "--address", "auto", "-o", str(tmp_path / "x")]) == 2
