"""One GvU step of the reference loop, in PyTorch, as the GvU authors' code runs it.

The baseline for the benchmark's `step_speedup_vs_reference`: the same step as our
jitted JAX one, on random weights of the same config, written the way the authors'
PyTorch / transformers / PEFT loop is:

  sample    transformers' Janus `generate` (image mode; it always runs the
            conditional and the unconditional batch) with the LoRA adapters on;
  decode    the VQ decoder, `decode_image_tokens`;
  reward    one image at a time, and one full forward (vision tower included) per
            answer token: the log-probability of each prompt token given the image
            and the tokens before it; reward = exp(mean log-prob);
  update    GRPO (one update per rollout): teacher-forced log-probs of the sampled
            image tokens with and without the adapters, the clipped surrogate plus
            the k3 KL term, backward, grad-norm clip 1.0, AdamW over the PEFT LoRA
            weights.

Each phase is timed separately (synchronised on CUDA); `reference_step` reports the
fastest of `repeats` steps after one untimed warm-up step.
"""

import time

# gvu_jax LoRA target names -> the transformers Llama module names.
_TARGETS = dict(q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj",
                o="self_attn.o_proj", gate="mlp.gate_proj", up="mlp.up_proj",
                down="mlp.down_proj")
_TEXT = 8   # random text tokens either side of the image in the reward's input


def janus_model(m, dtype, seed=0):
  """transformers' Janus on random weights of the config `m` (torch.manual_seed(seed)),
  in `dtype`, on the GPU when there is one; eval mode. -> (model, device)."""
  import torch
  from transformers import JanusForConditionalGeneration
  from gvu_jax.interop.convert import parity
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(seed)
  with torch.device(device):
    model = JanusForConditionalGeneration(
        parity.hf_config(m, image_token_id=m.lm.vocab_size - 5, pad_token_id=0))
  return model.to(dtype).eval(), device


