"""Images for the benchmarks' own scorers, from a converted checkpoint (or the
embedded world's pretrained model) and the latest GvU policy of the workdir, with
the mean intrinsic reward as a label-free metric beside them. WORKDIR/eval/<stage>/<layout>/ holds, per `eval.layout`:

  geneval        <index:05d>/metadata.jsonl, <index:05d>/samples/<n:04d>.png
                 (GenEval's evaluation/evaluate_images.py)
  geneval_plus   Geneval++.jsonl and sample_<n>/<index>.png, index from 0, one
                 complete image folder per sample (the GvU reference's
                 evaluation/evaluation_geneval_plus.py reads <image_dir>/<index>.png)
  t2i_compbench  <tag>/samples/<prompt>_<n:06d>.png (T2I-CompBench's scripts read
                 examples/samples/; one folder per category)
  dpg_bench      <id>.png: the images_per_prompt (at most 4) images tiled 2x2
                 (DPG-Bench's compute_dpg_bench.py with --pic-num)

Names made from a prompt's text, tag or id are made safe first (safe_name: one
path component, no control characters, at most 180 bytes) and never shared by
two prompts; each prompt's record keeps its original text.

(a model that reads its own tokens, X-Omni, writes each image as its token grid
and prompt, .npz, in place of the .png: evaluation/render_xomni.py renders them) and beside it <layout>_rewards.jsonl (each prompt's mean intrinsic reward and,
on the embedded world, the fraction of its images the judge passes),
<layout>_summary.json (their means per tag) and <layout>_grid.png (the first
image of the first 32 prompts made by this run); WORKDIR/eval/summary.md puts
the stages side by side.

Generation is batched over prompts and sharded over the mesh. Every file
appears at once (written aside, then renamed), so an interrupted run resumes:
prompts whose files are all there are kept, and a batch's key depends only on its
place in the prompt list, so the rest come out as an uninterrupted run writes them.
"""

import json
import os
import shutil
import time
import unicodedata

import jax
import numpy as np
from PIL import Image

from gvu_jax import world
from gvu_jax.data import prompt_files, prompt_sources
from gvu_jax.evaluation.evaluate import make_scorer, padded_chunks
from gvu_jax.infra import faults, files, grid, hosts, metrics, sharding
from gvu_jax.infra.errors import InputError
from gvu_jax.infra.pixels import to_uint8
from gvu_jax.rl.sampling import Sampler, SamplingConfig, row_keys
from gvu_jax.world import judge

DATASET_LAYOUTS = {"geneval_prompts": "geneval", "geneval_plus": "geneval_plus",
                   "t2i_compbench": "t2i_compbench", "dpg_bench": "dpg_bench"}


def metadata(prompt):
  """GenEval's metadata line of a prompt: what its source said, its tag and text."""
  out = {k: json.loads(v) for k, v in prompt.meta}
  out.update(tag=prompt.category, prompt=prompt.text)
  return out


def _write_image(file, image, prompt):
  """An RGB image (uint8) as PNG; image tokens ([H, W], or [n, H, W] for a
  DPG-Bench tile) as .npz with the prompt, which the renderer needs
  (evaluation/render_xomni.py)."""
  if image.dtype == np.uint8:
    Image.fromarray(image).save(file, format="PNG")
  else:
    np.savez(file, tokens=image, prompt=np.asarray(prompt.text))


def _save(path, image, prompt):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  partial = path + ".partial"
  with open(partial, "wb") as f:
    _write_image(f, image, prompt)
  os.replace(partial, path)


class GenevalLayout:

  def __init__(self, directory, per_prompt, prompts, ext="png"):
    self.directory, self.ext = directory, ext

  def done(self, i, prompt):
    return os.path.isdir(os.path.join(self.directory, f"{i:05d}"))

  def write(self, i, prompt, images):
    """<index>/{metadata.jsonl, samples/NNNN.png}, the folder appearing at once."""
    final = os.path.join(self.directory, f"{i:05d}")
    partial = final + ".partial"
    shutil.rmtree(partial, ignore_errors=True)   # left by an interrupted run
    os.makedirs(os.path.join(partial, "samples"))
    with open(os.path.join(partial, "metadata.jsonl"), "w", encoding="utf-8") as f:
      f.write(json.dumps(metadata(prompt)) + "\n")
    for n, image in enumerate(images):
      with open(os.path.join(partial, "samples", f"{n:04d}.{self.ext}"), "wb") as f:
        _write_image(f, image, prompt)
    # A folder without its reward record (a run stopped between the two) is made
    # again, to the same bytes, and replaces the old one.
    shutil.rmtree(final, ignore_errors=True)
    os.replace(partial, final)

  def scorer_hint(self):
    return (f"python evaluation/evaluate_images.py {self.directory} "
            f"--outfile {self.directory}_results.jsonl --model-path <detector>  (GenEval)")


