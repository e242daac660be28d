"""Orchestration: check inputs, run trials with torchrun, ceilings, resume."""
