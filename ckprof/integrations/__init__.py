"""Drivers over :class:`ckprof.analysis.Analysis` for other tools and scales: many ranks
(:mod:`ckprof.integrations.ranks`, optionally on Dask) and Holistic Trace Analysis
(:mod:`ckprof.integrations.hta`)."""
