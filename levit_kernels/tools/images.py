"""Image files in, model-ready batches out: finding the files, decoding them (PIL, through
torchvision's loader), LeViT's evaluation transform, and the DataLoader that feeds a process.

A file that cannot be decoded -- truncated, not an image, unreadable -- does not raise: its
sample carries the error instead of an image, and the batch lists it under `failures`, so one
bad file among millions is reported and skipped, never the end of a run.
"""
from __future__ import annotations

import math
import os
import re
import warnings
from typing import Iterable, List, Optional, Sequence, Tuple

import torch

from PIL import Image
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, pil_loader
from torchvision.transforms import InterpolationMode

from .errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.9      # timm's LeViT weights are evaluated at 224 px from a 248 px resize
LIST_PREFIX = "@"   # `predict @files.txt`: a file that lists inputs, one a line


class ResizeToCover:
    """Resize keeping the aspect ratio to the smallest size that covers (height, width) --
    for a square target this is torchvision's `Resize(side)` of the shorter side."""

    def __init__(self, size: Tuple[int, int]):
        self.size = size

    def __call__(self, image):
        width, height = image.size
        scale = max(self.size[0] / height, self.size[1] / width)
        # max(...) guards against a float rounding a side below the crop it must cover
        new = [max(s, round(d * scale)) for s, d in zip(self.size, (height, width))]
        return T.functional.resize(image, new, interpolation=InterpolationMode.BICUBIC)


