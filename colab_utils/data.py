"""Image data: MVTec AD folders and plain user folders -> cached uint8 tensors.

Every image is decoded with Pillow and resized **once** to ``image_size x image_size``
(Lanczos, which is antialiased when shrinking; images already at that size are kept
pixel for pixel), then kept in memory:

======================  =======  ===============  ===========
field                   dtype    shape            values
======================  =======  ===============  ===========
``ImageSet.images``     uint8    (N, C, H, W)     0..255
``ImageSet.masks``      uint8    (N, 1, H, W)     {0, 1}
``ImageSet.labels``     int64    (N,)             0 good, 1 defective
======================  =======  ===============  ===========

``C`` is ``channels`` (1 or 3): grayscale sources are repeated to 3 channels when
``channels=3``; colour sources are reduced to luminance (ITU-R 601 luma, Pillow's
``convert("L")``) when ``channels=1``. Non-square images are stretched to the square.
Masks are resized with nearest neighbour, so they stay binary and aligned with the image.

Loaded sets are cached in this process, keyed by the resolved file paths and their
modification times and sizes, the image size and the channel count: loading the same
split again is instant, and an edited file is picked up. Nothing is ever written into
the data folder.

Folder layout (the official MVTec AD one)::

    <root>/<category>/train/good/*.png
    <root>/<category>/test/good/*.png
    <root>/<category>/test/<defect_type>/*.png
    <root>/<category>/ground_truth/<defect_type>/<stem>_mask.png

Missing masks: in the MVTec layout every defective test image needs a mask (a
:class:`DataError` otherwise). A plain user folder (:func:`load_user_folder`) may come
without masks: then the test set has image-level labels only, its masks are all zero
and ``ImageSet.has_masks`` is ``False`` so pixel metrics can be skipped.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from PIL import Image

from .config import MVTEC_CATEGORIES
from .images import (  # noqa: F401 - part of this module's API
    IMAGE_EXTENSIONS,
    DataError,
    PathLike,
    image_sizes,
    open_image,
    read_image,
    read_pil,
    resize_image,
    resized_array,
    size_hw,
    to_8bit,
)
from .imageset import AnomalyDataset, ImageSet, split_train_val  # noqa: F401 - part of this module's API

#: MVTec AD categories whose images are single-channel ("L").
GRAYSCALE_CATEGORIES = ("grid", "screw", "zipper")
SPLITS = ("train", "test")
GOOD = "good"

#: Upper bound on the bytes of image and mask tensors kept by the in-process cache;
#: the least recently used sets are dropped first. Change it at run time if needed.
CACHE_MAX_BYTES = 4 * 2**30

_COPY_TMP_SUFFIX = ".copy_to_local.tmp"
# --------------------------------------------------------------------------- image sets


# --------------------------------------------------------------------------- folders
def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``img2`` before ``img10`` (case-insensitive)."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def _list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (hidden files skipped), in natural name order."""
    with os.scandir(folder) as it:
        names = [
            e.name
            for e in it
            if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS and e.is_file()
        ]
    return [folder / n for n in sorted(names, key=natural_key)]


def _list_subdirs(folder: Path) -> list[Path]:
    with os.scandir(folder) as it:
        names = [e.name for e in it if not e.name.startswith(".") and e.is_dir()]
    return [folder / n for n in sorted(names, key=natural_key)]


def _check_root(root: PathLike) -> Path:
    path = Path(root).expanduser()
    if not path.exists():
        raise DataError(
            f"data folder {path} does not exist. Point --data-root (Python: data_root, or the MVTEC_ROOT environment "
            f"variable) at a folder holding <category>/train/good, download MVTec AD with `python -m colab_utils "
            f"download {path}` (Python: colab_utils.download.download_mvtec({str(path)!r})), or create the built-in "
            f"sample category with `python -m colab_utils make-sample {path}`"
        )
    if not path.is_dir():
        raise DataError(f"data folder {path} is a file, not a folder; pass the folder that holds the categories")
    return path


def _check_folder(folder: PathLike, what: str) -> Path:
    path = Path(folder).expanduser()
    if not path.is_dir():
        state = "is a file, not a folder" if path.exists() else "does not exist"
        raise DataError(f"{what} {path} {state}; pass the folder that holds the images")
    return path


def _require_images(folder: Path, what: str) -> list[Path]:
    images = _list_images(folder)
    if not images:
        hint = ""
        subdirs = _list_subdirs(folder)
        if subdirs:
            hint = f" (it has sub-folders {[d.name for d in subdirs[:5]]}: pass the one that holds the images)"
        raise DataError(f"{what} {folder} holds no images{hint}; put {'/'.join(IMAGE_EXTENSIONS)} files there")
    return images


