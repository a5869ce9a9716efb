"""Renders the X-Omni token grids that mode=eval writes (.npz: the tokens and the
prompt) to PNG beside them, with X-Omni's own FLUX.1-dev decoder, so the
benchmarks' scorers can read them. Optional, PyTorch: it needs torch,
transformers and diffusers, the X-Omni-En release (its remote code and decoder
weights), FLUX.1-dev and a GPU; gvu_jax itself never does.

  python -m gvu_jax.evaluation.render_xomni --images=WORKDIR/eval/gvu \\
      --release=X-Omni-En --flux=FLUX.1-dev [--device=cuda]

Every <name>.npz below --images becomes <name>.png (written aside, then renamed;
PNGs already there are kept, so an interrupted run resumes). A DPG-Bench .npz
holds up to 4 grids and becomes their 2x2 tile. Scorers that open every file of a
folder want the .npz files gone first: find DIR -name '*.npz' -delete.
"""

import glob
import os

import numpy as np
from absl import app, flags
from PIL import Image

from gvu_jax.evaluation.benchmark_images import tile_2x2


def render_all(directory, render, log=print):
  """render(tokens [H, W], prompt) -> a PIL image, for every .npz below
  `directory` without a PNG yet; returns how many PNGs were written."""
  written = 0
  for path in sorted(glob.glob(os.path.join(directory, "**", "*.npz"), recursive=True)):
    png = path[:-len(".npz")] + ".png"
    if os.path.exists(png):
      continue
    with np.load(path) as data:
      tokens, prompt = data["tokens"], str(data["prompt"])
    grids = [tokens] if tokens.ndim == 2 else list(tokens)
    pictures = [np.asarray(render(grid, prompt).convert("RGB")) for grid in grids]
    picture = pictures[0] if tokens.ndim == 2 else tile_2x2(pictures)
    Image.fromarray(picture).save(png + ".partial", format="PNG")
    os.replace(png + ".partial", png)
    written += 1
    log(f"render_xomni: {png}")
  return written


def xomni_renderer(release, flux, device="cuda"):
  """X-Omni's decoder through its own remote code (XOmniForCausalLM.init_vision,
  detokenize_image: the codebook, the projector's decoder side, FLUX.1-dev
  conditioned on them and on the prompt)."""
  import torch
  from transformers import AutoModelForCausalLM
  model = AutoModelForCausalLM.from_pretrained(release, torch_dtype=torch.bfloat16,
                                               trust_remote_code=True).to(device)
  model.init_vision(flux)
  model.eval()

  def render(tokens, prompt):
    with torch.no_grad():
      return model.detokenize_image([prompt], [], tokens.reshape(-1).tolist(), tokens.shape)

  return render


def main(argv):
  del argv
  f = flags.FLAGS
  n = render_all(f.images, xomni_renderer(f.release, f.flux, f.device))
  print(f"render_xomni: {n} images written below {f.images}")


if __name__ == "__main__":
  flags.DEFINE_string("images", None, "a directory mode=eval wrote (e.g. WORKDIR/eval/gvu)")
  flags.DEFINE_string("release", None, "the X-Omni-En release directory")
  flags.DEFINE_string("flux", None, "the FLUX.1-dev directory")
  flags.DEFINE_string("device", "cuda", "torch device")
  flags.mark_flags_as_required(["images", "release", "flux"])
  app.run(main)
