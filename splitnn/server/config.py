"""The server's settings, built by the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitnn.server.group_spec import GroupSpec


@dataclass(frozen=True)
class ServerConfig:
    """Settings of one `splitnn-server` process.

    Attributes:
        host, port: where to listen; port 0 picks a free port (read it back from `build_server`).
        model_dir: where heads and resume states are written.
        max_batch_size: the largest batch a session may use; sizes the message limit.
        threads: torch intra-op threads for the head (it is small: 1 leaves the cores to the data
            holder, which does the heavy convolutions).
        seed: seeds a head whose data holder did not send a seed.
        grace: seconds in-flight steps get to finish on shutdown; the process ends within
            grace + 5 s of SIGTERM whatever is in flight.
        max_sessions: live sessions at most (one more is RESOURCE_EXHAUSTED).
        max_streams: open SplitLearning calls at most, idle streams included.
        max_sessions_per_party, max_streams_per_party: the same limits for each party (identity)
            alone, so that no party can take the whole server; None: see `sessions_per_party`.
        max_inflight: requests waiting for or on the compute thread at most.
        session_ttl: seconds of inactivity after which a session is saved and forgotten (its
            data holder resumes it transparently).
        tls_cert, tls_key: the server's certificate and key (PEM): serve TLS.
        client_ca: require client certificates signed by this CA (mutual TLS); each party's
            identity and role come from its certificate.
        tokens: a file of ``<name> <role> <token>`` lines: identities by bearer token.
        insecure: allow plaintext on an address other than loopback.
        stop_after_runs: stop (gracefully) once this many runs have finished (closed as finished
            after at least one step applied) and no session is live: a one-shot deployment such
            as docker compose ends by itself. None: never.
        keep_checkpoints: head checkpoints kept per run, the newest; an older one is removed
            when a newer one is written.
        tap_log: collusion mode: append every received batch to this wire log.
        tap: collusion mode: serve received batches live on the Tap service.
        anonymous_tap: without client certificates or tokens, every caller may also tap
            (otherwise the anonymous party only trains).
        groups: training groups that several data holders join (see `group.py`).
        hijack: MALICIOUS SERVER: a hijacking head policy ("fsha", see `hijack.py`); None:
            honest.
        hijack_data: the hijacking server's public data set (None: the holders' data set,
            mnist5k by default).
        data_dir: where the public data set is read.
        hijack_pretrain_steps: autoencoder steps of the pilot and decoder before serving.
        hijack_snapshot_every: decoder snapshot every N holder steps (0: only at the end).
        device: where the heads compute (`splitnn.common.devices`; the process's compute device).
    """

    host: str = "127.0.0.1"
    port: int = 50051
    model_dir: Path = Path("models")
    max_batch_size: int = 1024
    threads: int = 1
    seed: int = 0
    grace: float = 10.0
    max_sessions: int = 64
    max_streams: int = 256
    max_sessions_per_party: int | None = None
    max_streams_per_party: int | None = None
    max_inflight: int = 64
    session_ttl: float = 600.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    tokens: Path | None = None
    insecure: bool = False
    stop_after_runs: int | None = None
    keep_checkpoints: int = 3
    tap_log: Path | None = None
    tap: bool = False
    anonymous_tap: bool = False
    groups: tuple[GroupSpec, ...] = ()
    hijack: str | None = None
    hijack_data: str | None = None
    data_dir: Path = Path("data")
    hijack_pretrain_steps: int = 300
    hijack_snapshot_every: int = 0
    device: str = "cpu"

    def sessions_per_party(self, *, authenticated: bool) -> int:
        """Live sessions one party may hold: `max_sessions_per_party`, by default a quarter of
        `max_sessions` (at least 1); never more than `max_sessions`. Without authentication
        every caller is the one anonymous party, whose default is `max_sessions` itself."""
        return _share(self.max_sessions_per_party, self.max_sessions, 1, authenticated)

    def streams_per_party(self, *, authenticated: bool) -> int:
        """Open calls one party may hold: `max_streams_per_party`, by default a quarter of
        `max_streams` (at least `MIN_STREAMS_PER_PARTY`), as `sessions_per_party`."""
        return _share(
            self.max_streams_per_party, self.max_streams, MIN_STREAMS_PER_PARTY, authenticated
        )


# A holder's session holds up to three calls at once: Train, Evaluate and one unary call.
MIN_STREAMS_PER_PARTY = 3


def _share(given: int | None, total: int, least: int, authenticated: bool) -> int:
    if given is None:
        given = max(total // 4, least) if authenticated else total
    return min(given, total)
