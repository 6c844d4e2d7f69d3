"""One seeding scheme for every party: each random stream is derived from one ``--seed`` and
its role, so no two roles share a stream and no role's stream depends on another's seed.

``seed_for(seed, role)`` is numpy's ``SeedSequence(seed, spawn_key=(role number,))``: the same
construction as ``SeedSequence(seed).spawn(...)`` picking child ``role number``, with well-mixed
children even for nearby seeds (seed 0's validator is not seed 1's victim). The role numbers are
fixed: renumbering one changes every result that depends on it.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

__all__ = ["MAX_SEED", "SEEDING", "Role", "seed_for"]

Role = Literal[
    "body",  # the data holder's part-1 initial weights
    "head",  # the server's part-2 initial weights (the data holder sends it)
    "batch_order",  # the data holder's per-epoch shuffling
    "train_noise",  # Laplace noise on the cut tensor while training
    "eval_noise",  # Laplace noise for testing and deployment
    "oracle_noise",  # the attacker's noise when it queries the lent part 1
    "decoder",  # the attacker's decoder initial weights
    "decoder_order",  # the attacker's decoder batch order
    "validator",  # the validation classifier's initial weights
    "validator_order",  # the validation classifier's batch order
    "measure_noise",  # noise of the post-training measurements (experiments)
    "partition",  # how the training set is shared out among several data holders
    "val_noise",  # Laplace noise for the per-epoch validation
    "guard",  # the data holder's SplitGuard draws (fake batches, label shifts, set split)
    "hijack",  # a hijacking server's own models (pilot, decoder, critic) and public batches
    "substitute",  # a passive attacker's substitute part 1, its critic and its batch order
    "dp_noise",  # DP-SGD's Gaussian noise on part 1's gradients
]
_ROLE_NUMBER: dict[str, int] = {
    "body": 0,
    "head": 1,
    "batch_order": 2,
    "train_noise": 3,
    "eval_noise": 4,
    "oracle_noise": 5,
    "decoder": 6,
    "decoder_order": 7,
    "validator": 8,
    "validator_order": 9,
    "measure_noise": 10,
    "partition": 11,
    "val_noise": 12,
    "guard": 13,
    "hijack": 14,
    "substitute": 15,
    "dp_noise": 16,
}
# Recorded in manifests and run records: files made under another scheme are not reused.
# v2: validation noise has its own stream (v1 drew it from the test and deployment stream).
SEEDING = "seedsequence-v2"
MAX_SEED = 2**63 - 1


def seed_for(seed: int, role: Role, *, member: int | None = None) -> int:
    """The seed of `role`'s stream in a run seeded with `seed`: a 63-bit non-negative int
    (fits ``torch.manual_seed`` and the wire's uint64).

    `member`: a data holder's index in a training group; its own streams (shuffling, noise, a
    part 1 of its own) are ``spawn_key=(role number, member)``, distinct from every holder's and
    from the single-holder stream of the same role.

    Raises:
        ValueError: `seed` is negative or `role` is unknown.
    """
    if seed < 0:
        raise ValueError(f"a seed is a non-negative integer, not {seed}")
    if role not in _ROLE_NUMBER:
        raise ValueError(f"unknown seed role {role!r}")
    if member is not None and member < 0:
        raise ValueError(f"a group member's index is non-negative, not {member}")
    key = (_ROLE_NUMBER[role],) if member is None else (_ROLE_NUMBER[role], member)
    sequence = np.random.SeedSequence(seed, spawn_key=key)
    return int(sequence.generate_state(1, dtype=np.uint64)[0]) >> 1
