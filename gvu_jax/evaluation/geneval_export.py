"""Images for GenEval's own scorer, from a converted checkpoint (and the latest
GvU policy of the workdir, if there is one):

  WORKDIR/eval/<stage>/geneval/<index:05d>/metadata.jsonl    the prompt's metadata
  WORKDIR/eval/<stage>/geneval/<index:05d>/samples/<n:04d>.png

the layout GenEval's `evaluation/evaluate_images.py` reads. Generation is
batched over prompts and sharded over the mesh. Each prompt's folder appears at
once (written aside, then renamed), so an interrupted run resumes where it
stopped: finished folders are kept, and a batch's key depends only on its place
in the prompt list, so the resumed images are the ones an uninterrupted run
would have written.
"""

import json
import os
import shutil
import time

import jax
from flax import nnx
from PIL import Image

from gvu_jax import context, metrics, sharding
from gvu_jax.evaluation.evaluate import padded_chunks
from gvu_jax.models.cell_tokenizer import to_uint8
from gvu_jax.sampling import Sampler, SamplingConfig


def metadata(prompt):
  """GenEval's metadata line of a prompt: what its file said, its tag and text."""
  out = {k: json.loads(v) for k, v in prompt.meta}
  out.update(tag=prompt.category, prompt=prompt.text)
  return out


def write_prompt(directory, index, prompt, images):
  """<directory>/<index>/{metadata.jsonl, samples/NNNN.png}, appearing at once."""
  final = os.path.join(directory, f"{index:05d}")
  partial = final + ".partial"
  shutil.rmtree(partial, ignore_errors=True)   # left by an interrupted run
  os.makedirs(os.path.join(partial, "samples"))
  with open(os.path.join(partial, "metadata.jsonl"), "w", encoding="utf-8") as f:
    f.write(json.dumps(metadata(prompt)) + "\n")
  for n, image in enumerate(images):
    Image.fromarray(image).save(os.path.join(partial, "samples", f"{n:04d}.png"))
  os.replace(partial, final)


def export(ctx, graphdef, params, directory):
  """Writes every prompt of `eval.prompts` not already in `directory`."""
  c = ctx.config.eval
  prompts = context.read_prompts(c.prompts or ctx.config.data.prompts)
  per_prompt, batch = c.images_per_prompt, c.batch_size
  ctx.layout.check_batch("eval.batch_size x eval.images_per_prompt", batch * per_prompt)
  sampler = Sampler(graphdef, SamplingConfig(**c.sampling), num_tokens=ctx.model.image_tokens,
                    uncond_row=ctx.templates.unconditional(1), group_size=per_prompt,
                    layout=ctx.layout)
  decode = jax.jit(lambda p, codes: to_uint8(ctx.image_tokenizer.decode(
      codes, nnx.merge(graphdef, p))))
  key = jax.random.key(ctx.config.seed)
  done = lambda i: os.path.isdir(os.path.join(directory, f"{i:05d}"))
  left = sum(not done(i) for i in range(len(prompts)))
  bar = metrics.progress(len(prompts), f"eval {os.path.basename(os.path.dirname(directory))}",
                         initial=len(prompts) - left)
  tic, made = time.perf_counter(), 0
  for k, (idx, real) in enumerate(padded_chunks(len(prompts), batch)):
    todo = [i for i in idx[:real] if not done(i)]
    if not todo:
      continue
    ids, valid = ctx.layout.put_batch(ctx.templates.generation([prompts[i].text for i in idx]))
    samples = sampler(params, ids, valid, jax.random.fold_in(key, k))
    images = sharding.to_host(decode(params, samples.codes))
    if metrics.is_main_host():
      for row, i in enumerate(idx[:real]):
        if i in todo:
          write_prompt(directory, int(i), prompts[i], images[row * per_prompt:
                                                             (row + 1) * per_prompt])
    made += len(todo) * per_prompt
    bar.update(len(todo))
    bar.set_postfix(img_s=f"{made / (time.perf_counter() - tic):.1f}")
  bar.close()
  return len(prompts)


def run(ctx, stages):
  """`stages`: [(name, graphdef, params)] -> one GenEval folder each."""
  for stage, graphdef, params in stages:
    directory = ctx.path("eval", stage, "geneval")
    n = export(ctx, graphdef, params, directory)
    if metrics.is_main_host():
      print(f"eval: {n} prompts x {ctx.config.eval.images_per_prompt} images in {directory}; "
            "score them with GenEval: python evaluation/evaluate_images.py "
            f"{directory} --outfile {directory}_results.jsonl --model-path <detector>")
