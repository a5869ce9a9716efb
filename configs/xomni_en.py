"""GvU on a converted X-Omni-En checkpoint, the paper's own recipe as the GvU
reference runs it (omni_r1/scripts/run_grpo.sh; docs/recipes.md gives each value
with its file and line): 8 prompts x G=2 a step, beta 0.03, lr 1e-6 with linear
decay to 0, AdamW (0.9, 0.999), LoRA r8/alpha32 on the decoder projections
(embeddings and heads excluded), temperature 1, min_p 0.03, top_k 50
(transformers' default, which the reference's sampler applies), no CFG, 576 px
images (36 x 36 tokens), 4 epochs of GenEval-style training prompts.

  python -m gvu_jax.convert --src=X-Omni-En --dst=/ckpt/xomni_en
  python -m gvu_jax.data.builders --name=geneval_prompts
  python -m gvu_jax.main --config=configs/xomni_en.py --config.checkpoint=/ckpt/xomni_en \
      --workdir=/runs/xomni

The reward is scored in token space: the understanding query holds the generated
image tokens themselves (X-Omni reads and writes the same SigLIP-VQ tokens), not a
FLUX rendering re-tokenized as in the reference. Everything else is the Janus
recipe's (configs/janus_pro_7b.py), which this file adapts.
"""

from gvu_jax.infra import recipes

_recipe = recipes.sibling(__file__, "janus_pro_7b")


def get_config(arg=None):
  preset = arg or "lora"
  if preset != "lora":
    raise ValueError(f"unknown preset {preset!r}; expected one of ['lora']")
  c = _recipe.get_config("lora", model="xomni_en")
  # image_grid: tokens per image (36 x 36 = 576 px; X-Omni takes any grid).
  # system_prompt: the understanding query's system turn (None: Qwen2.5's default;
  # "" for none); check it against the release's tokenizer_config.json.
  c.model_options.update(image_grid=(36, 36), system_prompt=None)
  c.data.prompts = "geneval_prompts"
  # The reference's 8 GPUs x 1 prompt x G=2 make 8 prompts (16 images) a step; its 4
  # epochs are gvu.steps = 4 x (training prompts) / 8: 1100 for geneval_prompts:train.
  c.gvu.update(steps=1100, prompts_per_step=8, group_size=2, checkpoint_every=100)
  c.gvu.sampling.update(temperature=1.0, top_k=50, min_p=0.03, cfg_weight=1.0)
  # mode=eval: GenEval++ as the paper reports it, one image a prompt, the training sampler.
  c.eval.update(prompts="geneval_plus", images_per_prompt=1)
  c.eval.sampling.update(top_k=50, min_p=0.03, cfg_weight=1.0)
  return c
