"""Orchestration of `realdpo train`: the trainer's phases, checkpoints, and the training plot."""
