"""Pipeline steps: one module per step, a plain step function plus its KFP component."""
