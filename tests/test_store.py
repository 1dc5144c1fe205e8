"""The feature store cannot lie: every damage of a store (manifest, shards, dataset, a
second writer, an interrupted creation) is a one-line InputError saying what is wrong and
which shards to redo, and a resume after redoing them equals a clean run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import cnnlens
from cnnlens import FeatureStore, InputError
from cnnlens.dataset import _shards
from cnnlens.dataset._shards import ShardedArray

TOTAL = 4000
SHARD_ROWS = 512  # 8 shards, the last one of 416 rows


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten()
    ).eval()


def data(seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(TOTAL, 1, 8, 8, generator=g), torch.arange(TOTAL) % 10)


def extract(out: Path, dataset: TensorDataset | None = None, **kwargs: Any) -> FeatureStore:
    return cnnlens.extract_features(
        small_net(),
        data() if dataset is None else dataset,
        "1",
        batch_size=64,
        shard_rows=SHARD_ROWS,
        out=out,
        progress=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("clean") / "store"
    extract(folder)
    return folder


@pytest.fixture
def store(clean: Path, tmp_path: Path) -> Path:
    """A fresh copy of the clean store to damage."""
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(clean, copy)
    return copy


def assert_same_as_clean(folder: Path, clean: Path) -> None:
    """Row count, ids, labels and values, and every shard file byte for byte."""
    ours, theirs = FeatureStore.open(folder), FeatureStore.open(clean)
    assert ours.count == theirs.count == TOTAL and ours.complete
    np.testing.assert_array_equal(np.asarray(ours.features), np.asarray(theirs.features))
    np.testing.assert_array_equal(ours.labels, theirs.labels)
    names = sorted(p.name for p in (clean / "shards").iterdir())
    assert sorted(p.name for p in (folder / "shards").iterdir()) == names
    for name in names:
        assert (folder / "shards" / name).read_bytes() == (clean / "shards" / name).read_bytes()
    ids = np.concatenate(
        [np.load(folder / "shards" / n)[:, 0] for n in names if n.endswith(".rows.npy")]
    )
    np.testing.assert_array_equal(ids, np.arange(TOTAL))


def edit_manifest(folder: Path, **changes: Any) -> None:
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def one_line_error(call: Any, *patterns: str) -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for pattern in patterns:
        assert pattern in message, (pattern, message)
    return message


def test_clean_store_layout(clean: Path) -> None:
    manifest = json.loads((clean / "manifest.json").read_text())
    assert manifest["version"] == 2 and manifest["count"] == TOTAL
    assert [e["shard"] for e in manifest["shards"]] == list(range(8))
    assert manifest["shards"][-1]["stop"] - manifest["shards"][-1]["start"] == TOTAL - 7 * 512
    assert manifest["dataset_id"].startswith("arrays:")
    opened = FeatureStore.open(clean)
    opened.verify()
    assert isinstance(opened.features, ShardedArray) and len(opened.features.parts) == 8
    x = data().tensors[0]
    with torch.no_grad():
        expected = small_net()[:2](x).mean(dim=(2, 3)).numpy()
    np.testing.assert_allclose(np.asarray(opened.features), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("count", "says"),
    [
        (99999, "count 99999 is not between 0 and the store's 4000 rows"),
        (-5, "count -5 is not between 0"),
        ("4000", "count '4000' is not a whole number"),
        ("many", "count 'many' is not a whole number"),
        (1000, "count 1000 is not the 4000 rows of its 8 completed shards"),
    ],
)
def test_impossible_counts_are_refused_and_redo_all_repairs(
    store: Path, clean: Path, count: Any, says: str
) -> None:
    edit_manifest(store, count=count)
    for call in (lambda: FeatureStore.open(store), lambda: extract(store)):
        one_line_error(call, "manifest.json is damaged", says, "redo='all'", "--redo all")
    extract(store, redo="all")
    assert_same_as_clean(store, clean)


def damage_file(path: Path, how: str) -> None:
    if how == "truncate":
        with open(path, "r+b") as handle:
            handle.truncate(5000)
    elif how == "flip":
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        path.write_bytes(bytes(raw))
    else:
        path.unlink()


@pytest.mark.parametrize(
    ("file", "how", "says"),
    [
        ("000002.npy", "truncate", "is 5000 bytes, not 8320 (truncated)"),
        ("000002.npy", "flip", "does not match its checksum"),
        ("000005.rows.npy", "flip", "does not match its checksum"),
        ("000005.npy", "delete", "is missing"),
    ],
)
def test_damaged_shard_is_named_and_redoing_it_equals_a_clean_run(
    store: Path, clean: Path, file: str, how: str, says: str
) -> None:
    damage_file(store / "shards" / file, how)
    shard = int(file[:6])
    rows = f"rows {shard * 512}-{shard * 512 + 511}"
    for call in (
        lambda: FeatureStore.open(store),
        lambda: extract(store),
    ):
        one_line_error(call, f"shard {shard} ({rows})", says, f"redo=[{shard}]", f"--redo {shard}")
    # Opened without checksums, a flipped feature byte is not seen; verify() sees it.
    if how == "flip" and file == "000002.npy":
        one_line_error(FeatureStore.open(store, verify=False).verify, "checksum")
    extract(store, redo=[shard])
    assert_same_as_clean(store, clean)


def test_several_damaged_shards_are_all_named(store: Path, clean: Path) -> None:
    damage_file(store / "shards" / "000001.npy", "flip")
    damage_file(store / "shards" / "000006.npy", "truncate")
    one_line_error(lambda: FeatureStore.open(store), "shard 1 (", "shard 6 (", "redo=[1, 6]")
    extract(store, redo=[1, 6])
    assert_same_as_clean(store, clean)
    one_line_error(lambda: extract(store, redo=[8]), "do not exist")


def test_another_dataset_of_the_same_size_is_refused(store: Path) -> None:
    other = data(seed=2)
    one_line_error(lambda: extract(store, dataset=other), "made from another dataset")
    # Not even redo='all' touches a store of another dataset.
    one_line_error(lambda: extract(store, dataset=other, redo="all"), "another dataset")
    assert len(list((store / "shards").iterdir())) == 16
    one_line_error(lambda: FeatureStore.open(store).check_dataset(other), "another dataset")
    FeatureStore.open(store).check_dataset(data())


def test_a_second_writer_is_refused(store: Path, clean: Path) -> None:
    (store / "manifest.json").write_text(
        json.dumps({**json.loads((store / "manifest.json").read_text()), "shards": []}).replace(
            f'"count": {TOTAL}', '"count": 0'
        )
    )
    with _shards.writer_lock(store):
        one_line_error(lambda: extract(store), "is being written by another process (pid")
    # A writer that dies (here: killed) releases its lock with it.
    with subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(store / "lock")], stdout=subprocess.PIPE
    ) as holder:
        assert holder.stdout is not None and holder.stdout.readline().strip() == b"locked"
        one_line_error(lambda: extract(store), f"pid {holder.pid}")
        holder.kill()
    extract(store)
    assert_same_as_clean(store, clean)


_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.ftruncate(fd, 0); os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
print("locked", flush=True)
time.sleep(60)
"""


