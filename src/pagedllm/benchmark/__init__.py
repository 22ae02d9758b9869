"""Benchmarks reachable from the CLI (``pagedllm bench ...``): fixed workloads and runners."""
