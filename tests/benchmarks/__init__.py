"""Benchmarks: kernel micro-benchmarks and the end-to-end pipeline on real Kafka and Redis.

They report numbers (``docs/results/*.json``) and never fail on a timing; ``test_bench_smoke``
only checks that the kernel benchmark runs and that its kernels agree with the NumPy reference.
"""