def find_categories(root: PathLike) -> list[str]:
    """Names of the category folders under ``root`` in the official layout (``<cat>/train/good``).

    Includes any such folder, not only MVTec names (e.g. the built-in ``sample`` or a
    user's own category). Sorted. An existing folder without categories gives ``[]``;
    a missing ``root`` raises :class:`DataError`.
    """
    path = _check_root(root)
    return [d.name for d in _list_subdirs(path) if (d / "train" / GOOD).is_dir()]


def _category_dir(root: PathLike, category: str) -> Path:
    path = _check_root(root)
    cat_dir = path / category
    if (cat_dir / "train" / GOOD).is_dir():
        return cat_dir
    if cat_dir.is_dir():
        raise DataError(
            f"{cat_dir} is not in the MVTec AD layout: {cat_dir / 'train' / GOOD} is missing. Expected "
            f"<category>/train/good, <category>/test/<good|defect_type> and <category>/ground_truth/<defect_type>; "
            f"for a plain folder of images use colab_utils.data.load_user_folder()"
        )
    existing = find_categories(path)
    # suggest only folders that are really there: a typo of an existing category
    close = [c for c in difflib.get_close_matches(category, existing, n=3, cutoff=0.6) if c != category]
    msg = f"unknown category {category!r}: there is no folder {cat_dir}."
    if close:
        msg += f" Did you mean {' or '.join(repr(c) for c in close)}?"
    msg += f" Categories under {path}: {', '.join(existing) if existing else 'none (the folder holds no category yet)'}."
    if category in MVTEC_CATEGORIES:
        msg += (
            f" Download it with `python -m colab_utils download {path} --categories {category}` "
            f"(Python: colab_utils.download.download_mvtec({str(path)!r}, categories=[{category!r}]))."
        )
    elif category == "sample":
        msg += (
            f" Create it with `python -m colab_utils make-sample {path}` "
            f"(Python: colab_utils.sample.make_sample({str(path)!r}))."
        )
    raise DataError(msg)


def count_table(root: PathLike, category: str) -> list[dict[str, Any]]:
    """Image counts of one category: rows ``{"category", "split", "defect_type", "count"}``.

    One row for every folder under ``train/`` and ``test/`` (``good`` first, then the defect
    types alphabetically). Only files are counted; nothing is decoded.
    """
    cat_dir = _category_dir(root, category)
    rows = []
    for split in SPLITS:
        split_dir = cat_dir / split
        if not split_dir.is_dir():
            continue
        subdirs = sorted(_list_subdirs(split_dir), key=lambda d: (d.name != GOOD, natural_key(d.name)))
        for d in subdirs:
            rows.append({"category": category, "split": split, "defect_type": d.name, "count": len(_list_images(d))})
    return rows


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class _Record:
    image: Path
    mask: Optional[Path]
    label: int
    defect_type: str


