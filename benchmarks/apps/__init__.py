"""Job definitions the queue benchmarks run in real worker processes."""
