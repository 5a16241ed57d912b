"""The benchmark behind ``python -m ic_core bench``: timing, workloads and the harness."""
