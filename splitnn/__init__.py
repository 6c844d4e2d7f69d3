"""splitnn: split learning over gRPC, a colluding model-inversion attacker, and its defences."""

import os

# gRPC's core logs connection events (a server's GOAWAY, a refused connection) to stderr on its
# own; the programs report what matters in their own words. Read when grpc is first imported,
# so it is set here, before any module imports grpc; a user's own setting wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
