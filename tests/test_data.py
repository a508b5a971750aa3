"""Data sets: image folders (with a cache), CIFAR-10 batches, synthetic shapes, limits."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.data import DataSpec, Split, batch_indices, count_batches, limit, load_data, synthetic
from core.errors import DataError
from tests.helpers import spec, write_folder


def test_image_folder_labels_modes_sizes_and_bad_files(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    write_folder(root, {"zebra": 3, "apple": 2, "mango": 2}, test_dir="val")
    Image.new("L", (20, 10), 128).save(root / "train" / "apple" / "gray.png")
    Image.new("RGBA", (8, 8), (1, 2, 3, 4)).save(root / "train" / "apple" / "alpha.png")
    Image.new("P", (5, 5)).save(root / "train" / "mango" / "palette.gif")
    (root / "train" / "mango" / "empty.jpg").write_bytes(b"")
    (root / "train" / "zebra" / "notes.txt").write_text("not an image")
    (root / "train" / "zebra" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 20)
    seen: list[tuple[str, int, int]] = []
    data = load_data(spec(root, tmp_path / "cache"), lambda m, d, t: seen.append((m, d, t)))
    assert data.classes == ("apple", "mango", "zebra")
    assert data.skipped == 3
    assert data.train.images.shape == (10, 3, 8, 8) and data.train.images.dtype == torch.uint8
    assert data.train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert len(data.test) == 7
    assert any(m.startswith("decoding") and d == t for m, d, t in seen)


def test_a_run_says_how_many_unreadable_images_it_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import cli

    root = tmp_path / "imgs"
    write_folder(root, {"apple": 4, "mango": 4})
    (root / "train" / "apple" / "empty.jpg").write_bytes(b"")
    (root / "train" / "mango" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"0" * 20)
    code, out, err = cli(capsys, "run", "--headless", "--dataset", "imagefolder", "--data-dir", str(root),
                         "--cache-dir", str(tmp_path / "cache"), "--weights", "none", "--image-size", "8",
                         "--batch-size", "4", "--stage-epochs", "1,0,0", "--runs-root", str(tmp_path / "runs"))
    assert code == 0, err
    assert "2 unreadable image files were skipped" in out


def test_one_class_or_a_class_with_nothing_to_train_on_is_one_sentence(tmp_path: Path) -> None:
    lone = tmp_path / "lone"
    write_folder(lone, {"cat": 3})
    with pytest.raises(DataError, match=r"has one class folder, 'cat': a classifier needs two at least"):
        load_data(spec(lone, tmp_path / "cache"), lambda m, d, t: None)
    bare = tmp_path / "bare"
    write_folder(bare, {"cat": 3, "dog": 3})
    for image in (bare / "train" / "dog").iterdir():
        image.unlink()  # its test images stay: the model would be tested on a class it never saw
    with pytest.raises(DataError, match=r"train/dog has no image to train on"):
        load_data(spec(bare, tmp_path / "cache"), lambda m, d, t: None)


def test_image_folder_cache_is_reused_and_rebuilt_when_stale(tmp_path: Path) -> None:
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    write_folder(root, {"a": 2, "b": 2})
    first: list[str] = []
    load_data(spec(root, cache), lambda m, d, t: first.append(m))
    assert any(m.startswith("decoding") for m in first)
    again: list[str] = []
    hit = load_data(spec(root, cache), lambda m, d, t: again.append(m))
    assert not any(m.startswith("decoding") for m in again) and any("from cache" in m for m in again)
    # A changed file makes the cache stale: decoded again, with the new pixels.
    Image.new("RGB", (12, 12), (255, 0, 0)).save(root / "train" / "a" / "0.png")
    os.utime(root / "train" / "a" / "0.png", ns=(1, 1))
    third: list[str] = []
    data = load_data(spec(root, cache), lambda m, d, t: third.append(m))
    assert any(m == "decoding train images" for m in third)
    assert data.train.images[0, 0].float().mean() == 255 and not torch.equal(data.train.images, hit.train.images)
    # A corrupt cache file is rebuilt, never trusted.
    for f in cache.iterdir():
        f.write_bytes(b"junk")
    fourth: list[str] = []
    rebuilt = load_data(spec(root, cache), lambda m, d, t: fourth.append(m))
    assert any(m.startswith("decoding") for m in fourth) and torch.equal(rebuilt.train.images, data.train.images)


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda r: None, "does not exist"),
        (lambda r: r.write_text("x"), "is a file"),
        (lambda r: (r / "train").mkdir(parents=True), "needs train/<class>/"),
        (lambda r: [(r / "train").mkdir(parents=True), (r / "test").mkdir()], "no class folders"),
        (lambda r: [(r / "train" / "a").mkdir(parents=True), (r / "test" / "a").mkdir(parents=True)], "no image files"),
        (
            lambda r: [(r / "train" / "a").mkdir(parents=True), (r / "test" / "b").mkdir(parents=True)],
            "has class 'b'",
        ),
    ],
)
def test_bad_image_folders(tmp_path: Path, setup, match: str) -> None:
    root = tmp_path / "d"
    setup(root)
    with pytest.raises(DataError, match=match) as info:
        load_data(spec(root, tmp_path / "cache"))
    assert "\n" not in str(info.value)


def test_cifar10_from_its_python_batches(fake_cifar: Path) -> None:
    data = load_data(DataSpec(dataset="cifar10", data_dir=str(fake_cifar), download=False))
    assert data.train.images.shape == (100, 3, 32, 32) and len(data.test) == 20
    assert data.classes[0] == "airplane" and data.train.labels[:3].tolist() == [0, 1, 2]
    import pickle

    first = pickle.loads((fake_cifar / "cifar-10-batches-py" / "data_batch_1").read_bytes())["data"][0]
    assert data.train.images[0].flatten().tolist() == first.tolist()  # channels first, as the batches store them


def test_cifar10_absent_without_download_says_where(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not in .*drop --no-download") as info:
        load_data(DataSpec(dataset="cifar10", data_dir=str(tmp_path), download=False))
    assert str(tmp_path) in str(info.value)


def test_cifar10_download_failure_is_one_sentence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import torchvision.datasets.utils as tv_utils

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_utils, "download_url", offline)
    with pytest.raises(DataError, match="cannot download CIFAR-10 .*no network") as info:
        load_data(DataSpec(dataset="cifar10", data_dir=str(tmp_path / "d"), download=True))
    assert "\n" not in str(info.value)


def test_a_cifar_file_that_fails_its_checksum_is_never_unpickled(fake_cifar: Path, tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "pwned"

    class Touch:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for garbage in (b"oops", pickle.dumps(Touch())):
        (fake_cifar / "cifar-10-batches-py" / "data_batch_3").write_bytes(garbage)
        with pytest.raises(DataError, match="do not match their published checksums") as info:
            load_data(DataSpec(dataset="cifar10", data_dir=str(fake_cifar), download=False))
        assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_cifar_archive_is_checked_before_it_is_extracted(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(DataError, match="does not match CIFAR-10's published checksum"):
        load_data(DataSpec(dataset="cifar10", data_dir=str(tmp_path), download=False))
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_limits_are_class_balanced_and_seeded() -> None:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate([50, 30, 20])])
    split = Split(torch.arange(100).view(100, 1, 1, 1).to(torch.uint8).expand(100, 3, 2, 2), labels)
    sub = limit(split, 30, 3, seed=1)
    assert torch.bincount(sub.labels).tolist() == [10, 10, 10]
    assert torch.equal(limit(split, 30, 3, seed=1).images, sub.images)
    assert not torch.equal(limit(split, 30, 3, seed=2).images, sub.images)
    short = limit(split, 75, 3, seed=0)  # class 2 has only 20: the rest is filled from the others
    assert len(short) == 75 and torch.bincount(short.labels)[2] == 20
    assert limit(split, 1000, 3, seed=0) is split


def test_synthetic_is_deterministic_balanced_and_learnable() -> None:
    a, b = synthetic(400, 16, seed=3), synthetic(400, 16, seed=3)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert torch.bincount(a.labels).tolist() == [40] * 10
    assert not torch.equal(synthetic(400, 16, seed=4).images, a.images)
    # A tiny CNN beats chance (10%) by far within a few hundred steps.
    torch.manual_seed(0)
    train, test = synthetic(2000, 16, seed=0), synthetic(500, 16, seed=1)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x = train.images.float() / 255
    for _ in range(6):
        for idx in torch.randperm(2000).split(64):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    acc = (net(test.images.float() / 255).argmax(1) == test.labels).float().mean().item()
    assert acc > 0.5


def test_a_damaged_cache_is_rebuilt_and_a_failing_cache_disk_only_slows_the_next_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    from core import safefs

    root, cache = tmp_path / "imgs", tmp_path / "cache"
    write_folder(root, {"a": 4, "b": 4})
    first = load_data(spec(root, cache))
    (entry,) = [f for f in cache.iterdir() if f.name.startswith("train-")]
    data = bytearray(entry.read_bytes())
    data[-2000:-1990] = bytes(10)  # garbled inside the pixels: torch still loads it
    entry.write_bytes(bytes(data))
    seen: list[str] = []
    again = load_data(spec(root, cache), lambda m, d, t: seen.append(m))
    assert any("decode cache of train is damaged" in m for m in seen) and any(m.startswith("decoding") for m in seen)
    assert torch.equal(again.train.images, first.train.images)

    def full(self, name, data, durable=True):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safefs.Dir, "write_atomic", full)
    fresh = tmp_path / "cache2"
    said: list[str] = []
    loaded = load_data(spec(root, fresh), lambda m, d, t: said.append(m))  # no cache written, nothing lost
    assert torch.equal(loaded.train.images, first.train.images) and not list(fresh.glob("*.pt"))
    assert any("decode cache could not be written" in m and "No space left on device" in m for m in said), said


def test_count_batches_agrees_with_the_batches_for_every_size() -> None:
    cpu = torch.device("cpu")
    for n in range(2, 40):
        batches = batch_indices(n, 8, seed=0, epoch=1, device=cpu)
        assert len(batches) == count_batches(n, 8) and min(len(b) for b in batches) >= 2
        assert sorted(torch.cat(batches).tolist()) == list(range(n))


def test_batches_cover_the_epoch_once_and_depend_on_seed_and_epoch() -> None:
    cpu = torch.device("cpu")
    batches = list(batch_indices(50, 16, seed=0, epoch=1, device=cpu))
    assert [len(b) for b in batches] == [16, 16, 16, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(50))
    again = torch.cat(list(batch_indices(50, 16, seed=0, epoch=1, device=cpu)))
    assert torch.equal(again, torch.cat(batches))
    assert not torch.equal(torch.cat(list(batch_indices(50, 16, seed=0, epoch=2, device=cpu))), again)


def test_classes_with_commas_spaces_and_any_script_can_be_named(tmp_path: Path) -> None:
    from core.config import parse_classes

    root = tmp_path / "imgs"
    write_folder(root, {"a,b": 2, "pickup truck": 2, "狗": 2, "cat": 2})
    wanted = parse_classes("a\\,b, pickup truck ,狗")  # a backslash keeps a comma in the name
    assert wanted == ("a,b", "pickup truck", "狗")
    data = load_data(spec(root, tmp_path / "cache", classes=wanted))
    assert data.classes == wanted and len(data.train) == 6


def png_header(width: int, height: int) -> bytes:
    """A PNG that says it is ``width`` x ``height`` (a decompression bomb's header), with a token body."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_hostile_image_folders_are_skipped_counted_quietly_and_never_decoded_huge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    from PIL import ImageFile

    root = tmp_path / "imgs"
    names = ["猫", "café", "🐱 cat", "\x1b[2Jred"]
    write_folder(root, dict.fromkeys(names, 2))
    for split in ("train", "test"):  # a folder whose name is no UTF-8
        os.mkdir(os.fsencode(root / split) + b"/bytes\xff")
        Image.new("RGB", (6, 6)).save(os.fsdecode(os.fsencode(root / split) + b"/bytes\xff/x.png"))
    junk = root / "train" / "café"
    (junk / "bomb-12k.png").write_bytes(png_header(12_000, 12_000))  # PIL would warn, then decode 432 MB
    (junk / "bomb-20k.png").write_bytes(png_header(20_000, 20_000))  # PIL refuses it
    (junk / "big-9k.png").write_bytes(png_header(9_000, 9_000))  # under PIL's limit, over ours
    (junk / "empty.png").write_bytes(b"")
    (junk / "text.jpg").write_text("not an image")
    os.symlink("loop.png", junk / "loop.png")  # a link to itself
    os.mkfifo(junk / "fifo.png")
    decoded: list[tuple[int, int]] = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or real_load(im))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_data(spec(root, tmp_path / "cache"))
    assert data.skipped == 7
    assert decoded and max(w * h for w, h in decoded) <= 12 * 12  # nothing large was ever decoded
    assert not [w for w in caught if "DecompressionBomb" in type(w.message).__name__]
    assert len(data.classes) == 5 and all(name.isprintable() for name in data.classes)
    assert "bytes\\xff" in data.classes and "\\x1b[2Jred" in data.classes and "猫" in data.classes
    assert len(data.train) == 2 * 4 + 1
    json.dumps(data.classes)  # kept in events and config.json as is


