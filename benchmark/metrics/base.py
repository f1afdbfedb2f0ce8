"""The metric contract: integer count state + a pure function from counts to numbers.

As in torchmetrics, a metric's state is a dict of int64 arrays whose element-wise sum over
images (and shards, and processes) is the dataset state. ``counts`` returns one image's
contribution; ``compute`` turns a summed state into percentages. Per-image counts are what
``per_image.parquet`` stores, so any table can be recomputed exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np


@dataclass
class NoParams:
    pass


class Metric:
    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams

    def __init__(
        self, num_classes: int, class_names: Sequence[str], ignore_index: int = 255, params: Any = None,
        void_value: Optional[int] = None,
    ):
        if len(class_names) != num_classes:
            raise ValueError(f"metric {self.name}: {len(class_names)} class names for {num_classes} classes")
        self.num_classes = int(num_classes)
        self.class_names = list(class_names)
        self.ignore_index = int(ignore_index)
        self.params = params if params is not None else self.Params()
        #: prediction value meaning "no decision" (``method.void_value``), None: every value is a
        #: prediction. Such a pixel is scored as mmseg scores an out-of-range prediction: a miss
        #: of its label's class (an FN), a prediction of no class (no FP); see ``counting.split_void``.
        self.void_value = None if void_value is None else int(void_value)

    def check_void_value(self, first_free: int, what: str) -> None:
        """ValueError unless the void value lies outside the valid predictions 0..first_free-1."""
        if self.void_value is not None and 0 <= self.void_value < first_free:
            raise ValueError(
                f"method.void_value={self.void_value} is one of the valid {what} 0..{first_free - 1} of metric "
                f"{self.name}; a void value must be >= {first_free} (e.g. 255)"
            )

    # -- state -----------------------------------------------------------------------
    def state_shapes(self) -> Dict[str, Tuple[int, ...]]:  # pragma: no cover - abstract
        raise NotImplementedError

    def zero_state(self) -> Dict[str, np.ndarray]:
        return {k: np.zeros(s, dtype=np.int64) for k, s in self.state_shapes().items()}

    @staticmethod
    def add_(total: Dict[str, np.ndarray], other: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        for k, v in other.items():
            total[k] += v
        return total

    # -- per image ---------------------------------------------------------------------
    def counts(self, pred: Any, label: Any, image_id: str) -> Dict[str, np.ndarray]:  # pragma: no cover
        """One image's count contribution. pred, label: (H, W) integer arrays/tensors."""
        raise NotImplementedError

    # -- final numbers -------------------------------------------------------------------
    def compute(self, state: Mapping[str, np.ndarray]) -> Dict[str, Any]:  # pragma: no cover
        """Percentages from a summed state; ``per_class_IoU`` as {class_name: value or None}."""
        raise NotImplementedError
