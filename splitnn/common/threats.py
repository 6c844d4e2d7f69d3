"""The threat models splitnn measures, by name: one home for the simulation that runs them
(`splitnn-sim --threat`) and the experiments that tabulate them (the ``threats`` group)."""

from __future__ import annotations

from typing import Literal

Threat = Literal["colluding", "fsha", "passive"]

# What each threat model assumes of the server (the data holder's program is the same in all).
THREATS: dict[str, str] = {
    "colluding": "the server logs the wire and a colluding data holder lends it black-box "
    "access to its part 1 (the study's threat model)",
    "fsha": "a malicious server answers the holder's steps with the gradients of its own "
    "objective (feature-space hijacking) and inverts the tensors with its own decoder",
    "passive": "an honest-but-curious server alone: its wire log, its head and public data "
    "train a substitute part 1, through which it trains the decoder",
}
