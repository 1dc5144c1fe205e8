"""Dataset-scale analysis: sources, feature store (streaming, resume, refusal), nearest
neighbours against brute force, pixel-space neighbours, embeddings, top patches."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

import cnnlens
from cnnlens import FeatureStore, InputError
from cnnlens._hooks import count_hooks
from cnnlens.dataset import ImageFolder, Patch, embed, fashion_mnist
from cnnlens.dataset._content import sample_indices
from cnnlens.dataset._shards import ShardedArray
from cnnlens.dataset._sources import fashion_mnist_root
from cnnlens.models import LoadedModel, Preprocessing

needs_fashion = pytest.mark.skipif(
    fashion_mnist_root() is None,
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist; make system-deps)",
)


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def tensor_data(n: int = 70, size: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(n, 1, size, size, generator=g), torch.arange(n) % 3)


class Flaky(Dataset[tuple[Tensor, int]]):
    """Wraps a dataset; raises at ``fail_at`` while ``armed``; records what was read."""

    def __init__(self, base: TensorDataset, fail_at: int) -> None:
        self.base = base
        self.fail_at = fail_at
        self.armed = True
        self.read: list[int] = []

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        if self.armed and index == self.fail_at:
            raise RuntimeError("simulated crash while reading")
        self.read.append(index)
        x, y = self.base[index]
        return x, int(y)


# -- sources -------------------------------------------------------------------------------


@needs_fashion
def test_fashion_mnist_reads_the_real_files() -> None:
    test = fashion_mnist("test")
    assert len(test) == 10_000
    assert len(cnnlens.datasets.fashion_mnist("train")) == 60_000
    image, label = test[0]
    assert isinstance(image, Image.Image) and image.size == (28, 28) and image.mode == "L"
    assert label == 9  # the first test item is an ankle boot
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert abs(float(test.tensors().mean()) - 0.2868) < 0.002


def test_fashion_mnist_missing_is_a_clear_input_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNLENS_FASHION_MNIST", str(tmp_path))
    with pytest.raises(InputError, match="install the Debian package dataset-fashion-mnist"):
        fashion_mnist("test")
    with pytest.raises(InputError, match="t10k-images-idx3-ubyte"):
        fashion_mnist("test", root=tmp_path)
    with pytest.raises(InputError, match="split"):
        fashion_mnist("valid", root=tmp_path)


def _png(path: Path, value: int, size: tuple[int, int] = (10, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_image_folder_classes_and_flat(tmp_path: Path) -> None:
    _png(tmp_path / "cls" / "b" / "1.png", 10)
    _png(tmp_path / "cls" / "a" / "2.png", 20)
    _png(tmp_path / "cls" / "a" / "1.png", 30)
    (tmp_path / "cls" / "a" / "notes.txt").write_text("not an image")
    folder = ImageFolder(tmp_path / "cls")
    assert folder.classes == ["a", "b"]
    assert [folder.source(i) for i in range(len(folder))] == ["a/1.png", "a/2.png", "b/1.png"]
    assert [folder[i][1] for i in range(3)] == [0, 0, 1]
    assert folder[0][0].getpixel((0, 0)) == (30, 30, 30)
    _png(tmp_path / "flat" / "x.png", 5)
    flat = ImageFolder(tmp_path / "flat")
    assert flat.classes is None and flat[0][1] == -1
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        ImageFolder(tmp_path / "empty")


# -- extraction ----------------------------------------------------------------------------


def reference(net: nn.Module, data: TensorDataset, upto: int, pool: str) -> np.ndarray:
    """Features computed the slow way: the prefix of the Sequential on all items at once."""
    x = data.tensors[0]
    with torch.no_grad():
        out = net[: upto + 1](x)
    if pool == "avg":
        return out.mean(dim=(2, 3)).numpy()
    return out.flatten(1).numpy()


@pytest.mark.parametrize("pool", ["avg", "flatten"])
def test_extract_features_matches_the_layer_output(pool: str, untouched: Any) -> None:
    net, data = small_net(), tensor_data()
    snap = untouched.take(net, data.tensors[0][:2])
    store = cnnlens.extract_features(net, data, "4", batch_size=16, pool=pool)
    snap.assert_same(net, data.tensors[0][:2])
    expected = reference(net, data, 4, pool)
    assert store.features.dtype == np.float32 and store.features.shape == expected.shape
    np.testing.assert_allclose(store.features, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(store.labels, data.tensors[1].numpy())
    assert store.complete and len(store) == 70 and store.layer == "4"


def test_items_may_be_pictures_tensors_or_bare(tmp_path: Path) -> None:
    net = small_net()
    pre = Preprocessing(crop=(12, 12), resize=12, mean=(0.5,) * 3, std=(0.25,) * 3, grayscale=True)
    model = LoadedModel(net, "tiny", ["a", "b", "c"], pre)
    rng = np.random.default_rng(0)
    pictures = [Image.fromarray(rng.integers(0, 255, (12, 12), dtype=np.uint8)) for _ in range(5)]
    with_labels = [(p, i % 3) for i, p in enumerate(pictures)]
    store = cnnlens.extract_features(model, with_labels, "1", batch_size=2)
    direct = cnnlens.activations(net, model.preprocess(pictures), "1").mean(dim=(2, 3))
    np.testing.assert_allclose(store.features, direct.numpy(), rtol=1e-5, atol=1e-6)
    assert store.labels.tolist() == [0, 1, 2, 0, 1]
    bare = [model.preprocess(p)[0] for p in pictures]  # tensors, no labels
    store2 = cnnlens.extract_features(net, bare, "1", batch_size=3)
    np.testing.assert_allclose(store2.features, store.features, rtol=1e-5, atol=1e-6)
    assert store2.labels.tolist() == [-1] * 5
    with pytest.raises(InputError, match="different shapes"):
        cnnlens.extract_features(net, [torch.zeros(1, 8, 8), torch.zeros(1, 9, 9)], "1")
    with pytest.raises(InputError, match="unknown layer"):
        cnnlens.extract_features(net, bare, "nope")
    with pytest.raises(InputError, match="pool"):
        cnnlens.extract_features(net, bare, "1", pool="median")


def test_store_on_disk_reopens_and_workers_agree(tmp_path: Path) -> None:
    net, data = small_net(), tensor_data()
    memory = cnnlens.extract_features(net, data, "4", batch_size=16)
    # A list of (tensor, label) items goes through DataLoader workers, not the tensor fast path.
    items = list(zip(*data.tensors, strict=True))
    disk = cnnlens.extract_features(
        net, items, "4", batch_size=16, out=tmp_path / "s", num_workers=1
    )
    again = FeatureStore.open(tmp_path / "s")
    assert isinstance(again.features, ShardedArray)
    assert all(isinstance(p, np.memmap) and not p.flags.writeable for p in again.features.parts)
    np.testing.assert_array_equal(again.features, memory.features)
    np.testing.assert_array_equal(disk.labels, memory.labels)
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["count"] == manifest["total"] == 70 and manifest["dim"] == 8
    assert manifest["model"] == "Sequential" and manifest["layer"] == "4"
    assert len(manifest["fingerprint"]) == 16
    with pytest.raises(InputError, match="not a feature store"):
        FeatureStore.open(tmp_path)


def test_interrupted_extraction_resumes_to_the_clean_result(tmp_path: Path) -> None:
    net, base = small_net(), tensor_data()
    kwargs: dict[str, Any] = {"batch_size": 16, "shard_rows": 16}
    clean = cnnlens.extract_features(net, base, "4", out=tmp_path / "clean", **kwargs)
    flaky = Flaky(base, fail_at=37)
    with pytest.raises(RuntimeError, match="simulated crash"):
        cnnlens.extract_features(net, flaky, "4", out=tmp_path / "s", **kwargs)
    partial = FeatureStore.open(tmp_path / "s")
    assert partial.count == 32 and not partial.complete  # two whole shards committed
    assert len(partial.features) == 32
    flaky.armed, flaky.read = False, []
    resumed = cnnlens.extract_features(net, flaky, "4", out=tmp_path / "s", **kwargs)
    # Nothing before the committed rows was read again, except the probe (item 0) and the
    # items the dataset's content id samples.
    looked_at = {0, *sample_indices(70)}
    assert sorted(set(flaky.read) - looked_at) == sorted(set(range(32, 70)) - looked_at)
    assert resumed.complete
    assert sorted(p.name for p in (tmp_path / "s" / "shards").iterdir()) == sorted(
        p.name for p in (tmp_path / "clean" / "shards").iterdir()
    )
    for shard in (tmp_path / "clean" / "shards").iterdir():
        assert (tmp_path / "s" / "shards" / shard.name).read_bytes() == shard.read_bytes()
    np.testing.assert_array_equal(resumed.features, clean.features)
    # A complete store is returned as is, without computing anything again.
    flaky.read = []
    cnnlens.extract_features(net, flaky, "4", out=tmp_path / "s", **kwargs)
    assert set(flaky.read) <= looked_at


def test_store_refuses_another_model_layer_pooling_or_dataset(tmp_path: Path) -> None:
    net, data = small_net(), tensor_data()
    cnnlens.extract_features(net, data, "4", out=tmp_path / "s")
    other = small_net()
    with torch.no_grad():
        other[0].weight.add_(0.01)
    with pytest.raises(InputError, match="model weights"):
        cnnlens.extract_features(other, data, "4", out=tmp_path / "s")
    with pytest.raises(InputError, match="layer '4', not '1'"):
        cnnlens.extract_features(net, data, "1", out=tmp_path / "s")
    with pytest.raises(InputError, match="pooling"):
        cnnlens.extract_features(net, data, "4", pool="max", out=tmp_path / "s")
    with pytest.raises(InputError, match="dataset size"):
        cnnlens.extract_features(net, tensor_data(50), "4", out=tmp_path / "s")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    with pytest.raises(InputError, match="not a feature store"):
        cnnlens.extract_features(net, data, "4", out=tmp_path / "busy")
    store = FeatureStore.open(tmp_path / "s")
    with pytest.raises(InputError, match="model weights"):
        store.nearest(data.tensors[0][0], 3, model=other)


# -- nearest neighbours --------------------------------------------------------------------


def brute_force(base: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    b, q = base.astype(np.float64), queries.astype(np.float64)
    if metric == "cosine":
        b = b / np.linalg.norm(b, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        d = 1.0 - q @ b.T
    else:
        d = np.sqrt(((q[:, None, :] - b[None, :, :]) ** 2).sum(-1))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.stack([order, np.take_along_axis(d, order, axis=1)])


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_nearest_equals_brute_force(metric: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(500, 24)).astype(np.float32)
    queries = rng.normal(size=(20, 24)).astype(np.float32)
    store = FeatureStore.from_arrays(base)
    indices, distances = store.nearest(queries, 7, metric=metric)
    expected = brute_force(base, queries, 7, metric)
    np.testing.assert_array_equal(indices, expected[0].astype(np.int64))
    np.testing.assert_allclose(distances, expected[1], rtol=1e-4, atol=1e-5)
    one_i, _ = store.nearest(torch.from_numpy(queries[3]), 7, metric=metric)
    np.testing.assert_array_equal(one_i, indices[3])
    with pytest.raises(InputError, match="k must be"):
        store.nearest(queries, 501)
    with pytest.raises(InputError, match="expected"):
        store.nearest(queries[:, :5], 3)
    with pytest.raises(InputError, match="metric"):
        store.nearest(queries, 3, metric="dot")


def test_nearest_with_pictures_uses_the_stores_layer(tmp_path: Path) -> None:
    net, data = small_net(), tensor_data()
    store = cnnlens.extract_features(net, data, "4", out=tmp_path / "s")
    x = data.tensors[0][5:8]
    by_image, d_image = store.nearest(x, 4, model=net)
    by_vector, _ = store.nearest(reference(net, data, 4, "avg")[5:8], 4)
    np.testing.assert_array_equal(by_image, by_vector)
    assert by_image[:, 0].tolist() == [5, 6, 7]
    np.testing.assert_allclose(d_image[:, 0], 0.0, atol=1e-5)
    assert count_hooks(net) == 0


def clustered(
    n: int, dim: int, clusters: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points around random centres: (points, queries from the same clusters, labels)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)) * 4.0
    labels = rng.integers(0, clusters, n)
    base = centres[labels] + rng.normal(size=(n, dim))
    queries = centres[rng.integers(0, clusters, 200)] + rng.normal(size=(200, dim))
    return base.astype(np.float32), queries.astype(np.float32), labels


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_approximate_index_recall_at_10(metric: str) -> None:
    base, queries, _ = clustered(20_000, 32, 100, seed=3)
    store = FeatureStore.from_arrays(base)
    store.approximate_above = 10_000  # so this moderate store gets the IVF index
    approx, _ = store.nearest(queries, 10, metric=metric)
    searcher = store._searchers[metric, False]
    assert not searcher.exact and searcher.nprobe >= 1
    exact, _ = store.nearest(queries, 10, metric=metric, exact=True)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.95, recall
    assert (approx != exact).any() or searcher.nprobe < searcher.index.nlist  # really approximate


def test_pixel_nearest_equals_brute_force() -> None:
    data = tensor_data(90, 10)
    query = torch.rand(2, 1, 10, 10)
    indices, distances = cnnlens.pixel_nearest(data, query, 5, batch_size=32)
    expected = brute_force(data.tensors[0].flatten(1).numpy(), query.flatten(1).numpy(), 5, "l2")
    np.testing.assert_array_equal(indices, expected[0].astype(np.int64))
    np.testing.assert_allclose(distances, expected[1], rtol=1e-5)
    # A picture of another size is compared after resizing the items to its size.
    small = Image.fromarray((np.random.default_rng(0).random((5, 5)) * 255).astype(np.uint8))
    one_i, one_d = cnnlens.pixel_nearest(data, small, 3)
    assert one_i.shape == (3,) and (np.diff(one_d) >= 0).all()


# -- embeddings ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embed_is_seeded_and_deterministic(method: str) -> None:
    base, _, labels = clustered(300, 16, 4, seed=5)
    first = embed(base, method, seed=1)
    again = embed(torch.from_numpy(base), method, seed=1)
    assert first.shape == (300, 2)
    np.testing.assert_array_equal(first, again)
    if method == "tsne":
        other = embed(base, method, seed=2)
        assert not np.allclose(first, other)
        # Clusters stay clusters: each point's nearest map neighbour shares its cluster.
        d = ((first[:, None] - first[None]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        assert (labels[d.argmin(1)] == labels).mean() > 0.95
    with pytest.raises(InputError, match="method"):
        embed(base, "mds")


def test_pca_embedding_is_the_top_principal_subspace() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    points = embed(x, "pca", dims=2)
    np.testing.assert_allclose(points.var(axis=0, ddof=1), [25.0, 9.0], rtol=0.25)
    centred = x - x.mean(0)
    _, s, _ = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.linalg.norm(points, axis=0), s[:2], rtol=1e-5)


@pytest.mark.slow
def test_umap_is_seeded_and_deterministic() -> None:
    base, _, _ = clustered(200, 8, 3, seed=2)
    first = embed(base, "umap", seed=0)
    np.testing.assert_array_equal(first, embed(base, "umap", seed=0))
    assert first.shape == (200, 2)


# -- top patches ---------------------------------------------------------------------------


def test_top_patches_equal_brute_force(untouched: Any) -> None:
    net, data = small_net(), tensor_data(40, 12)
    x = data.tensors[0]
    snap = untouched.take(net, x[:2])
    found = cnnlens.top_patches(net, data, "3", channels=[0, 2, 7], k=5, batch_size=7)
    snap.assert_same(net, x[:2])
    with torch.no_grad():
        acts = net[:4](x)  # (40, 8, 4, 4): every activation of the layer
    field = cnnlens.receptive_field(net, "3", (12, 12))
    assert list(found) == [0, 2, 7]
    for channel, patches in found.items():
        flat = acts[:, channel].reshape(-1)
        values, where = flat.topk(5)
        assert [p.activation for p in patches] == pytest.approx(values.tolist(), abs=1e-6)
        for patch, w in zip(patches, where.tolist(), strict=True):
            index, rest = divmod(w, 16)
            assert isinstance(patch, Patch) and patch.channel == channel
            assert (patch.index, patch.position) == (index, divmod(rest, 4))
            top, left, bottom, right = patch.box
            box = field.box(*patch.position)
            assert (top, left) == (max(0, box[0]), max(0, box[1]))
            assert torch.equal(patch.pixels, x[index][:, top:bottom, left:right])
            assert 0 < bottom - top <= 12 and 0 < right - left <= 12
    with pytest.raises(InputError, match="out of range"):
        cnnlens.top_patches(net, data, "3", channels=[8])


def test_top_patches_keep_memory_to_k_per_channel() -> None:
    from cnnlens.dataset._patches import TopK

    running = TopK(channels=3, k=4)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(5, 3, 6, generator=g) for _ in range(6)]
    for i, b in enumerate(batches):
        running.update(b, offset=5 * i)
        assert running.values.shape[1] <= 4
    everything = torch.cat(batches).permute(1, 0, 2).reshape(3, -1)
    values, where = everything.topk(4, dim=1)
    assert torch.equal(running.values, values)
    assert torch.equal(running.keys, where)


def test_ivf_pq_index_reranks_to_the_target_recall() -> None:
    from cnnlens.dataset._nearest import Searcher

    base, queries, _ = clustered(8_000, 16, 50, seed=4)
    searcher = Searcher(base, "l2", exact=False, kind="ivf-pq")
    assert searcher.kind == "ivf-pq" and searcher.recall is not None and searcher.recall >= 0.95
    found, distances = searcher.search(queries, 10)
    truth = brute_force(base, queries, 10, "l2")
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth[0], strict=True)])
    assert recall >= 0.95, recall
    # Reranked answers carry exact distances.
    hits = found == truth[0].astype(np.int64)
    np.testing.assert_allclose(distances[hits], truth[1][hits], rtol=1e-4)


def test_approximate_index_is_saved_next_to_the_store_and_reports_its_recall(
    tmp_path: Path,
) -> None:
    base, queries, _ = clustered(6_000, 16, 40, seed=6)
    data = TensorDataset(torch.from_numpy(base).reshape(-1, 16, 1, 1))
    net = nn.Sequential(nn.Identity())
    cnnlens.extract_features(net, data, "0", out=tmp_path / "s", progress=False)
    store = FeatureStore.open(tmp_path / "s")
    store.approximate_above = 1_000
    found, _ = store.nearest(queries, 10, metric="l2")
    info = store.index_info("l2")
    assert info["kind"] == "ivf-flat" and info["recall_at_10"] >= 0.95 and info["nprobe"] >= 1
    assert (tmp_path / "s" / "index-l2.faiss").is_file()
    again = FeatureStore.open(tmp_path / "s")
    again.approximate_above = 1_000
    np.testing.assert_array_equal(again.nearest(queries, 10, metric="l2")[0], found)
    assert again.index_info("l2") == info  # loaded, not rebuilt: same build time
    assert store.index_info("l2", exact=True)["recall_at_10"] == 1.0


def test_top_k_order_is_total_and_splits_merge_exactly() -> None:
    """Ties (here: many) are settled by dataset index then position, so scanning the data
    in any batches, or in parts whose top-k are merged, gives the brute-force order."""
    from cnnlens.dataset._patches import TopK

    g = torch.Generator().manual_seed(3)
    maps = torch.randint(0, 3, (50, 4, 9), generator=g).float()  # values 0, 1, 2: ties
    flat = maps.permute(1, 0, 2).reshape(4, -1)
    keys = torch.arange(flat.shape[1])
    expected = [sorted(zip((-flat[c]).tolist(), keys.tolist(), strict=True))[:7] for c in range(4)]
    for batch in (1, 7, 50):
        running = TopK(4, 7)
        for start in range(0, 50, batch):
            running.update(maps[start : start + batch], start)
        got = [
            list(zip((-running.values[c]).tolist(), running.keys[c].tolist(), strict=True))
            for c in range(4)
        ]
        assert got == expected, batch
    parts = []
    for start in (0, 20, 35):
        part = TopK(4, 7)
        part.update(maps[start : {0: 20, 20: 35, 35: 50}[start]], start)
        parts.append(part)
    merged = TopK(4, 7)
    for part in reversed(parts):  # the order parts arrive in does not matter
        merged.merge(part.values, part.keys)
    assert torch.equal(merged.keys, running.keys) and torch.equal(merged.values, running.values)


@pytest.mark.parametrize("tie", ["none", "at the k-th", "inside the k first", "nan"])
def test_select_top_is_the_total_order_with_and_without_ties(tie: str) -> None:
    """select_top against sorting by (value descending, key ascending): random floats (its
    shortcut: no ties), a tie at the k-th value only, a tie among the k first, NaN."""
    from cnnlens.dataset._patches import select_top

    g = torch.Generator().manual_seed(5)
    values = torch.randn(6, 40, generator=g)
    keys = torch.randperm(240, generator=g).view(6, 40)
    kth = values.sort(dim=1, descending=True).values[:, 4]
    if tie == "at the k-th":  # in every row: which of the two topk keeps is arbitrary
        for row in range(6):
            values[row, (values[row] < kth[row]).nonzero()[0]] = kth[row].item()
    elif tie == "inside the k first":
        first = values[2].argmax()
        values[2, (values[2] < kth[2]).nonzero()[0]] = values[2, first].item()
    elif tie == "nan":
        values[3, 7] = torch.nan
    got_values, got_keys = select_top(values, keys, 5)
    for row in range(6):
        v = torch.nan_to_num(values[row], nan=-torch.inf).tolist()
        expected = sorted(zip((-x for x in v), keys[row].tolist(), strict=True))[:5]
        got = list(zip((-got_values[row]).tolist(), got_keys[row].tolist(), strict=True))
        assert got == expected, (tie, row)


def test_an_index_that_cannot_keep_the_recall_promise_is_not_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Vectors without structure: product quantization (here reranking only k candidates)
    cannot rank them well enough, so the searcher keeps the vectors (IVF-Flat) instead."""
    from cnnlens.dataset import _nearest
    from cnnlens.dataset._nearest import Searcher

    monkeypatch.setattr(_nearest, "RERANK", (1,))
    rng = np.random.default_rng(5)
    base = rng.normal(size=(3_000, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    searcher = Searcher(base, "l2", exact=False, kind="ivf-pq")
    assert searcher.kind == "ivf-flat" and searcher.info()["recall_at_10"] >= 0.95
    found, _ = searcher.search(queries, 10)
    truth = brute_force(base, queries, 10, "l2")[0]
    assert np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)]) >= 0.9


def test_open_dataset_refuses_an_empty_spec_and_a_missing_folder(tmp_path: Path) -> None:
    # Path("") is the current folder: an empty spec must not open it as a dataset.
    from cnnlens.datasets import open_dataset

    for spec in ("", "  "):
        with pytest.raises(InputError, match="the dataset is empty"):
            open_dataset(spec)
    with pytest.raises(InputError, match="no such folder"):
        open_dataset(tmp_path / "missing")
