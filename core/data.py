"""Data sets decoded once into uint8 tensors, and the batches cut from them.

Each split is ``N x 3 x H x W`` uint8 images plus int64 labels. Image folders are
decoded once and cached on disk; the training split then lives on the training
device and every batch is an index into it (no DataLoader, no PIL in the loop).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import urllib.error
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from core.config import DATASETS
from core.errors import DataError
from core.events import clean_text

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SYNTHETIC_CLASSES = (
    "disk", "square", "triangle", "ring", "plus", "cross", "hbar", "vbar", "diamond", "frame",
)
SYNTHETIC_SIZES = (5000, 1000)  # train, test
CACHE_VERSION = 2
MAX_CACHE_BYTES = 64 << 30
# An image of more pixels is skipped from its header, unread: 16 times a 2048 x 2048 photo. A
# 20000 x 20000 PNG of one colour is a few hundred KB that decodes to 1.2 GB (per decoding thread).
MAX_IMAGE_PIXELS = 8192 * 8192

Progress = Callable[[str, int, int], None]  # message, done, total


@dataclass(frozen=True)
class DataSpec:
    """What to load; the data-related part of RunConfig."""

    dataset: str = "cifar10"
    data_dir: str = "./data"
    download: bool = True
    image_size: int = 32
    limit_train: int | None = None
    limit_test: int | None = None
    seed: int = 0
    cache_dir: str | None = None
    classes: tuple[str, ...] = ()  # train on these classes only (by name); () = all


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    skipped: int = 0  # unreadable files left out (image folders)


def load_data(spec: DataSpec, progress: Progress | None = None) -> Dataset:
    report = progress or (lambda message, done, total: None)
    if spec.dataset == "cifar10":
        data = _cifar10(Path(spec.data_dir), spec.download, report)
    elif spec.dataset == "imagefolder":
        data = _imagefolder(Path(spec.data_dir), spec, _cache_dir(spec.cache_dir), report)
    elif spec.dataset == "synthetic":
        data = Dataset(
            "synthetic",
            synthetic(SYNTHETIC_SIZES[0], spec.image_size, spec.seed),
            synthetic(SYNTHETIC_SIZES[1], spec.image_size, spec.seed + 1),
            SYNTHETIC_CLASSES,
        )
    else:
        raise DataError(f"unknown data set {spec.dataset!r}: choose one of {', '.join(DATASETS)}")
    if spec.classes:
        data = only_classes(data, spec.classes)
    if spec.image_size != data.train.images.shape[-1] and spec.dataset == "cifar10":
        data.train.images = _resize(data.train.images, spec.image_size)
        data.test.images = _resize(data.test.images, spec.image_size)
    data.train = limit(data.train, spec.limit_train, len(data.classes), spec.seed)
    data.test = limit(data.test, spec.limit_test, len(data.classes), spec.seed)
    if len(data.train) < 2 or len(data.test) == 0:
        raise DataError(
            f"the {spec.dataset} data set has {len(data.train)} training and {len(data.test)} test images; "
            "a run needs at least 2 and 1"
        )
    return data


def only_classes(data: Dataset, wanted: tuple[str, ...]) -> Dataset:
    """The data set cut down to ``wanted`` classes, relabelled 0..k-1 in the data set's own order."""
    keep = _kept_classes(data.name, data.classes, wanted)
    relabel = torch.full((len(data.classes),), -1, dtype=torch.int64)
    relabel[keep] = torch.arange(len(keep))

    def cut(split: Split) -> Split:
        new = relabel[split.labels]
        mask = new >= 0
        return Split(split.images[mask], new[mask])

    return Dataset(data.name, cut(data.train), cut(data.test), tuple(data.classes[i] for i in keep), data.skipped)


def _kept_classes(name: str, classes: tuple[str, ...], wanted: tuple[str, ...]) -> list[int]:
    """The indices of the ``wanted`` classes, in the data set's own order."""
    unknown = [c for c in wanted if c not in classes]
    if unknown:
        shown = ", ".join(classes[:12]) + (", ..." if len(classes) > 12 else "")
        raise DataError(f"--classes names {unknown[0]!r}, which the {name} data set lacks (it has {shown})")
    return [i for i, c in enumerate(classes) if c in wanted]


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    out = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