def _mask_index(folder: Path) -> dict[str, Path]:
    """Image files of a mask folder by name stem (an existing folder, else empty)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in _list_images(folder)}


def _find_mask(stem: str, indexes: list[dict[str, Path]], suffix: str) -> Optional[Path]:
    for index in indexes:
        for key in (stem + suffix, stem) if suffix else (stem,):
            if key in index:
                return index[key]
    return None


def _mvtec_records(cat_dir: Path, split: str) -> list[_Record]:
    if split == "train":
        folder = cat_dir / "train" / GOOD
        return [_Record(p, None, 0, GOOD) for p in _require_images(folder, "training folder")]
    test_dir = cat_dir / "test"
    if not test_dir.is_dir():
        raise DataError(
            f"category folder {cat_dir} has no test folder {test_dir}; add test/good and test/<defect_type> "
            f"(with masks in ground_truth/<defect_type>), or load only split='train'"
        )
    records: list[_Record] = []
    subdirs = sorted(_list_subdirs(test_dir), key=lambda d: (d.name != GOOD, natural_key(d.name)))
    for d in subdirs:
        images = _list_images(d)
        if d.name == GOOD:
            records += [_Record(p, None, 0, GOOD) for p in images]
            continue
        gt_dir = cat_dir / "ground_truth" / d.name
        index = _mask_index(gt_dir)
        for p in images:
            mask = _find_mask(p.stem, [index], "_mask")
            if mask is None:
                raise DataError(
                    f"defect image {p} has no mask: looked for {gt_dir / (p.stem + '_mask.png')} (also {p.stem}.png "
                    f"and other image endings). Every defective test image of the MVTec layout needs a binary mask "
                    f"there; add it, or load the images with colab_utils.data.load_user_folder(good_dir, ..., "
                    f"defect_dir={str(d)!r}) for image-level labels only"
                )
            records.append(_Record(p, mask, 1, d.name))
    if not records:
        raise DataError(
            f"test folder {test_dir} holds no images; put good ones in test/good and defective ones in test/<defect_type>"
        )
    return records
# --------------------------------------------------------------------------- decoding


def _decode(rec: _Record, size: int | tuple[int, int], channels: int) -> tuple[np.ndarray, np.ndarray]:
    """One record -> image uint8 (C, h, w) and mask uint8 (h, w) in {0, 1}, at ``size`` (a side or (h, w))."""
    im = read_pil(rec.image, channels)
    src_size = im.size
    img = resized_array(im, size)
    h, w = size_hw(size)
    if rec.mask is None:
        return img, np.zeros((h, w), np.uint8)
    m = to_8bit(open_image(rec.mask, "mask"))
    if m.size != src_size:
        raise DataError(
            f"mask {rec.mask} is {m.size[0]}x{m.size[1]} px but its image {rec.image} is {src_size[0]}x{src_size[1]} px; "
            f"a mask must have exactly the size of its image: re-export it at the image's size, or check that it "
            f"belongs to this image"
        )
    m_arr = np.asarray(m.convert("L"))
    binary = m_arr > (127 if m_arr.size and m_arr.max() > 1 else 0)
    if binary.shape != (h, w):
        resized = Image.fromarray(binary.astype(np.uint8) * 255, mode="L").resize((w, h), Image.Resampling.NEAREST)
        binary = np.asarray(resized) > 127
    return img, binary.astype(np.uint8)


# --------------------------------------------------------------------------- cache
_CACHE: OrderedDict[tuple, ImageSet] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    """Forget every cached image set (frees memory)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _fingerprint(records: list[_Record]) -> tuple:
    out = []
    for r in records:
        for p in (r.image, r.mask):
            if p is None:
                out.append(None)
                continue
            try:
                st = os.stat(p)
            except OSError as exc:
                raise DataError(f"cannot read {p} ({exc}); check the file exists and is readable") from exc
            out.append((str(p), st.st_mtime_ns, st.st_size))
        out.append((r.label, r.defect_type))
    return tuple(out)


def _nbytes(s: ImageSet) -> int:
    return s.images.numel() + s.masks.numel()


def _share(s: ImageSet) -> ImageSet:
    """A new ImageSet object sharing the (read-only) tensors of ``s``."""
    return dataclasses.replace(s, defect_types=list(s.defect_types), paths=list(s.paths),
                               mask_paths=list(s.mask_paths) if s.mask_paths is not None else None)  # fmt: skip


