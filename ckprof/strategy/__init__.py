"""Choosing a checkpointing strategy: compare two runs, checkpointing policies, and the
sweep over policies.

- :mod:`ckprof.strategy.compare`: two analyses side by side (pure, no torch);
- :mod:`ckprof.strategy.policies`: what a policy is and how it is written (pure);
- :mod:`ckprof.strategy.sweep`: the sweep's result, verdicts, frontier (pure);
- :mod:`ckprof.strategy.runner`: running a policy on a model (imports torch when called).
"""
