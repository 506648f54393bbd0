"""Image files in, model-ready batches out: finding the files, decoding them (PIL, as
torchvision's loader does, 16-bit images scaled to 8 bits), LeViT's evaluation transform, and
the DataLoader that feeds a process.

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

import numpy as np
import torch

from PIL import Image
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.transforms import InterpolationMode

from .errors import UsageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_PCT = 0.9      # timm's LeViT weights are evaluated at 224 px from a 248 px resize
LIST_PREFIX = "@"   # `predict @files.txt`: a file that lists inputs, one a line


# A resize to at most this many times the area of the resize target (248 x 248 for 224) is done
# in full, then cropped: torchvision's Resize + CenterCrop, pixel for pixel. Past it (an aspect
# ratio beyond ~16:1, a strip of pixels) only the source region under the crop is resized.
FULL_RESIZE_AREA = 16


class ResizeCrop:
    """Resize keeping the aspect ratio to cover `scaled` (h, w), then center crop `size`.

    A square `scaled` is torchvision's Resize(side) of the shorter side; otherwise the smallest
    size that covers it. Cropping after a full resize costs the resized image: a 20000 x 1 strip
    resized to 248 px high is 4.96 M x 248 px (3.7 GB), and past 2**31 px a side PIL's C ints
    overflow. Such images resize only the source box under the crop (PIL's resize(box=)): same
    filter, same scale, bounded by the crop. It is not bit-identical to the full resize (PIL
    picks the order of its two passes from the sizes, and each pass rounds and clips to 8
    bits: a level or two on a photo, more on upscaled noise), hence the full resize for every
    image of ordinary shape (FULL_RESIZE_AREA)."""

    def __init__(self, scaled: Tuple[int, int], size: Tuple[int, int]):
        self.scaled, self.size = tuple(scaled), tuple(size)

    def resized_size(self, width: int, height: int) -> Tuple[int, int]:
        """(height, width) of the full resize."""
        if self.scaled[0] == self.scaled[1]:
            # torchvision's Resize(int): the shorter side to it, the longer truncated
            short, long = sorted((width, height))
            new_short, new_long = self.scaled[0], int(self.scaled[0] * long / short)
            return (new_long, new_short) if width <= height else (new_short, new_long)
        scale = max(self.scaled[0] / height, self.scaled[1] / width)
        # max(...) guards against a float rounding a side below the crop it must cover
        return tuple(max(s, round(d * scale)) for s, d in zip(self.scaled, (height, width)))

    def __call__(self, image):
        height, width = self.resized_size(*image.size)
        if height * width <= FULL_RESIZE_AREA * self.scaled[0] * self.scaled[1]:
            image = T.functional.resize(image, [height, width],
                                        interpolation=InterpolationMode.BICUBIC)
            return T.functional.center_crop(image, list(self.size))
        # torchvision's center_crop offsets, mapped back onto the source image
        crop_h, crop_w = self.size
        top, left = int(round((height - crop_h) / 2.0)), int(round((width - crop_w) / 2.0))
        sx, sy = image.width / width, image.height / height
        box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
        return image.resize((crop_w, crop_h), Image.Resampling.BICUBIC, box=box)


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
    return T.Compose([ResizeCrop(scaled, img_size), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# PIL's modes of 16-bit unsigned samples (native, little- and big-endian): 16-bit grayscale
# PNG and TIFF files open in them.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def load_rgb(path: str):
    """The image file at `path` as an 8-bit RGB PIL image: torchvision's pil_loader, except
    that it does not clip 16-bit grayscale to 255 (a whole image turned white).

    16-bit samples keep their high byte (v >> 8): PIL reduces 16-bit RGB, RGBA and LA PNGs so
    as it decodes them, so a 16-bit grayscale image gives the pixels of the same picture saved
    in colour, and v * 257 (the usual 8 -> 16 bit expansion) comes back as v. Images of 32-bit
    integers or floats have no range to scale from (mode I, except a PNG's, whose samples are
    16-bit; mode F): they are refused, reported and skipped, rather than clipped."""
    with open(path, "rb") as f:
        image = Image.open(f)
        if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.format == "PNG"):
            # older Pillow opens 16-bit grayscale PNGs as mode I
            return Image.fromarray((np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
                                   ).convert("RGB")
        if image.mode in ("I", "F"):
            kind = "32-bit integer" if image.mode == "I" else "floating-point"
            raise ValueError(f"{kind} pixels (PIL mode {image.mode}) have no known range to "
                             f"scale to 8 bits: save the image with 8- or 16-bit samples")
        return image.convert("RGB")


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
                image = self.transform(load_rgb(self.paths[index]))
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
        # utf-8-sig: a byte order mark (Windows Notepad's "UTF-8") is not part of the first path
        with open(path, encoding="utf-8-sig") as f:
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
