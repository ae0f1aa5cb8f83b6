//! Shared helpers for Airlock's benchmarks and evaluation tools.
