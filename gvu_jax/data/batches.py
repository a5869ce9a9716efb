"""Deterministic prompt and example streams over the embedded world.

Every batch is a pure function of (seed, stream, step), so the data position of
a run is its step: resuming at step s gives exactly the batches an uninterrupted
run would have seen.
"""

import queue
import threading

import numpy as np

from gvu_jax import world

STREAMS = {"pretrain": 1, "gvu": 2, "eval": 3, "reward_ranking": 4}


def rng_for(seed, stream, step=0):
  return np.random.default_rng([seed, STREAMS[stream], step])


def prompt_batch(specs, n, rng):
  """n prompts, categories balanced: a category uniformly, then a prompt in it."""
  by_category = {}
  for spec in specs:
    by_category.setdefault(spec.category, []).append(spec)
  categories = sorted(by_category)
  picks = rng.integers(len(categories), size=n)
  return [by_category[categories[c]][rng.integers(len(by_category[categories[c]]))]
          for c in picks]


def supervised_batch(templates, specs, n, rng, cond_dropout, t2i_mislabel=0.0,
                     near_miss_images=False):
  """Ground-truth pairs for pretraining: prompts and the image tokens of scenes
  rendered for them: `caption_codes` are decoded to pixels for image->text,
  `codes` are the text->image targets. `caption_mask` marks the answer tokens the
  captioning loss trains: the prompt and its <eos>.

  With t2i_mislabel = q > 0, each text->image target is, with probability q, a
  scene of a near miss of its prompt (world.near_miss) instead: loose alt-text,
  as in the web pairs real generators learn from, while the captioning pairs stay
  exact. This is the gap GvU relies on: understanding better than generation.
  q = 0 draws nothing extra, so the streams are those of a run without it.

  near_miss_images: also the captioning ranking loss's negatives (near_miss_renders);
  drawn after everything else, so the other arrays are those of a run without."""
  batch_specs = prompt_batch(specs, n, rng)
  scenes = [world.sample_scene(s, rng) for s in batch_specs]
  texts = [s.text for s in batch_specs]
  caption_codes = np.stack([world.scene_to_codes(s) for s in scenes]).astype(np.int32)
  codes = caption_codes
  if t2i_mislabel > 0:
    codes = caption_codes.copy()
    for i in np.flatnonzero(rng.random(n) < t2i_mislabel):
      wrong = world.sample_scene(world.near_miss(batch_specs[i], rng), rng)
      codes[i] = world.scene_to_codes(wrong)
  prompt_ids, prompt_valid = templates.generation(texts)
  drop = rng.random(n) < cond_dropout          # CFG: learn the unconditional rows too
  uncond_ids, uncond_valid = templates.unconditional(n)
  prompt_ids = np.where(drop[:, None], uncond_ids, prompt_ids)
  prompt_valid = np.where(drop[:, None], uncond_valid, prompt_valid)
  query = templates.understanding(texts)
  extra = {}
  if near_miss_images:
    extra = near_miss_renders(batch_specs, set(specs), rng)
  return {**extra, "prompt_ids": prompt_ids, "prompt_valid": prompt_valid, "codes": codes,
          "caption_codes": caption_codes, "query_ids": query.ids, "query_valid": query.valid,
          "image_slots": query.image_slots,
          "caption_mask": np.arange(query.answer_len) <= query.answer_mask.sum(1)[:, None]}


def near_miss_renders(batch_specs, allowed, rng):
  """Per prompt, a render of another prompt of `allowed` (the pretraining split)
  that differs from it in one attribute (world.one_attribute_changes), at random:
  `near_miss_codes`, and `near_miss_valid` False (with a render of the prompt
  itself) where the split holds none. Only pretraining prompts are drawn, so no
  prompt's image is only ever a negative: a held-out prompt's would be, and the
  ranking loss would teach that its images are wrong for every caption."""
  codes, valid = [], []
  for spec in batch_specs:
    options = [w for w in world.one_attribute_changes(spec) if w in allowed]
    wrong = options[rng.integers(len(options))] if options else spec
    codes.append(world.scene_to_codes(world.sample_scene(wrong, rng)))
    valid.append(bool(options))
  return {"near_miss_codes": np.stack(codes).astype(np.int32), "near_miss_valid": np.array(valid)}


def prefetch(make_batch, steps, depth=2):
  """Yields make_batch(step) for step in `steps`, computed `depth` ahead on a
  background thread so host-side rendering overlaps the device step. An error in
  make_batch is raised here, in the consumer, at the step it belongs to (the
  consumer would otherwise wait forever for a batch that never comes)."""
  out = queue.Queue(maxsize=depth)
  done = threading.Event()

  def worker():
    try:
      for step in steps:
        if done.is_set():
          return
        out.put((make_batch(step), None))
    except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
      out.put((None, error))

  thread = threading.Thread(target=worker, daemon=True)
  thread.start()
  try:
    for _ in steps:
      batch, error = out.get()
      if error is not None:
        raise error
      yield batch
  finally:
    done.set()
