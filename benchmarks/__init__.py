"""Side-by-side benchmarks of flow-tracker and the alternatives (``make bench``)."""