class ReferenceLoop:
  """The model, its LoRA adapters and optimizer, and one timed GvU step."""

  def __init__(self, m, *, group_size, sampling, prompt_tokens, answer_tokens, lora_rank,
               lora_alpha, lora_targets, lr, beta, clip_eps, seed=0):
    import peft
    import torch
    from transformers import GenerationConfig, LogitsProcessor
    self.torch, self.m = torch, m
    self.group_size, self.prompt_tokens, self.answer_tokens = group_size, prompt_tokens, answer_tokens
    self.beta, self.clip_eps = beta, clip_eps
    bf16 = torch.cuda.is_available() and m.dtype == "bfloat16"
    self.dtype = torch.bfloat16 if bf16 else torch.float32
    self.model, self.device = janus_model(m, self.dtype, seed)
    # LoRA on the language model's decoder layers only (not the vision tower, whose
    # attention also has q/k/v_proj); PEFT injects the adapters into `model` in place.
    names = "|".join(_TARGETS[t] for t in lora_targets)
    self.peft = peft.get_peft_model(self.model, peft.LoraConfig(
        r=lora_rank, lora_alpha=lora_alpha,
        target_modules=rf"model\.language_model\.layers\.\d+\.({names})"))
    self.params = [p for p in self.model.parameters() if p.requires_grad]
    self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.999), eps=1e-8,
                                 weight_decay=0.0)
    # The recipe's sampling (gvu.sampling): temperature, top-k, top-p, min-p, CFG.
    cfg_weight = sampling.get("cfg_weight", 1.0)
    self.generation = GenerationConfig(
        do_sample=True, guidance_scale=cfg_weight, temperature=sampling.get("temperature", 1.0),
        top_k=sampling.get("top_k") or None, top_p=sampling.get("top_p", 1.0),
        min_p=sampling.get("min_p") or None, pad_token_id=0, bos_token_id=1,
        max_new_tokens=m.image_tokens, generation_kwargs={"boi_token_id": 2})
    self.processors = None
    if cfg_weight <= 1:
      # transformers' image mode always samples a doubled (cond + uncond) batch but
      # only halves it in its CFG processor, which refuses guidance_scale <= 1:
      # keep the conditional half ourselves (= guidance 1).
      class Conditional(LogitsProcessor):
        def __call__(self, input_ids, scores):
          return scores[:input_ids.shape[0]]
      self.processors = [Conditional()]
    self.cache_kwargs = None

  def sync(self):
    if self.device == "cuda":
      self.torch.cuda.synchronize()

  def generate(self, ids):
    """Image tokens [rows, image_tokens] sampled by the policy (adapters on)."""
    from transformers import DynamicCache, LogitsProcessorList
    kwargs = dict(attention_mask=self.torch.ones_like(ids), generation_mode="image",
                  generation_config=self.generation,
                  logits_processor=LogitsProcessorList(self.processors or []))
    # A DynamicCache where this transformers version takes one (its static-cache
    # default broke in image mode): `cache` in 5.2x, `past_key_values` before.
    choices = ([self.cache_kwargs] if self.cache_kwargs is not None else
               ["cache", "past_key_values", ""])
    for name in choices:
      try:
        out = self.model.generate(ids, **kwargs, **({name: DynamicCache()} if name else {}))
      except ValueError:   # an argument this version does not take
        if name == choices[-1]:
          raise
        continue
      self.cache_kwargs = name
      return out

  def understanding_ids(self, rows):
    """Text, image placeholders, text, then the answer (prompt) tokens, at random."""
    torch, m = self.torch, self.m
    text = lambda n: torch.randint(3, m.lm.vocab_size - 10, (rows, n), device=self.device)
    image = torch.full((rows, m.image_tokens), self.model.config.image_token_id,
                       device=self.device)
    return torch.cat([text(_TEXT), image, text(_TEXT), text(self.answer_tokens)], 1)

  def reward_logps(self, pixels, ids):
    """[rows, answer_tokens] log-probs: one image and one forward per answer token."""
    torch, start = self.torch, ids.shape[1] - self.answer_tokens
    out = torch.zeros(ids.shape[0], self.answer_tokens, device=self.device)
    with torch.no_grad():
      for i in range(ids.shape[0]):
        for j in range(self.answer_tokens):
          logits = self.model(input_ids=ids[i:i + 1, :start + j],
                              pixel_values=pixels[i:i + 1]).logits[0, -1]
          out[i, j] = logits.float().log_softmax(-1)[ids[i, start + j]]
    return out

  def logps(self, prompt_ids, codes):
    """Teacher-forced log-probs [rows, image_tokens] of `codes` (generation head)."""
    model = self.model
    embeds = self.torch.cat([model.get_input_embeddings()(prompt_ids),
                             model.prepare_embeddings_for_image_generation(codes[:, :-1])], 1)
    hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
    logits = model.model.generation_head(hidden[:, prompt_ids.shape[1] - 1:]).float()
    return logits.log_softmax(-1).gather(-1, codes[..., None])[..., 0]

  def step(self, prompts):
    """One GvU step: {"seconds", "phases", and its tensors}."""
    torch, m, G = self.torch, self.m, self.group_size
    rows, phases = prompts * G, {}
    ids = torch.randint(3, m.lm.vocab_size - 10, (prompts, self.prompt_tokens),
                        device=self.device)
    ids[:, 0], ids[:, -1] = 1, 2    # bos ... boi
    ids = ids.repeat_interleave(G, 0)
    self.sync()
    start = tic = time.perf_counter()

    def lap(name):
      nonlocal tic
      self.sync()
      toc = time.perf_counter()
      phases[name], tic = toc - tic, toc

    codes = self.generate(ids)
    lap("sample")
    with torch.no_grad():   # NHWC in about [-1, 1]: Janus' own pixel normalisation
      pixels = self.model.decode_image_tokens(codes).permute(0, 3, 1, 2).clamp(-1, 1)
    lap("decode")
    size = self.model.config.vision_config.image_size
    if pixels.shape[-1] != size:
      pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear",
                                               antialias=True)
    und = self.understanding_ids(rows)
    token_logps = self.reward_logps(pixels, und)
    rewards = token_logps.mean(1).exp()
    lap("reward")
    r = rewards.view(prompts, G)
    std = r.std(1, keepdim=True) if G > 1 else torch.zeros_like(r)
    adv = ((r - r.mean(1, keepdim=True)) / (std + 1e-4)).view(rows, 1)
    logp = self.logps(ids, codes)
    with torch.no_grad(), self.peft.disable_adapter():
      ref = self.logps(ids, codes)
    ratio = torch.exp(logp - logp.detach())
    surrogate = torch.min(ratio * adv, ratio.clamp(1 - self.clip_eps, 1 + self.clip_eps) * adv)
    kl = torch.exp(ref - logp) - (ref - logp) - 1
    loss = (-surrogate + self.beta * kl).mean(1).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(self.params, 1.0)
    self.opt.step()
    self.opt.zero_grad()
    lap("update")
    return dict(seconds=tic - start, phases=phases, prompt_ids=ids, codes=codes,
                pixels=pixels, understanding_ids=und, token_logps=token_logps,
                rewards=rewards, advantages=adv[:, 0], logp=logp.detach(), ref_logp=ref,
                loss=float(loss.detach()))


def reference_step(m, *, prompts, group_size, sampling, prompt_tokens, answer_tokens,
                   lora_rank, lora_alpha, lora_targets, lr, beta, clip_eps, repeats=1, seed=0):
  """Seconds of one reference GvU step (the fastest of `repeats`, after a warm-up):
  {"seconds", "phases": {"sample", "decode", "reward", "update"}, "rows",
  "reward_forwards", ...}, or None when torch / transformers / peft are missing."""
  try:
    import peft
    import torch
    import transformers
  except ImportError:
    return None
  loop = ReferenceLoop(m, group_size=group_size, sampling=sampling,
                       prompt_tokens=prompt_tokens, answer_tokens=answer_tokens,
                       lora_rank=lora_rank, lora_alpha=lora_alpha, lora_targets=lora_targets,
                       lr=lr, beta=beta, clip_eps=clip_eps, seed=seed)
  loop.step(prompts)   # warm-up
  best = min((loop.step(prompts) for _ in range(max(1, repeats))), key=lambda s: s["seconds"])
  rows = prompts * group_size
  return {"seconds": best["seconds"], "phases": best["phases"], "rows": rows,
          "reward_forwards": rows * answer_tokens, "device": loop.device,
          "dtype": str(loop.dtype).removeprefix("torch."), "torch": torch.__version__,
          "transformers": transformers.__version__, "peft": peft.__version__}
