"""Tools beside a run: the benchmarks (mode=bench), the compile-for-a-TPU-slice
check, the PyTorch reference loop, the export benchmark and the claims check."""
