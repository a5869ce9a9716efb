"""What every stage shares: the config, the workdir, the tokenizer and
templates, the prompt splits and the image tokenizer."""

import dataclasses
import os

from gvu_jax import reward, text
from gvu_jax.data import world
from gvu_jax.errors import InputError
from gvu_jax.models import build


@dataclasses.dataclass
class Context:
  config: object
  workdir: str
  tokenizer: object
  templates: text.Templates
  train_specs: list
  heldout_specs: list
  image_tokenizer: object
  reward_weights: object      # per-token-id weights for the `weighted` reward

  @classmethod
  def create(cls, config, workdir):
    tokenizer = text.synthetic_tokenizer()
    m = config.model
    if tokenizer.get_vocab_size() != m.lm.vocab_size:
      raise InputError(f"model.lm.vocab_size={m.lm.vocab_size} but the tokenizer has "
                       f"{tokenizer.get_vocab_size()} tokens")
    train, heldout = world.split_specs(config.data.split_seed, config.data.heldout_fraction)
    return cls(config=config, workdir=workdir, tokenizer=tokenizer,
               templates=text.Templates(tokenizer, m.image_tokens, m.max_prompt_tokens),
               train_specs=train, heldout_specs=heldout,
               image_tokenizer=build.image_tokenizer(m),
               reward_weights=reward.token_weight_table(
                   tokenizer, dict(config.reward.token_weights), m.lm.vocab_size))

  def path(self, *parts):
    return os.path.join(self.workdir, *parts)
