"""Which trials to run: the knob space, the plan, pruning and the strategy."""
