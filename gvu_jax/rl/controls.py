"""The rewards of the control runs (docs/design.md §7), which the update sees in
place of the intrinsic reward: `shuffled`, each group's rewards permuted among its
images (the same rewards, no information about which image earned which), and
`judge`, the embedded world's exact verdict (the ceiling). The only module of rl/
that reads the world's judge."""

import jax
import numpy as np

from gvu_jax import world
from gvu_jax.infra import sharding
from gvu_jax.world import judge


def shuffle_within_groups(rewards, group_size, key):
  """The control ablation: each group's rewards randomly permuted among its samples."""
  r = rewards.reshape(-1, group_size)
  keys = jax.random.split(key, r.shape[0])
  return jax.vmap(jax.random.permutation)(keys, r).reshape(-1)


def judge_verdicts(texts, codes, group_size):
  """1.0 where the embedded world's pixel judge accepts an image for its prompt,
  else 0.0: the reward of the ceiling run (reward.kind=judge), float32 [rows]."""
  specs = {s.text: s for s in world.all_specs()}
  images = world.codes_to_image(sharding.to_host(codes))
  rows = [specs[t] for t in texts for _ in range(group_size)]
  return judge.judge_batch(images, rows).astype(np.float32)
