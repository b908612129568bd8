"""Benchmarks: one `bench_<topic>.py` per topic, each measuring its baseline in the same run."""
