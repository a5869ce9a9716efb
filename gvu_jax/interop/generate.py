"""Images from prompts, with the sampler GvU trains with.

  python -m gvu_jax.generate --checkpoint=CONVERSION_OR_WORKDIR [--step=N]
      (--prompt="..." | --prompts=FILE) [--n=4] [--cfg=5] [--temperature=1]
      [--top_k=0] [--top_p=1] [--seed=0] --out=DIR

CONVERSION_OR_WORKDIR is a converted Janus checkpoint (python -m gvu_jax.convert),
a GvU workdir (its latest policy, or --step; a run on a converted checkpoint or
on the embedded world) or an export in gvu_jax's own layout (python -m
gvu_jax.export --format=safetensors). Writes
DIR/<index:05d>_<n>.png for every image and DIR/sheet.png, one labelled row per
prompt. Prompt i's images are drawn from fold_in(key(seed), i), one prompt at a
time, so they do not depend on what else is generated with them.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import PIL.Image
from absl import flags
from etils import epath
from flax import nnx

from gvu_jax.data import prompt_files
from gvu_jax.infra import cli as cli_lib, grid, metrics
from gvu_jax.infra.errors import InputError
from gvu_jax.infra.pixels import to_uint8
from gvu_jax.interop import export
from gvu_jax.interop.convert import store
from gvu_jax.models import build
from gvu_jax.rl.sampling import Sampler, SamplingConfig
from gvu_jax.text import janus as janus_text, synthetic


def load(checkpoint, step=None):
  """-> (model config, graphdef, params, templates) of a conversion, a GvU
  workdir's policy (LoRA folded into the weights; an embedded-world run's too)
  or an export in gvu_jax's own layout."""
  path = epath.Path(checkpoint)
  if (path / "gvu" / "model_config.json").exists():
    policy = export.Policy(checkpoint, step)
    m, params = policy.model, policy.params()
    tokenizer_dir = policy.source or path / "pretrain"
  else:
    if step is not None:
      raise InputError(f"--step={step}: {checkpoint} is not a GvU workdir")
    if (path / export.DONE_FILE).exists():
      fmt = export.export_info(path).get("format")
      if fmt != "safetensors":
        raise InputError(f"{checkpoint}: a {fmt} export; convert it first (python -m "
                         f"gvu_jax.convert --src={checkpoint} --dst=...)")
      m, params = export.load_own(checkpoint)
    else:
      m, params = store.load(checkpoint, dtype="float32", param_dtype=np.float32)
    tokenizer_dir = checkpoint
  if m.family != "janus":
    raise InputError(f"{checkpoint}: a {m.family} checkpoint; generate draws Janus images "
                     "(X-Omni's pixels need its FLUX decoder: gvu_jax.evaluation.render_xomni)")
  tokenizer = janus_text.load_tokenizer(str(tokenizer_dir))
  if m.image_tokenizer == "cells":   # the embedded world
    templates = synthetic.Templates(tokenizer, m.image_tokens, m.max_prompt_tokens)
  else:
    templates = janus_text.JanusTemplates(tokenizer, m.image_tokens, m.max_prompt_tokens,
                                          style=m.template)
  m.dtype = "float32"
  graphdef, _ = build.abstract(m)
  return m, graphdef, jax.tree.map(jnp.asarray, params), templates


def read_prompts(prompt, prompts):
  if bool(prompt) == bool(prompts):
    raise InputError("give one of --prompt and --prompts")
  if prompt:
    return [prompt]
  return [p.text for p in prompt_files.read(prompts)]


def generate(checkpoint, prompts, out, *, n=4, cfg=5.0, temperature=1.0, top_k=0, top_p=1.0,
             seed=0, step=None, log=print):
  """Writes n images per prompt and a contact sheet to `out`; returns the uint8
  images [len(prompts), n, H, W, 3]."""
  if n < 1:
    raise InputError(f"--n={n}: must be >= 1")
  sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, cfg_weight=cfg)
  m, graphdef, params, templates = load(checkpoint, step)
  for text in prompts:
    templates.encode_prompt(text)   # every prompt checked before anything is drawn
  sampler = Sampler(graphdef, sampling, num_tokens=m.image_tokens,
                    uncond_row=templates.unconditional(1), group_size=n)
  tokenizer = build.image_tokenizer(m)
  decode = jax.jit(lambda p, codes: tokenizer.decode(codes, nnx.merge(graphdef, p)))
  os.makedirs(out, exist_ok=True)
  images = []
  bar = metrics.progress(len(prompts), "generate")
  for i, text in enumerate(prompts):
    ids, valid = templates.generation([text])
    samples = sampler(params, ids, valid, jax.random.fold_in(jax.random.key(seed), i))
    pixels = np.asarray(to_uint8(decode(params, samples.codes)))
    for j, image in enumerate(pixels):   # written aside, then renamed
      path = os.path.join(out, f"{i:05d}_{j}.png")
      PIL.Image.fromarray(image).save(path + ".tmp", "PNG")
      os.replace(path + ".tmp", path)
    images.append(pixels)
    bar.update(1)
  bar.close()
  images = np.stack(images)
  grid.save_grid(os.path.join(out, "sheet.png"), images.reshape(-1, *images.shape[2:]),
                 ncols=n, scale=max(1, 128 // images.shape[2]),
                 captions=[t for t in prompts for _ in range(n)],
                 title=f"{os.path.basename(os.path.normpath(checkpoint))}: seed {seed}, "
                       f"cfg {cfg:g}, temperature {temperature:g}")
  log(f"generate: {images.shape[0] * n} images of {len(prompts)} prompt(s) in {out}")
  return images


def define_flags():
  flags.DEFINE_string("checkpoint", None, "A converted Janus checkpoint, a GvU workdir or "
                      "a gvu_jax-layout export.")
  flags.DEFINE_integer("step", None, "For a GvU workdir: the step (default: the latest).")
  flags.DEFINE_string("prompt", None, "One prompt.")
  flags.DEFINE_string("prompts", None, "A prompt file (.txt, .jsonl or .csv).")
  flags.DEFINE_integer("n", 4, "Images per prompt.")
  flags.DEFINE_float("cfg", 5.0, "Classifier-free guidance weight (1 = off).")
  flags.DEFINE_float("temperature", 1.0, "Sampling temperature.")
  flags.DEFINE_integer("top_k", 0, "Top-k (0 = off).")
  flags.DEFINE_float("top_p", 1.0, "Top-p (1 = off).")
  flags.DEFINE_integer("seed", 0, "Seed; the same seed draws the same images.")
  flags.DEFINE_string("out", None, "Output folder.")


def main(f):
  if not f.checkpoint or not f.out:
    raise InputError("--checkpoint and --out are required")
  generate(f.checkpoint, read_prompts(f.prompt, f.prompts), f.out, n=f.n, cfg=f.cfg,
           temperature=f.temperature, top_k=f.top_k, top_p=f.top_p, seed=f.seed, step=f.step)


def cli():
  cli_lib.run(define_flags, main)


if __name__ == "__main__":
  cli()