NAME_BYTES = 180   # a name's UTF-8 bytes: room for "_000000.png" within the usual 255


def safe_name(text):
  """A file or folder name made from prompt text, an id or a tag: path separators
  and control characters (NUL among them) become spaces, runs of space one, no
  leading dot ("." and ".." are not names), at most NAME_BYTES bytes."""
  name = "".join(" " if c in "/\\" or unicodedata.category(c)[0] == "C" else c for c in text)
  name = " ".join(name.split()).lstrip(".").strip()
  return name.encode("utf-8")[:NAME_BYTES].decode("utf-8", "ignore").strip() or "_"


def inside(directory, path):
  """`path`, once it is sure to resolve inside `directory` (or one error)."""
  root = os.path.realpath(directory)
  if not os.path.realpath(path).startswith(root + os.sep):
    raise InputError(f"{path}: resolves outside the output folder {directory}")
  return path


class _FilesLayout:
  """Layouts where a prompt is a set of image files: done when all are there.
  Every prompt's files are named before anything is made (`name(i, prompt)` ->
  (folder, stem) from the prompt's text, id or tag, made safe); a prompt whose
  name an earlier one already has continues its numbering (files
  stem_{per_prompt}, ... for the second), so no two prompts share a file."""

  def __init__(self, directory, per_prompt, prompts, ext="png"):
    self.directory, self.per_prompt, self.ext = directory, per_prompt, ext
    self.paths, taken = [], {}
    for i, p in enumerate(prompts):
      folder, stem = self.name(i, p)
      first = taken.get((folder, stem), 0)
      taken[(folder, stem)] = first + self.per_prompt
      self.paths.append([inside(directory, self.file(folder, stem, first + n))
                         for n in range(self.per_prompt)])

  def files(self, i, prompt):
    return self.paths[i]

  def done(self, i, prompt):
    return all(os.path.isfile(p) for p in self.files(i, prompt))

  def write(self, i, prompt, images):
    for path, image in zip(self.files(i, prompt), images):
      _save(path, image, prompt)


class GenevalPlusLayout(_FilesLayout):

  def __init__(self, directory, per_prompt, prompts, ext="png"):
    super().__init__(directory, per_prompt, prompts, ext)
    os.makedirs(directory, exist_ok=True)
    files.write_atomic(os.path.join(directory, "Geneval++.jsonl"),
                       "".join(json.dumps(metadata(p)) + "\n" for p in prompts))

  def name(self, i, prompt):
    return "", str(i)

  def file(self, folder, stem, n):
    return os.path.join(self.directory, f"sample_{n}", f"{stem}.{self.ext}")

  def scorer_hint(self):
    return (f"evaluation/evaluation_geneval_plus.py (GvU) with meta_path "
            f"{self.directory}/Geneval++.jsonl and image_dir {self.directory}/sample_0")


class T2iCompbenchLayout(_FilesLayout):
  """<tag>/samples/<prompt>_<n:06d>.png: its scorers read the prompt back from the
  file name (a prompt made safe keeps its text in <layout>_rewards.jsonl)."""

  def name(self, i, prompt):
    return os.path.join(safe_name(prompt.category), "samples"), safe_name(prompt.text)

  def file(self, folder, stem, n):
    return os.path.join(self.directory, folder, f"{stem}_{n:06d}.{self.ext}")

  def scorer_hint(self):
    return (f"T2I-CompBench's BLIPvqa_eval / UniDet_eval / CLIPScore_eval with "
            f"{self.directory}/<category>/ as their examples/ folder")


class DpgBenchLayout(_FilesLayout):

  def __init__(self, directory, per_prompt, prompts, ext="png"):
    if not 1 <= per_prompt <= 4:
      raise InputError(f"eval.images_per_prompt={per_prompt}: DPG-Bench tiles at most 4 "
                       "images 2x2 (its --pic-num)")
    super().__init__(directory, 1, prompts, ext)   # one tiled image a prompt
    self.per_prompt = per_prompt

  def name(self, i, prompt):
    return "", safe_name(prompt.id)

  def file(self, folder, stem, n):   # a second prompt of the same id: <id>_1.png, ...
    return os.path.join(self.directory, f"{stem}.{self.ext}" if n == 0 else
                        f"{stem}_{n}.{self.ext}")

  def write(self, i, prompt, images):
    if images[0].dtype != np.uint8:   # token grids: the renderer tiles the pictures
      images = [np.stack(images)]
    elif len(images) > 1:             # DPG-Bench crops (0,0), (r,0), (0,r), (r,r)
      images = [tile_2x2(images)]
    super().write(i, prompt, images)

  def scorer_hint(self):
    h = "<image size>"
    return (f"dpg_bench/compute_dpg_bench.py --image-root-path {self.directory} "
            f"--resolution {h} --pic-num {self.per_prompt}  (DPG-Bench)")


