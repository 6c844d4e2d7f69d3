"""The device a program computes on: ``--device auto|cpu|cuda|cuda:N|mps``.

One process computes on one device. A program resolves its ``--device`` once (`resolve_device`)
and makes it the process's compute device (`use_device`); the code that builds a model puts it
there (`on_device`) and the code that computes moves its inputs to the model's device. What
crosses the wire, what is saved and what is compared stays device-independent: tensors leave the
device before they are encoded (`splitnn.common.codec`) or saved, and checkpoints load onto the
CPU first, then move. Random draws that decide *what* is computed (shuffling, Poisson batches,
Laplace and DP noise, weight initialisation) are made on the CPU so that a seed means the same
thing on every device; the arithmetic itself may differ in the last bits between devices.
"""

from __future__ import annotations

import os
import re
from typing import TypeVar

import torch

from splitnn.common.exits import BadUsage

DEVICE_HELP = "auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps."
_PATTERN = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")

M = TypeVar("M", bound=torch.nn.Module)
T = TypeVar("T")

_current = torch.device("cpu")


class DeviceError(BadUsage, ValueError):
    """A device that is not a device name, or that this machine lacks: a usage error."""


def resolve_device(spec: str) -> torch.device:
    """The device `spec` names on this machine: ``auto`` picks CUDA if available, else the CPU.

    ``cuda`` means ``cuda:0``. Raises DeviceError (one line) for an unknown name or a device
    this machine lacks (no CUDA, fewer GPUs than N, no MPS).
    """
    name = spec.strip().lower()
    if not _PATTERN.match(name):
        raise DeviceError(f"unknown device {spec!r}: expected {DEVICE_HELP}")
    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        backend = getattr(torch.backends, "mps", None)
        if backend is None or not backend.is_available():
            raise DeviceError("device 'mps' is not available on this machine (no Apple GPU)")
        return torch.device("mps")
    index = int(name.split(":", 1)[1]) if ":" in name else 0
    if not torch.cuda.is_available():
        raise DeviceError(f"device '{name}' is not available on this machine (no CUDA GPU)")
    count = torch.cuda.device_count()
    if index >= count:
        raise DeviceError(
            f"device 'cuda:{index}' is not available on this machine ({count} CUDA GPU(s))"
        )
    return torch.device(f"cuda:{index}")


def cpu_threads() -> int:
    """The CPU threads a process may use when not told: ``OMP_NUM_THREADS`` where the
    environment sets it to a positive integer (a scheduler's or the grid's share of the cores),
    else every core."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return os.cpu_count() or 1


def use_device(device: torch.device | str) -> torch.device:
    """Makes `device` (a resolved device, or a name for `resolve_device`) the process's compute
    device and returns it."""
    global _current
    _current = device if isinstance(device, torch.device) else resolve_device(device)
    if _current.type == "cuda":
        torch.cuda.set_device(_current)
    return _current


def compute_device() -> torch.device:
    """The process's compute device (the CPU unless a program chose another)."""
    return _current


def on_device(module: M) -> M:
    """`module` moved to the compute device (in place, as ``Module.to`` does); returns it."""
    if _current.type == "cpu":
        return module
    return module.to(_current)


def to_compute(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the compute device (itself when it is there already)."""
    return tensor if tensor.device == _current else tensor.to(_current, non_blocking=True)


def device_name(device: torch.device) -> str:
    """How a device is written on a command line: ``cpu``, ``cuda:0``, ``mps``."""
    return str(device) if device.index is not None or device.type != "cuda" else "cuda:0"


def to_cpu(value: T) -> T:
    """`value` with every tensor in it (nested in dicts, lists and tuples) on the CPU: what is
    saved or compared is device-independent."""
    if isinstance(value, torch.Tensor):
        return value if value.device.type == "cpu" else value.cpu()  # type: ignore[return-value]
    if isinstance(value, dict):
        return {key: to_cpu(item) for key, item in value.items()}  # type: ignore[return-value]
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(item) for item in value)
    return value


# The variables (`splitnn.programs`: SPLITNN_<PROGRAM>[_<COMMAND>]_<OPTION>) through which an
# orchestrator's --device reaches every program it starts.
CHILD_VARIABLES = (
    "SPLITNN_SERVER_DEVICE",
    "SPLITNN_CLIENT_DEVICE",
    "SPLITNN_ATTACK_RUN_DEVICE",
    "SPLITNN_ATTACK_VALIDATOR_DEVICE",
    "SPLITNN_ATTACK_HIJACKED_DEVICE",
    "SPLITNN_SIM_DEVICE",
)


def export_device(spec: str, *, here: bool = True) -> str:
    """Sets the device `spec` names in this process's environment for every splitnn program it
    starts (`CHILD_VARIABLES`) and returns what was set.

    `here`: the programs run on this machine, so `spec` is resolved here (``auto`` becomes this
    machine's choice, a device it lacks is refused). Otherwise (jobs on a cluster's nodes) only
    its spelling is checked and each program resolves it on its own node.

    Raises:
        DeviceError: see `resolve_device`.
    """
    name = spec.strip().lower()
    if here:
        name = device_name(resolve_device(spec))
    elif not _PATTERN.match(name):
        raise DeviceError(f"unknown device {spec!r}: expected {DEVICE_HELP}")
    for variable in CHILD_VARIABLES:
        os.environ[variable] = name
    return name