def eval_transform(img_size: Tuple[int, int], crop_pct: float = CROP_PCT):
    """LeViT's evaluation transform: resize by 1/crop_pct of the crop (224 -> 248, bicubic),
    center crop img_size, scale to [0, 1], normalise with the ImageNet mean and std."""
    scaled = tuple(int(math.floor(side / crop_pct)) for side in img_size)
    # PIL refuses to open images past MAX_IMAGE_PIXELS (decompression bombs); resizing to more
    # would cost as much memory, and past 2**31 px a side its C ints overflow.
    limit = Image.MAX_IMAGE_PIXELS or 2 ** 62
    if scaled[0] * scaled[1] > limit or max(scaled) >= 2 ** 31:
        raise ValueError(f"it resizes to {scaled[0]}x{scaled[1]} px before the "
                         f"{img_size[0]}x{img_size[1]} crop, past PIL's limit of {limit} pixels "
                         f"(PIL.Image.MAX_IMAGE_PIXELS); use a crop fraction nearer 1")
    if scaled[0] == scaled[1]:
        resize = T.Resize(scaled[0], interpolation=InterpolationMode.BICUBIC)
    else:
        resize = ResizeToCover(scaled)
    return T.Compose([resize, T.CenterCrop(tuple(img_size)), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class ImageFiles(torch.utils.data.Dataset):
    """paths[i] decoded to RGB and transformed: samples (index, image, None), or
    (index, None, reason) for a file that cannot be read."""

    def __init__(self, paths: Sequence[str], transform):
        self.paths, self.transform = list(paths), transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            with warnings.catch_warnings():
                # PIL's advice to convert palette images with transparency to RGBA first:
                # dropping the transparency is what RGB conversion is for here.
                warnings.filterwarnings("ignore", "Palette images with Transparency")
                image = self.transform(pil_loader(self.paths[index]))
        # Decoders of untrusted files raise more than OSError (PIL: SyntaxError, ValueError,
        # struct.error, DecompressionBombError, ...): any of them means "cannot read this".
        except Exception as exc:  # noqa: BLE001
            # one line, without the "<_io.BufferedReader name=...>" PIL puts in its messages
            # (the report names the file already)
            reason = re.sub(r"\s*<_io\.\w+ name=[^>]*>", "", " ".join(str(exc).split()))
            reason = reason or "unreadable"
            return index, None, f"{type(exc).__name__}: {reason}"
        return index, image, None


def collate(samples) -> Tuple[torch.Tensor, Optional[torch.Tensor], List[Tuple[int, str]]]:
    """Samples -> (indices of the decoded images, the images stacked or None, failures as
    (index, reason))."""
    decoded = [(index, image) for index, image, _ in samples if image is not None]
    failures = [(index, reason) for index, image, reason in samples if image is None]
    indices = torch.tensor([index for index, _ in decoded], dtype=torch.long)
    images = torch.stack([image for _, image in decoded]) if decoded else None
    return indices, images, failures


def make_loader(files: ImageFiles, indices: Iterable[int], batch: int, workers: int,
                pin_memory: bool = False):
    """Batches of files[i] for i in `indices` (this process's shard), in that order."""
    return torch.utils.data.DataLoader(files, batch_size=batch, sampler=indices,
                                       num_workers=workers, collate_fn=collate,
                                       pin_memory=pin_memory)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def walk_images(folder: str) -> List[str]:
    """Image files under `folder`, recursively (links followed, as torchvision's ImageFolder
    does, but each real folder walked once, so links that loop end), in a fixed order: each
    folder's files sorted by name, then its subfolders."""
    found = []
    seen = set()   # (device, inode) of each folder walked: links back up would loop forever
    for root, dirs, files in os.walk(folder, followlinks=True):
        try:
            st = os.stat(root)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirs.clear()
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs.sort()
        found += [os.path.join(root, name) for name in sorted(files) if is_image_file(name)]
    return found


def image_folder(root: str) -> Tuple[List[str], List[int], List[str]]:
    """The ImageFolder layout root/<class>/**/<image> (ImageNet val after the usual
    valprep.sh): (paths, targets, class names). Classes are numbered in sorted folder order,
    as torchvision and timm number them, so ImageNet's synset folders get the usual 0..999."""
    if not os.path.isdir(root):
        raise UsageError(f"--data {root!r}: no such directory")
    try:
        classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    except OSError as exc:
        raise UsageError(f"--data {root!r}: cannot read it: {exc.strerror or exc}")
    if not classes:
        raise UsageError(f"--data {root!r}: no class folders (expected {root}/<class>/<image>, "
                         f"the ImageNet val layout)")
    paths, targets = [], []
    for target, name in enumerate(classes):
        found = walk_images(os.path.join(root, name))
        paths += found
        targets += [target] * len(found)
    if not paths:
        raise UsageError(f"--data {root!r}: no image files ({', '.join(IMG_EXTENSIONS)}) in its "
                         f"{len(classes)} class folders")
    return paths, targets, classes


def _list_file(path: str) -> List[str]:
    """The inputs a list file names: one path a line, relative to the list file's folder;
    blank lines and lines starting with # are skipped."""
    try:
        with open(path) as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"list file {path!r}: cannot read it: "
                         f"{getattr(exc, 'strerror', None) or exc}")
    base = os.path.dirname(path)
    entries = [os.path.normpath(os.path.join(base, line)) for line in lines
               if line and not line.startswith("#")]
    if not entries:
        raise UsageError(f"list file {path!r} names no files")
    return entries


def find_images(inputs: Sequence[str]) -> List[str]:
    """predict's inputs -> image paths, in the order given, each file once.

    A file is taken as it is (a file that turns out not to be an image is reported when it is
    decoded); a folder contributes its image files, recursively; `@PATH` is a list file whose
    lines are files or folders. A missing file or folder named on the command line is a usage
    error, one named in a list file is reported and skipped like an unreadable image (a long
    list should not fail for one stale line)."""
    paths: List[str] = []
    for item in inputs:
        if item.startswith(LIST_PREFIX):
            entries = _list_file(item[len(LIST_PREFIX):])
            paths += [p for entry in entries
                      for p in (walk_images(entry) if os.path.isdir(entry) else [entry])]
        elif os.path.isdir(item):
            found = walk_images(item)
            if not found:
                raise UsageError(f"{item!r}: no image files ({', '.join(IMG_EXTENSIONS)}) "
                                 f"in this folder")
            paths += found
        elif os.path.exists(item):
            paths.append(item)
        else:
            raise UsageError(f"{item!r}: no such file or folder (a list file is @PATH)")
    seen = set()
    unique = []
    for path in paths:
        key = os.path.abspath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique
