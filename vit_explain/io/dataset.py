"""Images to tensors in DataLoader workers; a bad file becomes an error record, not a crash."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .images import ImageError, load_image


class ImageFiles(Dataset):
    def __init__(self, paths: list[Path], preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict:
        path = self.paths[index]
        try:
            image = load_image(path)
            return {"path": path, "tensor": self.preprocess(image), "image": np.asarray(image), "error": None}
        except ImageError as error:
            return {"path": path, "tensor": None, "image": None, "error": str(error)}
        except Exception as error:  # a decoder bug must not stop the folder
            return {"path": path, "tensor": None, "image": None, "error": f"{path}: cannot read: {error}"}


def keep_as_list(items: list[dict]) -> list[dict]:
    """The batch as it is: items hold Nones (bad files) and images of different sizes, which the
    default collate cannot stack. A module-level function, as DataLoader workers pickle it."""
    return items


def image_batches(paths: list[Path], preprocess, batch_size: int, workers: int) -> DataLoader:
    # persistent_workers=False: workers exit with the loop, so an interrupted run leaves none behind
    return DataLoader(ImageFiles(paths, preprocess), batch_size=batch_size, shuffle=False,
                      num_workers=workers, collate_fn=keep_as_list,
                      persistent_workers=False, pin_memory=torch.cuda.is_available())
