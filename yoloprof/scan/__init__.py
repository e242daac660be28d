"""Orchestration: check inputs, run trials with torchrun, ceilings, resume."""

# A trial's measured and warm-up steps unless --steps / --warmup say otherwise: ScanRequest's defaults, here so
# the command line's help reads them without importing the request's dataset checks (0.7 s at every start).
STEPS = 20
WARMUP = 5
