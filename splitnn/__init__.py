"""splitnn: split learning over gRPC, a colluding model-inversion attacker, and its defences."""