def test_an_interrupted_creation_can_be_created_again(
    tmp_path: Path, clean: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "store"

    def crash(*_args: Any) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(_shards, "write_manifest", crash)
        with pytest.raises(KeyboardInterrupt):
            extract(folder)
    assert not folder.exists()
    # A creation killed outright leaves its temporary folder; the next one removes it.
    leftover = tmp_path / ".store.creating-abandoned"
    leftover.mkdir()
    (leftover / "lock").write_text("")
    folder.mkdir()  # an empty folder is fine too
    extract(folder)
    assert not leftover.exists()
    assert_same_as_clean(folder, clean)
    assert [p.name for p in tmp_path.iterdir()] == ["store"]


def test_killed_writer_resumes_to_the_clean_result(tmp_path: Path, clean: Path) -> None:
    """A process killed in the middle of writing: the shards it committed are kept, the one
    it was writing is redone."""
    folder = tmp_path / "store"
    script = _KILLED_WRITER.format(src=str(Path(__file__).parents[1]), out=str(folder))
    with subprocess.Popen([sys.executable, "-c", script], env={**os.environ}) as writer:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            manifest = folder / "manifest.json"
            if manifest.is_file() and len(json.loads(manifest.read_text())["shards"]) >= 3:
                break
            assert writer.poll() is None, "the writer ended early"
            time.sleep(0.02)
        writer.kill()
    partial = FeatureStore.open(folder)
    assert 3 * 512 <= partial.count < TOTAL
    extract(folder)
    assert_same_as_clean(folder, clean)


_KILLED_WRITER = """
import sys, time
sys.path.insert(0, {src!r})
import tests.test_store as t
from cnnlens.dataset import _shards
slow = _shards.write_shard
def write(*args, **kwargs):
    time.sleep(0.3)
    return slow(*args, **kwargs)
_shards.write_shard = write
t.extract(__import__("pathlib").Path({out!r}))
"""


def test_version_1_store_says_how_to_rebuild(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir()
    (folder / "manifest.json").write_text(
        json.dumps({"format": "cnnlens.feature-store", "version": 1, "count": 3})
    )
    one_line_error(lambda: FeatureStore.open(folder), "version-1", "rebuild", "-o NEW")


def test_sharded_array_indexes_like_numpy() -> None:
    rng = np.random.default_rng(0)
    whole = rng.normal(size=(23, 3)).astype(np.float32)
    rows = ShardedArray([whole[:5], whole[5:12], whole[12:]], 3)
    assert rows.shape == (23, 3) and len(rows) == 23
    np.testing.assert_array_equal(np.asarray(rows), whole)
    for key in (
        4,
        -1,
        slice(3, 17),
        slice(None, None, 4),
        slice(20, 2, -3),
        [0, 22, 5, 5, 11],
        np.array([[1, 2], [13, 6]]),
        whole[:, 0] > 0,
        (slice(2, 9), 1),
        (7, slice(0, 2)),
        (np.array([3, 19]), [0, 2]),
    ):
        np.testing.assert_array_equal(rows[key], whole[key], err_msg=repr(key))
    with pytest.raises(IndexError):
        rows[23]
    with pytest.raises(IndexError):
        rows[[0, 30]]


def test_index_verify_and_redo_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from cnnlens.cli import main

    rng = np.random.default_rng(0)
    for i in range(40):
        folder = tmp_path / "pics" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    store = tmp_path / "store"
    index = ["index", str(tmp_path / "pics"), "--model", "fashion_cnn", "-o", str(store)]
    assert main([*index, "--shard-rows", "16", "--batch-size", "8"]) == 0
    assert main(["index", "--verify", "-o", str(store)]) == 0
    assert "3 shards verified, complete" in capsys.readouterr().out
    clean = np.asarray(FeatureStore.open(store).features)

    damage_file(store / "shards" / "000001.npy", "flip")
    capsys.readouterr()
    assert main(["index", "--verify", "-o", str(store)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "shard 1 (rows 16-31)" in err and "--redo 1" in err
    assert main([*index, "--batch-size", "8"]) == 2  # resuming refuses too
    assert main([*index, "--batch-size", "8", "--redo", "1"]) == 0
    assert main(["index", str(tmp_path / "pics"), "--verify", "-o", str(store)]) == 0
    np.testing.assert_array_equal(np.asarray(FeatureStore.open(store).features), clean)
    # A picture replaced after indexing: the store no longer describes the folder.
    Image.new("L", (28, 28), 7).save(tmp_path / "pics" / "a" / "1.png")
    os.utime(tmp_path / "pics" / "a" / "1.png", (1, 1))
    capsys.readouterr()
    assert main(["index", str(tmp_path / "pics"), "--verify", "-o", str(store)]) == 2
    assert "made from another dataset" in capsys.readouterr().err
    assert main(["index", "--model", "fashion_cnn", "-o", str(store)]) == 2
