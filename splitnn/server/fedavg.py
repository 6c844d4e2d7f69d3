"""FedAvg of one round of a group: the holders' parts 1 and heads, weighted by their samples."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from splitnn.common.codec import WeightsBlob
from splitnn.common.weights import average, from_blob, to_blob


def average_round(
    bodies: Sequence[WeightsBlob], heads: Sequence[torch.nn.Module], counts: Sequence[int]
) -> WeightsBlob:
    """Averages the handed-in parts 1 and the heads, in holder order, weighted by `counts`.

    Every head is loaded with the average of the heads; returns the averaged part 1 as a blob.
    The blobs were checked when they were handed in.
    """
    averaged = to_blob(average([from_blob(blob) for blob in bodies], counts))
    head = average([h.state_dict() for h in heads], counts)
    for h in heads:
        h.load_state_dict(head)
    return averaged
