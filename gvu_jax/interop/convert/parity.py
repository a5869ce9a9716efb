"""Numerical parity of a converted Janus checkpoint with transformers' implementation
(`python -m gvu_jax.convert ... --check`, and the CI parity tests).

Each check feeds the same random inputs to both models in float32 (transformers'
weights rounded to the conversion's stored dtype first, so a bfloat16 conversion is
held to the same tolerance as a float32 one) and reports the max abs difference:
understanding logits, CFG-guided generation logits, VQ decode pixels, VQ encode
codes (number of mismatches), and the GvU reward's token log-likelihoods against
the reference algorithm (one transformers forward pass per prompt token, one image
at a time, as the GvU reference code computes it).
Needs torch and transformers; nothing here is used in training.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import nnx

from gvu_jax.interop.convert.source import find_shards, read_shard, to_transformers_names
from gvu_jax.interop.convert.store import load, stored_dtype
from gvu_jax.models import build
from gvu_jax.models.umm import image_logits, text_logits
from gvu_jax.rl.reward import answer_token_logprobs

CFG_WEIGHT = 5.0


def hf_config(m, image_token_id, pad_token_id=None):
  """A transformers JanusConfig for the model config `m` (untied lm_head: the
  transformers 5.x default `tie_word_embeddings=True` would break parity)."""
  from transformers import JanusConfig
  lm, v, q = m.lm, m.vision, m.vq
  text = dict(model_type="llama", vocab_size=lm.vocab_size, hidden_size=lm.hidden,
              intermediate_size=lm.intermediate, num_hidden_layers=lm.layers,
              num_attention_heads=lm.heads, num_key_value_heads=lm.kv_heads,
              rms_norm_eps=lm.norm_eps, max_position_embeddings=lm.max_position,
              # transformers 5 reads rope_parameters, 4.x reads rope_theta
              rope_parameters={"rope_type": "default", "rope_theta": lm.rope_theta},
              rope_theta=lm.rope_theta, attention_bias=False, mlp_bias=False,
              tie_word_embeddings=False, pad_token_id=pad_token_id)
  vision = dict(hidden_size=v.width, num_hidden_layers=v.layers, num_attention_heads=v.heads,
                image_size=v.image_size, patch_size=v.patch_size, mlp_ratio=v.mlp_dim / v.width,
                layer_norm_eps=v.norm_eps, projection_dim=lm.hidden, depth=2,
                num_image_tokens=m.image_tokens)
  vq = dict(embed_dim=q.embed_dim, num_embeddings=q.num_embeddings,
            latent_channels=q.latent_channels, base_channels=q.base_channels,
            channel_multiplier=list(q.channel_multiplier), num_res_blocks=q.num_res_blocks,
            in_channels=q.in_channels, out_channels=q.out_channels,
            projection_dim=lm.hidden, image_token_embed_dim=lm.hidden,
            num_hidden_layers=2)
  return JanusConfig(text_config=text, vision_config=vision, vq_config=vq,
                     image_token_id=image_token_id, tie_word_embeddings=False)


def load_transformers(src, m):
  """The source checkpoint as a float32 transformers model (either layout)."""
  import torch
  from transformers import JanusForConditionalGeneration
  src = epath.Path(src)
  raw = json.loads((src / "config.json").read_text())
  layout, shards = find_shards(src)
  if layout == "transformers":
    model = JanusForConditionalGeneration.from_pretrained(
        str(src), dtype=torch.float32, tie_word_embeddings=False)
  else:
    config = hf_config(m, raw.get("image_token_id", 100581))
    model = JanusForConditionalGeneration(config)
    state = {}
    for shard in shards:
      for name, array in read_shard(shard):
        for key, a in to_transformers_names(name, array):
          state[key] = torch.from_numpy(np.asarray(a, np.float32))
    model.load_state_dict(state, strict=True)
  return model.float().eval()


def _t(x):
  import torch
  return torch.from_numpy(np.asarray(x))


def _diff(a, b):
  """(max |a - b|, max |b|): the difference and the scale of the reference."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b))), float(np.max(np.abs(b)))


