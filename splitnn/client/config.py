"""The data holder's settings, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from splitnn.client.dp import DPSettings
from splitnn.client.guard import GuardSettings
from splitnn.common.credentials import Credentials
from splitnn.common.models import PLAIN_BATCH_SIZE


@dataclass(frozen=True)
class ClientConfig:
    """Settings of one `splitnn-client` training run.

    Attributes:
        server: "host:port" of the computation server.
        dataset: a registered dataset name (see `splitnn.common.datasets.DATASETS`).
        noise: Laplace scale b on the cut tensor while training (0: none).
        nopeek: NoPeek weight W (0: plain cross-entropy).
        eval_noise: Laplace scale when evaluating and deploying; None: same as `noise`.
        epochs, batch_size, lr, seed: the study's training settings.
        max_steps: stop each epoch after this many batches (smoke runs); None: whole epochs.
        model_dir: client checkpoints go to ``model_dir/classifiers``.
        data_dir: where torchvision datasets are stored / downloaded.
        run: session name on the server; None derives it from the settings.
        threads: torch threads; None: OMP_NUM_THREADS where set, else all cores.
        deploy: after training, put the attack-evaluation slice through the model (the
            victim's deployment-time inference that a colluding server can intercept).
        progress: show progress bars.
        from_checkpoint: evaluate (and with `deploy`, deploy) this trained part-1 checkpoint
            instead of training; its settings come from its manifest, the server loads the head
            of the same name.
        connect_timeout: seconds to wait for the server at the start.
        step_timeout: seconds one step (or any call) may take before it is sent again.
        reconnect_timeout: seconds to keep retrying once the server stopped answering.
        save_every: a save point every this many steps, besides every epoch end (0: epoch ends
            only); both sides save their state there.
        resume: continue the run from this side's last save (``model_dir/client/<run>.ckpt``).
        restart: start the run over even if an interrupted one left a state to resume.
        credentials: TLS files and/or bearer token for the server.
        send_indices: evaluation harness only: send each batch's sample indices, so an attack
            on what the server received can be scored against the true images.
        group: join this training group of the server (None: train alone); see `group.py`.
        holder, holders: this holder's index 0..K-1 and K; the training set is shared out
            among K holders (`partition`, `alpha`) and this holder trains on its share.
        partition, alpha: "iid", or "dirichlet" with concentration `alpha` (non-IID by label).
        group_timeout: seconds one synchronisation may wait for the other holders.
        guard: the hijack detector that watches the server's gradients (a name in
            `splitnn.client.guard.GUARDS`); None: none.
        guard_settings: its settings (N, P_f, m, e, threshold, action).
        dp: DP-SGD on part 1 (`splitnn.client.dp`); None: plain training.
        device: where part 1 computes (`splitnn.common.devices`): cpu, cuda:N, mps.
    """

    server: str = "127.0.0.1:50051"
    dataset: str = "mnist5k"
    noise: float = 0.0
    nopeek: float = 0.0
    eval_noise: float | None = None
    epochs: int = 10
    batch_size: int = PLAIN_BATCH_SIZE
    lr: float = 1e-4
    seed: int = 0
    max_steps: int | None = None
    model_dir: Path = Path("models")
    data_dir: Path = Path("data")
    run: str | None = None
    threads: int | None = None
    deploy: bool = False
    connect_timeout: float = 30.0
    step_timeout: float = 60.0
    reconnect_timeout: float = 120.0
    save_every: int = 100
    resume: bool = False
    restart: bool = False
    progress: bool = True
    from_checkpoint: Path | None = None
    credentials: Credentials = field(default_factory=Credentials)
    send_indices: bool = False
    group: str | None = None
    holder: int = 0
    holders: int = 1
    partition: str = "iid"
    alpha: float | None = None
    group_timeout: float = 3600.0
    guard: str | None = None
    guard_settings: GuardSettings = field(default_factory=GuardSettings)
    dp: DPSettings | None = None
    device: str = "cpu"
