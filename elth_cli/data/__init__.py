"""Data sets: one registry, one loader, batches that are a pure function of (seed, epoch).

Two paths share one interface, :class:`DataBundle`:

* In-memory sets (digits, mnist, fashion-mnist, svhn, cifar10, cifar100) are read once into a
  uint8 tensor ``[N, C, H, W]`` on the target device. Every training step is a handful of tensor
  ops on that device (gather, pad, crop-gather, normalise): no DataLoader, no worker processes,
  no per-example Python, and no host-device synchronisation per step. On a GPU this keeps a small
  network's step time bound by the network, not by the input pipeline.
* Folder sets (imagenet, imagefolder) are too large for that and go through a
  ``torch.utils.data.DataLoader`` with worker processes, pinned memory and uint8 transfer.

In both paths an epoch's order and every augmentation parameter are drawn up front from a CPU
``torch.Generator`` seeded from (seed, epoch), so ``train_batches(..., start_batch=k)`` yields
exactly the batches k, k+1, ... of the uninterrupted epoch and all DDP ranks agree on the order.

The package, from the bottom up (each module imports only those above it):

* :mod:`.records`: :class:`DatasetInfo`, :class:`Augment`, :class:`DatasetRecord`, the readers' result type;
* :mod:`.readers`: the in-memory readers of digits (embedded), MNIST, Fashion-MNIST and SVHN;
* :mod:`.cifar`: the CIFAR reader, with its restricted unpickler;
* :mod:`.batches`: epoch plans, device-side augmentation, :class:`DataBundle` and :class:`TensorBundle`;
* :mod:`.imagefolder`: folder sets through a DataLoader (:class:`FolderBundle`);
* :mod:`.datasets`: the registry (one record per set), its look-ups, and :func:`load_dataset`.

The names below are this package's face: import them from ``elth_cli.data``.
"""

from __future__ import annotations

from elth_cli.data.batches import DataBundle, TensorBundle, crop_flip, epoch_seed
from elth_cli.data.datasets import (canonical_name, check_compatible, dataset_descriptions, dataset_names,
                                    default_data_dir, get_dataset_info, load_dataset, resize_to_fit)
from elth_cli.data.imagefolder import FolderBundle
from elth_cli.data.readers import (DIGITS_MEAN, DIGITS_RESOURCE, DIGITS_STD, DIGITS_TEST_SIZE, digits_pixels_to_uint8,
                                   digits_split)
from elth_cli.data.records import SPLITS, Arrays, Augment, DatasetInfo, DatasetRecord, resized

__all__ = [
    "SPLITS", "Arrays", "Augment", "DatasetInfo", "DatasetRecord", "resized",
    "DIGITS_MEAN", "DIGITS_STD", "DIGITS_RESOURCE", "DIGITS_TEST_SIZE", "digits_pixels_to_uint8", "digits_split",
    "DataBundle", "TensorBundle", "FolderBundle", "crop_flip", "epoch_seed",
    "canonical_name", "check_compatible", "dataset_descriptions", "dataset_names", "default_data_dir",
    "get_dataset_info", "load_dataset", "resize_to_fit",
]