def tile_2x2(images):
  """Up to 4 images [H, W, C] -> one [2H, 2W, C]: top left, top right, bottom
  left, bottom right (blank where there are fewer)."""
  four = list(images) + [np.zeros_like(images[0])] * (4 - len(images))
  return np.concatenate([np.concatenate(four[r:r + 2], axis=1) for r in (0, 2)], axis=0)


LAYOUTS = {"geneval": GenevalLayout, "geneval_plus": GenevalPlusLayout,
           "t2i_compbench": T2iCompbenchLayout, "dpg_bench": DpgBenchLayout}


def layout_name(c, source):
  """`eval.layout`, with auto = the layout of the prompt dataset `source`, else GenEval's."""
  if c.layout == "auto":
    return DATASET_LAYOUTS.get(source.split(":")[0], "geneval")
  return c.layout


def _read_rewards(path):
  """Each finished prompt's record by index. A prompt is finished when its record
  is written (after its images): one cut by a crash is dropped and made again."""
  return {r["index"]: r for r in files.read_jsonl(path)}


def export(ctx, graphdef, params, stage_dir, prompts, source, judge_specs=None):
  """Writes every prompt not already in stage_dir/<layout> -> its summary dict.
  With `judge_specs` (the embedded world's prompts) the judge scores each image."""
  c = ctx.config.eval
  name = layout_name(c, source)
  directory = os.path.join(stage_dir, name)
  per_prompt, batch = c.images_per_prompt, c.batch_size
  ctx.layout.check_batch("eval.batch_size x eval.images_per_prompt", batch * per_prompt)
  main_host = hosts.is_main()
  if main_host:
    os.makedirs(directory, exist_ok=True)
  # A model without a pixel decoder in the loop (X-Omni) writes each image as its
  # grid of tokens (.npz), for evaluation/render_xomni.py to render.
  pixels = ctx.model.image_tokenizer != "tokens"
  layout = LAYOUTS[name](directory, per_prompt, prompts, "png" if pixels else "npz") \
      if main_host else None
  done = lambda i: main_host and layout.done(i, prompts[i])
  sampler = Sampler(graphdef, SamplingConfig(**c.sampling), num_tokens=ctx.model.image_tokens,
                    uncond_row=ctx.templates.unconditional(1), group_size=per_prompt,
                    layout=ctx.layout)
  scorer = make_scorer(ctx, graphdef)   # decodes once; its images are what is written
  as_images = (jax.jit(to_uint8) if pixels else
               lambda codes: codes.reshape(-1, *ctx.model.image_grid))
  rewards_path = os.path.join(stage_dir, f"{name}_rewards.jsonl")
  rewards = _read_rewards(rewards_path) if main_host else {}
  key = jax.random.key(ctx.config.seed)
  # Every host takes the same batches (the sampler is one global computation);
  # host 0 decides what is left and writes.
  todo = np.asarray(hosts.agreed(f"export todo {directory}", lambda: [
      not done(i) or i not in rewards for i in range(len(prompts))]), bool)
  bar = metrics.progress(len(prompts), f"eval {os.path.basename(stage_dir)} {name}",
                         initial=int((~todo).sum()))
  tic, made, shown = time.perf_counter(), 0, []
  for idx, real in padded_chunks(len(prompts), batch):
    if not todo[idx[:real]].any():
      continue
    texts = [prompts[i].text for i in idx]
    ids, valid = ctx.layout.put_batch(ctx.templates.generation(texts))
    samples = sampler(params, ids, valid,   # a key per prompt and sample: any batch size
                      ctx.layout.put_batch(row_keys(key, idx, per_prompt)))
    query = ctx.templates.understanding(texts).arrays(repeat=per_prompt)
    _, r, seen = scorer(params, samples.codes, ctx.layout.put_batch(query))
    images = sharding.to_host(as_images(seen))
    r = sharding.to_host(r).reshape(batch, per_prompt).mean(1)
    if main_host:
      with open(rewards_path, "a", encoding="utf-8") as f:
        for row, i in enumerate(idx[:real]):
          if not todo[i]:
            continue
          i = int(i)
          mine = images[row * per_prompt:(row + 1) * per_prompt]
          layout.write(i, prompts[i], mine)
          faults.inject("export_images", i)
          rewards[i] = {"index": i, "tag": prompts[i].category, "reward": float(r[row]),
                        "prompt": prompts[i].text}
          if judge_specs:
            rewards[i]["judge"] = float(judge.judge_batch(mine, [judge_specs[i]] * len(mine))
                                        .mean())
          f.write(json.dumps(rewards[i]) + "\n")   # after the images: a line means done
          f.flush()
          faults.inject("export_record", i)
          if pixels and len(shown) < 32:
            shown.append((mine[0], f"{prompts[i].text} r={r[row]:.2f}"))
    n_new = int(todo[idx[:real]].sum())
    made += n_new * per_prompt
    bar.update(n_new)
    bar.set_postfix(img_s=f"{made / (time.perf_counter() - tic):.2f}")
  bar.close()
  if not main_host:
    return None
  if shown:
    grid.save_grid(os.path.join(stage_dir, f"{name}_grid.png"), [im for im, _ in shown],
                   ncols=8, scale=max(1, 128 // shown[0][0].shape[0]),
                   captions=[t for _, t in shown], title=f"{os.path.basename(stage_dir)}: {name}")
  summary = summarize(prompts, rewards, per_prompt, directory, layout.scorer_hint())
  files.write_atomic(os.path.join(stage_dir, f"{name}_summary.json"),
                     json.dumps(summary, indent=1))
  return summary


METRICS = {"reward": "intrinsic_reward", "judge": "judge_accuracy"}


def summarize(prompts, records, per_prompt, directory, scorer_hint):
  """Each metric's mean per tag and over tags (each tag weighs the same, as
  GenEval's overall score)."""
  out = {"prompts": len(prompts), "images_per_prompt": per_prompt, "images": directory,
         "scorer": scorer_hint}
  for field, metric in METRICS.items():
    by_tag = {}
    for r in records.values():
      if field in r:
        by_tag.setdefault(r["tag"], []).append(r[field])
    if by_tag:
      means = {t: float(np.mean(v)) for t, v in sorted(by_tag.items())}
      out[metric] = {"overall": float(np.mean(list(means.values()))), **means}
  return out


def read_prompts(ctx):
  """eval.prompts (default data.prompts), read and checked before anything runs ->
  the `prompts` argument of run()."""
  source = ctx.config.eval.prompts or ctx.config.data.prompts
  prompts = prompt_sources.read_prompts(source, ctx.config.data)
  hosts.check_same(f"eval.prompts={source}", [list(p) for p in prompts])
  specs = None
  if ctx.has_judge:   # the embedded world: its prompts are judged
    prompts, specs = world_prompts(prompts, source)
  prompt_sources.check_prompts(ctx.templates, prompts, f"eval.prompts={source}")
  return source, prompts, specs


def run(ctx, stages, prompts):
  """`stages`: [(name, graphdef, params)] -> WORKDIR/eval/<name>/<layout>/ each, and
  WORKDIR/eval/summary.md comparing their intrinsic rewards; `prompts`: from
  read_prompts."""
  source, prompts, specs = prompts
  summaries = {}
  for stage, graphdef, params in stages:
    summaries[stage] = export(ctx, graphdef, params, ctx.path("eval", stage), prompts, source,
                              specs)
  if hosts.is_main():
    table = summary_table(summaries)
    files.write_atomic(ctx.path("eval", "summary.md"), table + "\n")
    print(table)
    for stage, s in summaries.items():
      print(f"eval: {stage}: {s['prompts']} prompts x {s['images_per_prompt']} images in "
            f"{s['images']}; score them with {s['scorer']}")


def world_prompts(prompts, source):
  """The embedded world's prompt behind each text, for its judge -> (prompts
  tagged with their world category where the file gave none, specs)."""
  by_text = {s.text: s for s in world.all_specs()}
  for p in prompts:
    if p.text not in by_text:
      raise InputError(f"eval.prompts={source}: {p.text!r} is not a prompt of the embedded "
                       "world; its judge scores only those (gvu_jax/world/)")
  specs = [by_text[p.text] for p in prompts]
  tagged = [p._replace(category=s.category) if p.category == prompt_files.UNTAGGED else p
            for p, s in zip(prompts, specs)]
  return tagged, specs


def summary_table(summaries):
  """Markdown: a row per metric and tag, a column per stage."""
  stages = list(summaries)
  first = summaries[stages[0]]
  lines = ["| metric | tag | " + " | ".join(stages) + " |", "|---" * (len(stages) + 2) + "|"]
  for metric in METRICS.values():
    for tag in first.get(metric, ()):
      cells = [summaries[s].get(metric, {}).get(tag) for s in stages]
      lines.append(f"| {metric} | {tag} | " + " | ".join(
          "" if v is None else f"{v:.4f}" for v in cells) + " |")
  return "\n".join(lines)