def limit(split: Split, n: int | None, num_classes: int, seed: int) -> Split:
    """A class-balanced subset of ``n`` images, the same for the same seed."""
    if n is None or n >= len(split):
        return split
    chosen = _pick(split.labels, n, num_classes, seed)
    return Split(split.images[chosen], split.labels[chosen])


def _pick(all_labels: torch.Tensor, n: int, num_classes: int, seed: int) -> torch.Tensor:
    """The sorted indices of ``limit``'s subset: it needs only the labels, so an image folder
    picks its files before decoding any."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(all_labels), generator=g)
    labels = all_labels[order]
    quota = [n // num_classes + (1 if c < n % num_classes else 0) for c in range(num_classes)]
    picked = [order[labels == c][: quota[c]] for c in range(num_classes)]
    chosen = torch.cat(picked)
    if len(chosen) < n:  # some classes are short: fill from the rest, still seeded
        rest = order[~torch.isin(order, chosen)]
        chosen = torch.cat([chosen, rest[: n - len(chosen)]])
    chosen, _ = chosen.sort()
    return chosen


# --- CIFAR-10 ------------------------------------------------------------------

CIFAR_DIR = "cifar-10-batches-py"
CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")


def _cifar10(root: Path, download: bool, report: Progress) -> Dataset:
    """CIFAR-10 through torchvision, which checks every file against its published MD5
    before unpickling it: a planted or damaged batch file is refused, never loaded."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = root / CIFAR_DIR
    if not all((folder / name).is_file() for name in CIFAR_FILES):
        archive = root / CIFAR_ARCHIVE
        if archive.is_file():
            report("checking and extracting CIFAR-10", 0, 1)
            if not check_integrity(str(archive), CIFAR10.tgz_md5):
                raise DataError(
                    f"{archive} does not match CIFAR-10's published checksum (damaged or cut short): "
                    "delete it to download it again"
                )
            _extract(archive, root)
        elif download:
            _download_cifar(root, report)
        else:
            raise DataError(
                f"CIFAR-10 is not in {root} (expected {folder}/ or {CIFAR_ARCHIVE}): "
                "drop --no-download to fetch it (170 MB), or use --dataset imagefolder"
            )
    report("checking and reading CIFAR-10", 0, 2)
    try:
        train = CIFAR10(str(root), train=True, download=False)
        report("checking and reading CIFAR-10", 1, 2)
        test = CIFAR10(str(root), train=False, download=False)
    except RuntimeError:
        raise DataError(
            f"the CIFAR-10 files in {folder} do not match their published checksums (damaged, cut short "
            f"or not CIFAR-10): delete {folder} to fetch it again"
        ) from None
    report("checking and reading CIFAR-10", 2, 2)
    return Dataset("cifar10", _from_hwc(train.data, train.targets), _from_hwc(test.data, test.targets), CIFAR10_CLASSES)


def _from_hwc(data: np.ndarray, targets: list[int]) -> Split:
    images = torch.from_numpy(np.ascontiguousarray(data.transpose(0, 3, 1, 2)))
    return Split(images, torch.tensor(targets, dtype=torch.int64))


def _extract(archive: Path, root: Path) -> None:
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(root, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"cannot extract {archive}: {exc}; delete it to download it again") from None


def _download_cifar(root: Path, report: Progress) -> None:
    from torchvision.datasets import CIFAR10

    report("downloading CIFAR-10 (170 MB)", 0, 1)
    try:
        root.mkdir(parents=True, exist_ok=True)
        CIFAR10(str(root), train=True, download=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, RuntimeError) as exc:
        reason = str(getattr(exc, "reason", None) or exc).strip().splitlines()[0]
        raise DataError(
            f"cannot download CIFAR-10 into {root} ({reason}): put {CIFAR_ARCHIVE} or the "
            f"extracted {CIFAR_DIR}/ there, or use --dataset imagefolder or --dataset synthetic"
        ) from None


