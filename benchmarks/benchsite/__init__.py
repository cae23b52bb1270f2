"""The Django site the HTTP benchmarks serve: one view, one indexed ``SELECT``."""
