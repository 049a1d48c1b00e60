"""shellgate benchmarks against direct OpenSSH: ``python -m bench.run`` (``make bench``)."""
