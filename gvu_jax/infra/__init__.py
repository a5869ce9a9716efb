"""What every part stands on, and which imports nothing above it: errors, files,
checkpoints, metrics, preemption, profiling, provenance, sharding, hosts, the
fault injector, the command-line helpers, pixels and image grids."""
