"""gRPC channel and server options, shared by both ends so their limits agree."""

from __future__ import annotations

import math

# Room for everything in a message besides the activations: labels, indices, step id, framing.
_OVERHEAD_BYTES = 64 * 1024
_LARGEST_ITEMSIZE = 8  # float64, the widest float in the codec's allow-list


def message_limit(*, max_batch_size: int, cut_shape: tuple[int, ...], weights: bool = False) -> int:
    """Bytes of the largest legal message: a full batch of float64 activations plus labels, or
    with `weights` (training groups) part 1's weights if they are larger."""
    per_sample = math.prod(cut_shape) * _LARGEST_ITEMSIZE + 2 * 8  # activations, label, index
    batch = max_batch_size * per_sample + _OVERHEAD_BYTES
    if not weights:
        return batch
    from splitnn.common.weights import BODY_BYTES  # builds part 1 once: only groups need it

    return max(batch, BODY_BYTES + _OVERHEAD_BYTES)


def grpc_options(*, max_message_bytes: int) -> list[tuple[str, int]]:
    """Options for `grpc.server(...)` and `grpc.insecure_channel(...)`.

    The receive limit is sized from the cut shape and batch size (the default, 4 MiB, fits batch
    1024 of float32 but not of float64); nothing larger is ever legal, so nothing larger is read.
    Keepalive pings every 30 s let both ends notice a dead peer on an idle stream.
    """
    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
    ]
