"""Vendor figures of the accelerators a run may meet: per chip, dense bfloat16
FLOP/s, HBM bytes/s and HBM bytes. The benchmark's MFU and on-paper estimates and
the compile-for-a-slice check read them; the config checker names the machines."""

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One chip, from the vendor's specifications."""
  name: str
  flops: float       # dense bfloat16 FLOP/s
  bandwidth: float   # HBM bytes/s
  hbm: int           # HBM bytes


# TPUs by the device kind jax reports.
CHIPS = {"TPU v4": Chip("v4", 275e12, 1228e9, 32 * GiB),
         "TPU v5 lite": Chip("v5e", 197e12, 819e9, 16 * GiB),
         "TPU v5": Chip("v5p", 459e12, 2765e9, 95 * GiB),
         "TPU v6 lite": Chip("v6e", 918e12, 1640e9, 32 * GiB)}

# Dense bf16 peak TFLOP/s of GPUs by a name their device kind contains; other
# devices use the matmul throughput the benchmark measures.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}

# `bench.machine` names: per chip (FLOP/s, HBM bytes/s, HBM bytes).
MACHINES = {**{chip.name: (chip.flops, chip.bandwidth, chip.hbm) for chip in CHIPS.values()},
            "h100": (989e12, 3350e9, 80 * GiB), "h200": (989e12, 4800e9, 141 * GiB)}