def test_a_limited_image_folder_run_decodes_only_the_images_it_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--limit-train and --classes pick the files before decoding: a first run on 60,000 images
    with --limit-train 2000 decodes 2000 (and the test limit), the same subset as before."""
    import core.data

    root = tmp_path / "imgs"
    write_folder(root, {"a": 12, "b": 9, "c": 7})
    whole = load_data(spec(root, tmp_path / "whole"))
    decoded: list[str] = []
    real = core.data._decode_one
    monkeypatch.setattr(core.data, "_decode_one", lambda path, size: decoded.append(path.name) or real(path, size))
    cut = load_data(spec(root, tmp_path / "cut", limit_train=10, limit_test=5, seed=3))
    assert len(decoded) == 15
    assert torch.equal(cut.train.images, limit(whole.train, 10, 3, seed=3).images)
    assert torch.equal(cut.test.labels, limit(whole.test, 5, 3, seed=3).labels)
    decoded.clear()
    again = load_data(spec(root, tmp_path / "cut", limit_train=10, limit_test=5, seed=3))
    assert decoded == [] and torch.equal(again.train.images, cut.train.images)  # its own cache entry
    two = load_data(spec(root, tmp_path / "cut", classes=("c", "a"), limit_train=6, seed=3))
    assert two.classes == ("a", "c") and len(two.train) == 6 and len(decoded) == 6 + 19
    assert sorted(set(two.train.labels.tolist())) == [0, 1]
    with pytest.raises(DataError, match="--classes names 'z', which the imagefolder data set lacks"):
        load_data(spec(root, tmp_path / "cut", classes=("z",)))