# --- image folders -----------------------------------------------------------


def _imagefolder(root: Path, spec: DataSpec, cache_dir: Path, report: Progress) -> Dataset:
    if not root.exists():
        raise DataError(f"data directory {root} does not exist")
    if not root.is_dir():
        raise DataError(f"data directory {root} is a file, not a directory")
    train_dir = root / "train"
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(f"{root} needs train/<class>/ and test/<class>/ (or val/<class>/) folders of images")
    folders = tuple(sorted(d.name for d in _subdirs(train_dir)))
    if not folders:
        raise DataError(f"{train_dir} has no class folders (expected train/<class>/<image files>)")
    extra = sorted({d.name for d in _subdirs(test_dir)} - set(folders))
    if extra:
        raise DataError(f"{test_dir} has class {shown_name(extra[0])!r}, which {train_dir} lacks")
    # --classes and the limits are applied to the file lists, so that only the images a run
    # uses are decoded; load_data's own cuts then find nothing more to cut.
    some = ""
    if spec.classes:
        keep = _kept_classes("imagefolder", tuple(shown_name(name) for name in folders), spec.classes)
        some = "|" + "/".join(str(i) for i in keep)
        folders = tuple(folders[i] for i in keep)
    size, seed = spec.image_size, spec.seed
    train, skipped_train = _cached_split(train_dir, folders, size, cache_dir, report, spec.limit_train, seed, some)
    test, skipped_test = _cached_split(test_dir, folders, size, cache_dir, report, spec.limit_test, seed, some)
    classes = tuple(shown_name(name) for name in folders)
    if len(classes) == 1:
        raise DataError(f"{train_dir} has one class folder, {classes[0]!r}: a classifier needs two at least")
    seen = set(train.labels.tolist())
    empty = next((c for i, c in enumerate(classes) if i not in seen), None)
    if empty is not None and spec.limit_train is None:  # a limit may leave a class out of a small subset
        raise DataError(f"{train_dir / folders[classes.index(empty)]} has no image to train on: "
                        "every class needs some (or leave it out with --classes)")
    return Dataset("imagefolder", train, test, classes, skipped_train + skipped_test)


def shown_name(name: str) -> str:
    """A folder's name as a class name: bytes that are no UTF-8 and control characters written
    out (``\\xff``, ``\\x1b``), so that any name can be shown, logged and kept as JSON."""
    return clean_text(os.fsencode(name).decode("utf-8", "backslashreplace"))