def _load_records(records: list[_Record], image_size: int | tuple[int, int], channels: int, has_masks: bool) -> ImageSet:
    h, w = size_hw(image_size)
    key = ((h, w), channels, has_masks, _fingerprint(records))
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return _share(hit)
    n = len(records)
    images = np.empty((n, channels, h, w), np.uint8)
    masks = np.empty((n, 1, h, w), np.uint8)

    def work(i: int) -> None:
        images[i], masks[i, 0] = _decode(records[i], (h, w), channels)

    workers = min(8, os.cpu_count() or 1, max(1, n // 4))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # Pillow releases the GIL while decoding/resizing
            list(pool.map(work, range(n)))
    else:
        for i in range(n):
            work(i)
    result = ImageSet(
        images=torch.from_numpy(images),
        masks=torch.from_numpy(masks),
        labels=torch.tensor([r.label for r in records], dtype=torch.int64),
        defect_types=[r.defect_type for r in records],
        paths=[str(r.image) for r in records],
        has_masks=has_masks,
        mask_paths=[str(r.mask) if r.mask is not None else None for r in records],
    )
    with _CACHE_LOCK:
        _CACHE[key] = result
        total = sum(_nbytes(s) for s in _CACHE.values())
        while len(_CACHE) > 1 and total > CACHE_MAX_BYTES:
            _, old = _CACHE.popitem(last=False)
            total -= _nbytes(old)
    return _share(result)


def _check_size_channels(image_size: int | tuple[int, int], channels: int) -> None:
    sides = list(image_size) if isinstance(image_size, (tuple, list)) else [image_size]
    if len(sides) not in (1, 2) or any(
        not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 8 for v in sides
    ):
        raise DataError(
            f"image_size={image_size!r} must be an integer of at least 8 pixels (e.g. 256), or (height, width)"
        )
    if channels not in (1, 3):
        raise DataError(f"channels={channels!r} must be 1 (grayscale) or 3 (RGB)")


# --------------------------------------------------------------------------- loaders
def load_split(root: PathLike, category: str, split: str, image_size: int, channels: int) -> ImageSet:
    """Load ``<root>/<category>/<split>`` of the MVTec layout into memory (cached).

    Args:
        root: folder holding the category folders.
        category: an MVTec AD name, ``"sample"`` or any folder in the same layout.
        split: ``"train"`` (``train/good`` only) or ``"test"`` (``test/good`` first, then each defect type).
        image_size: side of the square the images are resized to, or (height, width) (``Config.work_size``).
        channels: 1 or 3.

    Returns:
        :class:`ImageSet` with images uint8 (N, C, S, S) 0..255, masks uint8 (N, 1, S, S)
        in {0, 1} (from ``ground_truth/<type>/<stem>_mask.png``; zero for good images),
        labels int64 (N,) 0 for ``good`` and 1 otherwise.

    Raises:
        DataError: missing/empty folder, unknown category, unreadable image, a defect
            image without mask, a mask whose size differs from its image.
    """
    _check_size_channels(image_size, channels)
    return _load_records(_split_records(root, category, split), image_size, channels, has_masks=True)


def load_user_folder(
    good_dir: PathLike,
    image_size: int,
    channels: int,
    defect_dir: PathLike | None = None,
    mask_dir: PathLike | None = None,
    mask_suffix: str = "_mask",
    test_good_dir: PathLike | None = None,
) -> tuple[ImageSet, ImageSet | None]:
    """Load plain folders of your own images: ``(train, test)``.

    Args:
        good_dir: flat folder of defect-free images to train on.
        image_size, channels: as in :func:`load_split`.
        defect_dir: optional folder of defective test images: flat (defect type
            ``"defect"``) and/or with sub-folders, one per defect type. A sub-folder named
            ``good`` holds good test images (so an MVTec-style ``test/`` folder works too).
        mask_dir: optional folder of binary masks, matched to defect images by file stem:
            ``<stem><mask_suffix>.<ext>`` or ``<stem>.<ext>``, looked up in
            ``mask_dir/<defect_type>/`` first, then in ``mask_dir/`` itself.
        mask_suffix: see ``mask_dir``.
        test_good_dir: optional flat folder of good test images (label 0).

    Returns:
        ``train``: every image of ``good_dir`` (labels 0, masks zero). ``test``: good test
        images then defective ones, or ``None`` when neither ``defect_dir`` nor
        ``test_good_dir`` is given.

    Without ``mask_dir`` the test set has image-level labels only: its masks are all zero
    and ``test.has_masks`` is ``False`` (skip pixel metrics). With ``mask_dir`` every defect
    image must have a mask (:class:`DataError` naming the image otherwise). Without good
    test images image-level AUROC is undefined: pass ``test_good_dir``, or hold out part of
    ``good_dir`` yourself (:func:`split_train_val` and :meth:`ImageSet.subset`).
    """
    _check_size_channels(image_size, channels)
    good = _check_folder(good_dir, "good_dir").resolve()
    train_records = [_Record(p, None, 0, GOOD) for p in _require_images(good, "good_dir")]
    train = _load_records(train_records, image_size, channels, has_masks=True)
    if defect_dir is None and test_good_dir is None:
        if mask_dir is not None:
            raise DataError(
                f"mask_dir={str(mask_dir)!r} was given without defect_dir; pass the folder of defective images too"
            )
        return train, None

    records: list[_Record] = []
    if test_good_dir is not None:
        tg = _check_folder(test_good_dir, "test_good_dir").resolve()
        records += [_Record(p, None, 0, GOOD) for p in _require_images(tg, "test_good_dir")]
    masks_root = _check_folder(mask_dir, "mask_dir").resolve() if mask_dir is not None else None
    if defect_dir is not None:
        dd = _check_folder(defect_dir, "defect_dir").resolve()
        groups = [("defect", dd)] + [(d.name, d) for d in _list_subdirs(dd)]
        root_index = _mask_index(masks_root) if masks_root is not None else {}
        defect_records: list[_Record] = []
        good_records: list[_Record] = []
        for dtype, folder in groups:
            for p in _list_images(folder):
                if dtype == GOOD and folder != dd:
                    good_records.append(_Record(p, None, 0, GOOD))
                    continue
                mask = None
                if masks_root is not None:
                    indexes = ([_mask_index(masks_root / dtype)] if folder != dd else []) + [root_index]
                    mask = _find_mask(p.stem, indexes, mask_suffix)
                    if mask is None:
                        raise DataError(
                            f"defect image {p} has no mask in {masks_root}: looked for {p.stem}{mask_suffix}.* and "
                            f"{p.stem}.*{' (also in ' + str(masks_root / dtype) + ')' if folder != dd else ''}. "
                            f"Add its mask, fix mask_suffix (now {mask_suffix!r}), or leave out mask_dir to use "
                            f"image-level labels only"
                        )
                defect_records.append(_Record(p, mask, 1, dtype))
        if not defect_records and not good_records:
            raise DataError(
                f"defect_dir {dd} holds no images (directly or in sub-folders); put the defective test images there"
            )
        records += good_records + defect_records
    test = _load_records(records, image_size, channels, has_masks=masks_root is not None)
    return train, test


def _split_records(root: PathLike, category: str, split: str) -> list[_Record]:
    """The records of ``<root>/<category>/<split>`` in loading order (a bad split or category: :class:`DataError`)."""
    if split not in SPLITS:
        raise DataError(f"split={split!r} is not known; use 'train' or 'test'")
    return _mvtec_records(_category_dir(root, category).resolve(), split)


def split_paths(root: PathLike, category: str, split: str) -> list[str]:
    """The image files of ``<root>/<category>/<split>`` in loading order, without decoding them."""
    return [str(r.image) for r in _split_records(root, category, split)]


def reload(image_set: ImageSet, image_size: int | tuple[int, int]) -> ImageSet:
    """``image_set`` decoded again from its files at another size (a side, or (height, width)), masks included.

    Needs the files (``paths``) and, for defective images, ``mask_paths`` (every loader records them); a set
    built in memory without them raises :class:`DataError` saying so.
    """
    _check_size_channels(image_size, image_set.channels)
    masks = image_set.mask_paths if image_set.mask_paths is not None else [None] * len(image_set)
    if image_set.num_defective and image_set.mask_paths is None and image_set.has_masks:
        raise DataError(
            "this image set was built in memory, without the mask files of its defective images, so it cannot be "
            "loaded again at another size; load it with load_split() or load_user_folder()"
        )
    records = [
        _Record(Path(p), Path(m) if m else None, int(label), t)
        for p, m, label, t in zip(image_set.paths, masks, image_set.labels.tolist(), image_set.defect_types)
    ]
    return _load_records(records, image_size, image_set.channels, has_masks=image_set.has_masks)


# --------------------------------------------------------------------------- copying
def copy_to_local(src: PathLike, dst: PathLike, progress: bool = True) -> Path:
    """Copy the folder ``src`` (e.g. a dataset on Google Drive, slow to read) to ``dst`` on local disk.

    Files already at ``dst`` with the same size are skipped, so an interrupted copy is
    resumed by calling again. Each file is written to a temporary name and moved into
    place (``os.replace``), so a half-copied file never takes the real name. File times
    are kept. ``src`` is only read. Returns ``dst``.
    """
    from .env import progress_bar as tqdm

    source = _check_folder(src, "source folder")
    target = Path(dst).expanduser()
    s_res, t_res = source.resolve(), target.resolve()
    if t_res == s_res or s_res in t_res.parents:
        raise DataError(
            f"copy_to_local: destination {target} lies inside the source {source}; choose a folder outside it"
        )
    if target.exists() and not target.is_dir():
        raise DataError(f"copy_to_local: destination {target} is a file; pass a folder")
    files = []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(_COPY_TMP_SUFFIX):
                files.append(Path(dirpath, name).relative_to(source))
    if target.is_dir():  # leftovers of an interrupted earlier copy
        for dirpath, _, filenames in os.walk(target):
            for name in filenames:
                if name.endswith(_COPY_TMP_SUFFIX):
                    os.remove(os.path.join(dirpath, name))
    for rel in tqdm(files, desc=f"copy to {target}", unit="file", disable=not progress):
        s, t = source / rel, target / rel
        size = s.stat().st_size
        if t.is_file() and t.stat().st_size == size:
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=t.parent, prefix="." + t.name + ".", suffix=_COPY_TMP_SUFFIX)
        os.close(fd)
        try:
            shutil.copyfile(s, tmp)
            shutil.copystat(s, tmp)
            os.replace(tmp, t)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return target
