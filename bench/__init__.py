"""Benchmarks of the Monte Carlo engine and the gRPC service (run with ``python -m bench.core``)."""
