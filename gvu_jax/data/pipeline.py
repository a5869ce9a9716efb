"""The GvU stage's prompt batches: N prompts per step (each then sampled G times).

Two streams with one interface (next(stream) -> [Prompt]; get_state / set_state,
which the checkpoint holds):

  GrainPrompts  a prompt file or dataset: a grain pipeline over the prompts'
                indices. Each tag's prompts are shuffled per epoch with the seed
                and repeated; with `balance_tags` the tags are interleaved with
                equal weights (else all prompts form one shuffled stream). Its
                state is grain's iterator state.
  DrawnPrompts  the embedded world: each step's prompts drawn afresh from
                (seed, step), a category first, then a prompt in it
                (data/batches.py). Its state is the step.

Every host computes the same global batch (prompts are a few bytes; the rows a
host's devices hold are what it transfers, sharding.Layout.put_batch), so a
run's prompts do not depend on the number of hosts.
"""

import grain
import numpy as np

from gvu_jax.data import batches
from gvu_jax.infra.errors import InputError


def _seed(*parts):
  return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


class GrainPrompts:

  def __init__(self, prompts, n, seed, balance_tags=True, name="data.prompts"):
    if len(prompts) < n:
      raise InputError(f"{name} holds {len(prompts)} prompts, fewer than one batch "
                       f"(gvu.prompts_per_step={n})")
    self.prompts = prompts
    groups = {}
    for i, p in enumerate(prompts):
      groups.setdefault(p.category if balance_tags else "", []).append(i)
    streams = [grain.MapDataset.source(idx).shuffle(seed=_seed(seed, k)).repeat()
               for k, (_, idx) in enumerate(sorted(groups.items()))]
    mixed = streams[0] if len(streams) == 1 else grain.MapDataset.mix(
        streams, [1.0] * len(streams))
    self._dataset = mixed.batch(n).to_iter_dataset(
        grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))   # index math only
    self._iterator = iter(self._dataset)

  def __iter__(self):
    return self

  def __next__(self):
    return [self.prompts[int(i)] for i in next(self._iterator)]

  def get_state(self):
    return self._iterator.get_state()

  def set_state(self, state):
    self._iterator.set_state(state)

  @staticmethod
  def position(step):
    """The state after `step` batches."""
    return {"next_index": step}


class DrawnPrompts:

  def __init__(self, specs, n, seed):
    self.specs, self.n, self.seed, self.step = specs, n, seed, 0

  def __iter__(self):
    return self

  def __next__(self):
    out = batches.prompt_batch(self.specs, self.n, batches.rng_for(self.seed, "gvu", self.step))
    self.step += 1
    return out

  def get_state(self):
    return {"step": self.step}

  def set_state(self, state):
    self.step = int(state["step"])

  @staticmethod
  def position(step):
    return {"step": step}