def _subdirs(path: Path) -> list[Path]:
    try:
        return [d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")]
    except PermissionError:
        raise DataError(f"cannot read {path}: permission denied") from None


def _list_files(split_dir: Path, classes: tuple[str, ...]) -> tuple[list[tuple[Path, int]], int]:
    """The regular files of each class folder (through links), and how many entries were
    neither those nor folders: dangling links, link loops, FIFOs, devices (counted as skipped)."""
    files, odd = [], 0
    for label, name in enumerate(classes):
        folder = split_dir / name
        if not folder.is_dir():
            continue
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise DataError(f"cannot read {folder}: {exc.strerror or exc}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                regular, subfolder = entry.is_file(), entry.is_dir()
            except OSError:  # a link loop says so by raising
                regular = subfolder = False
            if regular:
                files.append((Path(entry.path), label))
            elif not subfolder:
                odd += 1
    return files, odd


def _cache_dir(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cbam-tui"


def _cached_split(
    split_dir: Path, classes: tuple[str, ...], size: int, cache_dir: Path, report: Progress,
    limit_to: int | None = None, seed: int = 0, which: str = "",
) -> tuple[Split, int]:
    """A split's images, decoded once and cached; ``which`` names a subset of the class
    folders, and ``limit_to`` picks limit()'s subset of the files before any is decoded.
    A subset is cached under a name of its own, beside the whole folder's."""
    files, odd = _list_files(split_dir, classes)
    if not files:
        raise DataError(f"{split_dir} has no image files in its class folders")
    if limit_to is not None and limit_to < len(files):
        labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        files = [files[i] for i in _pick(labels, limit_to, len(classes), seed).tolist()]
        which += f"|{limit_to}|{seed}"
    key = _cache_key(split_dir, classes, size, files)
    name = hashlib.sha256(os.fsencode(f"{split_dir.resolve()}|{size}{which}")).hexdigest()[:20]
    cache = f"{split_dir.name}-{name}.pt"
    hit = _read_cache(cache_dir, cache, key, len(classes))
    if isinstance(hit, tuple):
        report(f"loaded {split_dir.name} from cache", 1, 1)
        return hit[0], hit[1] + odd
    if hit == "damaged":
        report(f"the decode cache of {split_dir.name} is damaged; decoding again", 0, 0)
    split, skipped = _decode(files, size, f"decoding {split_dir.name} images", report)
    if len(split) == 0:
        raise DataError(f"{split_dir} has no readable images ({skipped + odd} files skipped)")
    failed = _write_cache(cache_dir, cache, {"key": key, "images": split.images, "labels": split.labels,
                                             "skipped": skipped})
    if failed is not None:
        report(f"the decode cache could not be written in {cache_dir} ({failed}): the next start decodes again", 0, 0)
    return split, skipped + odd


def _cache_key(split_dir: Path, classes: tuple[str, ...], size: int, files: list[tuple[Path, int]]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([CACHE_VERSION, str(split_dir.resolve()), size, classes]).encode())
    for path, label in files:
        try:
            st = path.stat()
            stamp = f"{st.st_size}|{st.st_mtime_ns}"
        except OSError:  # gone since it was listed: it will be skipped
            stamp = "-"
        h.update(os.fsencode(f"{path.name}|{label}|{stamp}\n"))
    return h.hexdigest()


def _write_cache(cache_dir: Path, name: str, content: dict[str, object]) -> str | None:
    """Best effort: a full or read-only cache disk means a slower next start, not a failed run
    (and nothing half-written is left). Returns why it failed, if it did."""
    from core.checkpoint import digest
    from core.safefs import Dir

    buf = io.BytesIO()
    torch.save({**content, "digest": digest(content)}, buf)
    try:
        cache_dir.parent.mkdir(parents=True, exist_ok=True)
        with Dir.open(cache_dir, create=True, follow=True) as folder:  # a new cache directory: owner-only
            folder.write_atomic(name, buf.getbuffer(), durable=False)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _read_cache(cache_dir: Path, name: str, key: str, num_classes: int) -> tuple[Split, int] | str | None:
    """The cached split if it is whole and for exactly these files; None when there is
    none for them, "damaged" when its bytes do not match its digest (rebuilt, never used)."""
    from core.checkpoint import digest
    from core.safefs import Dir

    try:
        with Dir.open(cache_dir, follow=True) as folder:
            raw = folder.read(name, MAX_CACHE_BYTES)
        if raw is None:
            return None
        obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception:
        return "damaged" if (cache_dir / name).exists() else None
    if not isinstance(obj, dict) or obj.get("key") != key:
        return None  # another file list or size: stale, not damaged
    stored = obj.pop("digest", None)
    try:
        if stored != digest(obj):
            return "damaged"
        images, labels = obj["images"], obj["labels"]
        ok = (
            isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8 and images.dim() == 4 and labels.dtype == torch.int64
            and len(images) == len(labels)
            and (len(labels) == 0 or 0 <= int(labels.min()) <= int(labels.max()) < num_classes)
            and isinstance(obj["skipped"], int)
        )
    except (KeyError, TypeError, RuntimeError):
        return "damaged"
    return (Split(images, labels), int(obj["skipped"])) if ok else "damaged"


def _decode_one(path: Path, size: int) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as opened:  # reads the header only
            if opened.width * opened.height > MAX_IMAGE_PIXELS:
                return None  # a decompression bomb, or a photo far too large for this: never decoded
            rgb = opened.convert("RGB")
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except Exception:  # corrupt, truncated, zero-byte or not an image: counted, not fatal
        return None


def _decode(files: list[tuple[Path, int]], size: int, message: str, report: Progress) -> tuple[Split, int]:
    images = np.empty((len(files), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(files), dtype=bool)
    step = max(1, len(files) // 50)
    from PIL import Image

    # PIL releases the GIL while decoding, so threads use every core. PIL warns of images over
    # its own limit as it opens them: those are skipped above, and counted, not printed.
    with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for i, arr in enumerate(pool.map(lambda f: _decode_one(f[0], size), files, chunksize=64)):
            if arr is not None:
                images[i] = arr
                ok[i] = True
            if i % step == 0 or i == len(files) - 1:
                report(message, i + 1, len(files))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    keep = torch.from_numpy(ok)
    return Split(torch.from_numpy(images)[keep], labels[keep]), int((~ok).sum())


# --- synthetic shapes ----------------------------------------------------------


def synthetic(n: int, size: int, seed: int) -> Split:
    """Coloured shapes on noisy backgrounds, the class is the shape; deterministic from seed."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % len(SYNTHETIC_CLASSES)
    labels = labels[torch.randperm(n, generator=g)]
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = coords[:, None], coords[None, :]
    cy, cx = (torch.rand(2, n, generator=g) * 0.4 + 0.3)[:, :, None, None]
    radius = (torch.rand(n, generator=g) * 0.12 + 0.2)[:, None, None]
    u, v = (xx - cx) / radius, (yy - cy) / radius
    au, av, r = u.abs(), v.abs(), torch.sqrt(u * u + v * v)
    box = torch.maximum(au, av)
    shapes = torch.stack(
        [
            r <= 1,
            box <= 0.8,
            (v >= -0.9) & (v <= 0.8) & (au <= (v + 0.9) * 0.55),
            (r >= 0.55) & (r <= 1),
            ((au <= 0.28) & (av <= 1)) | ((av <= 0.28) & (au <= 1)),
            (((u - v).abs() <= 0.4) | ((u + v).abs() <= 0.4)) & (box <= 0.9),
            (av <= 0.3) & (au <= 1.1),
            (au <= 0.3) & (av <= 1.1),
            au + av <= 1.05,
            (box >= 0.55) & (box <= 0.9),
        ],
        1,
    )
    mask = shapes[torch.arange(n), labels].unsqueeze(1).float()
    background = torch.rand(n, 3, 1, 1, generator=g) * 0.5
    noise = torch.randn(n, 3, size, size, generator=g) * 0.08
    colour = torch.rand(n, 3, 1, 1, generator=g) * 0.5 + 0.5
    img = (background + noise) * (1 - mask) + colour * mask
    return Split((img.clamp(0, 1) * 255).round().to(torch.uint8), labels)


# --- batches ---------------------------------------------------------------


def epoch_generator(seed: int, epoch: int, batch: int | None, device: torch.device) -> torch.Generator:
    """The generator for an epoch's order (batch None) or one batch's augmentation.

    Derived from (seed, epoch, batch) alone, so a resumed run draws exactly the
    batches the uninterrupted run would have.
    """
    mix = (seed * 1_000_003 + epoch) * 1_000_033 + (0 if batch is None else batch + 1)
    return torch.Generator(device=device).manual_seed(mix % (2**63 - 1))


def batch_indices(
    n: int, batch_size: int, seed: int, epoch: int, device: torch.device, start: int = 0, smallest: int = 2
) -> list[torch.Tensor]:
    """The epoch's shuffled batches of indices, from image ``start`` of its order on. The
    last, smaller batch is kept, except that one of fewer than ``smallest`` images joins
    the one before it: BatchNorm in train mode needs two values per channel (on each of
    several processes, so ``smallest`` is 2 x their number), and a run must reach its end."""
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch, None, device), device=device)
    chunks = list(torch.split(perm[start:], batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < smallest:
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def count_batches(n: int, batch_size: int, smallest: int = 2) -> int:
    """How many batches `batch_indices` cuts ``n`` images into."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= smallest or (rest and full == 0) else 0)
