"""GvU on a converted Janus-Pro-1B checkpoint: the recipes of configs/janus_pro_7b.py
(presets `lora` and `t2i_r1`) for the 1B model.

  python -m gvu_jax.main --config=configs/janus_pro_1b.py:lora \
      --config.checkpoint=/ckpt/janus_pro_1b --workdir=/runs/gvu_1b
"""

from gvu_jax.infra import recipes

_recipe = recipes.sibling(__file__, "janus_pro_7b")


def get_config(arg=None):
  return _recipe.get_config(arg, model="janus_pro_1b")