def compare(hf, model, image_token_id, pad_id, seed=0, batch=2, text_len=6):
  """-> {check: (max abs diff, max abs reference value)} for the transformers
  model `hf` and our `model` (an nnx model with float32 weights), random inputs."""
  import torch
  m = model.cfg
  rng = np.random.default_rng(seed)
  vocab, n_img = m.lm.vocab_size, m.vision.num_patches
  special = {image_token_id, pad_id}
  words = lambda n: np.array([t for t in rng.integers(0, vocab, 4 * n) if t not in special][:n])
  size = m.vision.image_size
  pixels = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
  out = {}

  # Understanding: text, an image block, text.
  ids = np.stack([np.concatenate([words(text_len), np.full(n_img, image_token_id),
                                  words(text_len)]) for _ in range(batch)]).astype(np.int32)
  valid = np.ones_like(ids, bool)
  ours = text_logits(model, jnp.asarray(ids), jnp.asarray(valid),
                     jnp.asarray(ids == image_token_id), jnp.asarray(pixels))
  with torch.no_grad():
    theirs = hf(input_ids=_t(ids).long(), pixel_values=_t(pixels.transpose(0, 3, 1, 2))).logits
  out["understanding_logits"] = _diff(ours, theirs.numpy())

  # Generation with CFG: conditional rows, and unconditional rows that keep the
  # first and last prompt tokens (BOS, <begin_of_image>) and pad the rest.
  prompt = np.stack([words(text_len) for _ in range(batch)]).astype(np.int32)
  uncond = prompt.copy()
  uncond[:, 1:-1] = pad_id
  codes = rng.integers(0, m.codebook_size, (batch, m.image_tokens)).astype(np.int32)
  rows = np.concatenate([prompt, uncond])
  rows_codes = np.concatenate([codes, codes])
  ours = image_logits(model, jnp.asarray(rows), jnp.ones(rows.shape, bool),
                      jnp.asarray(rows_codes))
  with torch.no_grad():
    embeds = torch.cat([hf.get_input_embeddings()(_t(rows).long()),
                        hf.prepare_embeddings_for_image_generation(_t(rows_codes[:, :-1]).long())],
                       dim=1)
    hidden = hf.model.language_model(inputs_embeds=embeds).last_hidden_state
    theirs = hf.model.generation_head(hidden[:, -m.image_tokens:]).numpy()
  guided = lambda l: l[batch:] + CFG_WEIGHT * (l[:batch] - l[batch:])
  out["cfg_generation_logits"] = _diff(guided(np.asarray(ours)), guided(theirs))

  # VQ-16: decode random codes; encode random images.
  ours = model.vq.decode(jnp.asarray(codes))
  with torch.no_grad():
    theirs = hf.decode_image_tokens(_t(codes).long()).numpy()
  out["vq_decode_pixels"] = _diff(ours, theirs)
  ours = np.asarray(model.vq.encode(jnp.asarray(pixels)))
  with torch.no_grad():
    theirs = _hf_vq_codes(hf, pixels)
  out["vq_encode_code_mismatches"] = (int(np.sum(ours != theirs)), float(ours.size))

  # GvU reward: ONE forward of ours vs one transformers forward per answer token.
  answer = np.stack([words(text_len) for _ in range(batch)]).astype(np.int32)
  query = np.concatenate([ids, answer], axis=1)
  start = ids.shape[1]
  ours = answer_token_logprobs(model, jnp.asarray(query), jnp.ones(query.shape, bool),
                               jnp.asarray(query == image_token_id), jnp.asarray(pixels),
                               jnp.ones(answer.shape, bool), start)
  theirs = np.zeros(answer.shape, np.float64)
  with torch.no_grad():
    for b in range(batch):
      for i in range(answer.shape[1]):
        prefix = _t(query[b:b + 1, :start + i]).long()
        logits = hf(input_ids=prefix, pixel_values=_t(pixels[b:b + 1].transpose(0, 3, 1, 2)))
        logp = torch.log_softmax(logits.logits[0, -1].double(), -1)
        theirs[b, i] = float(logp[answer[b, i]])
  out["reward_token_logprobs"] = _diff(ours, theirs)
  return out


def _hf_vq_codes(hf, pixels):
  """Code indices transformers' VQ assigns to `pixels` (NHWC in [-1, 1])."""
  out = hf.model.vqmodel.encode(_t(pixels.transpose(0, 3, 1, 2)))
  indices = out.image_tokens if hasattr(out, "image_tokens") else out[-1]
  return indices.reshape(pixels.shape[0], -1).numpy()


# A float check passes when max |ours - theirs| <= TOLERANCE * max(1, max |theirs|)
# (fp32; logits of real-size models reach tens); codes must be identical.
TOLERANCE = 1e-4


def passed(diffs):
  return {k: (d == 0 if k.endswith("mismatches") else d <= TOLERANCE * max(1.0, scale))
          for k, (d, scale) in diffs.items()}


def round_weights(hf, dtype):
  """transformers' weights rounded to the conversion's stored `dtype` (and back to
  float32, where both models compute), exactly as the converter rounds them."""
  import torch
  if dtype == "float32":
    return
  with torch.no_grad():
    for p in hf.parameters():
      if p.is_floating_point():
        p.copy_(p.to(getattr(torch, dtype)).float())


def check(src, dst, seed=0):
  """Converted `dst` vs transformers on `src` -> JSON-able report with "ok"."""
  m, params = load(dst, dtype="float32", param_dtype=np.float32)
  params = jax.tree.map(jnp.asarray, params)
  graphdef, _ = build.abstract(m)
  model = nnx.merge(graphdef, params)
  raw = json.loads((epath.Path(src) / "config.json").read_text())
  image_token_id = raw.get("image_token_id", 100581)
  pad_id = raw.get("pad_token_id") or (raw.get("text_config") or {}).get("pad_token_id") or 0
  hf = load_transformers(src, m)
  stored = stored_dtype(dst)
  round_weights(hf, stored)
  diffs = compare(hf, model, image_token_id, pad_id, seed)
  ok = passed(diffs)
  return {"ok": all(ok.values()), "passed": ok, "tolerance": TOLERANCE,
          "stored_dtype": stored, "tolerance_note": (
              f"max |ours - transformers| <= {TOLERANCE} x max(1, |transformers|), both in "
              "float32, image codes identical" + ("" if stored == "float32" else
              f"; transformers' weights rounded to {stored} as the conversion stores them, "
              "so the check measures the conversion, not the precision --dtype chose")),
          "max_abs_diff": {k: d for k, (d, _) in diffs.items()},
          "reference_scale": {k: s for k, (_, s) in diffs.items()}}
