"""loadtest: open- and closed-loop latency load testing with correct percentiles."""
