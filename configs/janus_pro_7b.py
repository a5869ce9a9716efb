"""GvU on a converted Janus-Pro-7B checkpoint.

  python -m gvu_jax.convert --src=Janus-Pro-7B --dst=/ckpt/janus_pro_7b
  python -m gvu_jax.data.builders --name=geneval_prompts
  python -m gvu_jax.main --config=configs/janus_pro_7b.py:lora \
      --config.checkpoint=/ckpt/janus_pro_7b --workdir=/runs/gvu_7b

Presets (docs/recipes.md sets each value beside its source, file and line):
  lora     the paper's recipe, as the GvU reference runs it (omni_r1/scripts/run_grpo.sh,
           X-Omni-En) applied to Janus: 8 prompts x G=2 a step, beta 0.03, lr 1e-6
           with linear decay to 0, AdamW (0.9, 0.999), one on-policy update, LoRA
           r8/alpha32 on the decoder projections (embeddings and heads excluded),
           temperature 1, min_p 0.03, CFG off, 4 epochs of GenEval-style prompts.
  t2i_r1   T2I-R1's optimisation (CaraJ7/T2I-R1 src/scripts/run_grpo.sh) with GvU's
           reward: full fine-tuning of the language model, 16 prompts x G=8 a step,
           beta 0.01, lr 1e-6 with linear decay, CFG 5 in the rollout, 1600 steps.
  small    `mode=bench` on random weights of a 78 M-parameter Janus (presets.janus_small)
           in float32: the CPU benchmark (gvu_jax/tools/bench.py).
  device_check  `mode=bench` on random weights of this model in bfloat16 with the
           device's attention kernel, sized to finish in minutes on one GPU or TPU:
           sampler, VQ decode, reward, GRPO (MFU), the kernel against XLA and one
           whole GvU step, each beside transformers / the PyTorch reference loop.

Benchmarks: `--config.mode=bench --config.random_init=True` times this recipe's
model and GvU step on random weights (see gvu_jax/tools/bench.py and `bench` below).

The model block comes from the checkpoint (`expect_model` guards against pointing
at the wrong one); `model_options` are run-time choices. GvU prompts: `data.prompts`
(see `data` below). `mode` is gvu, or eval: images for the benchmarks' own scorers
(see `eval` below).
"""

import ml_collections

from gvu_jax.infra import recipes, sharding

MODEL = "janus_pro_7b"


def get_config(arg=None, model=MODEL):
  preset = arg or "lora"
  presets = ("lora", "t2i_r1", "small", "device_check")
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r}; expected one of {list(presets)}")
  c = ml_collections.ConfigDict()
  c.mode = "gvu"
  c.seed = 0
  c.checkpoint = ""               # required: a directory written by gvu_jax.convert
  c.expect_model = model          # or "any"
  c.random_init = False           # mode=bench only: random weights of expect_model's shapes
  # attention: auto = cuDNN flash on GPU, Pallas splash on TPU, XLA elsewhere
  # (gvu_jax/models/attention.py); xla | dot_product | cudnn | splash to force one.
  # mlp_chunks: training passes run each MLP over this many slices of the tokens, so
  # the backward pass holds one slice's [tokens, intermediate] activations at a time.
  c.model_options = dict(dtype="bfloat16", remat=True, max_prompt_tokens=64, attention="auto",
                         mlp_chunks=4)
  # GvU prompts: a prompt file, a dataset of gvu_jax/data/builders.py (the paper's:
  # geneval_prompts, GenEval-style training prompts), or the embedded world's.
  # Batches keep tags balanced; datasets live in tfds_dir ("" = TFDS's default)
  # and are prepared from manual_dir (or by python -m gvu_jax.data.builders).
  c.data = dict(prompts="geneval_prompts", balance_tags=True, tfds_dir="", manual_dir="")
  # Devices (gvu_jax/infra/sharding.py; docs/scaling.md for each machine): FSDP over all of
  # them shards the weights and optimizer state and splits the rows, which
  # (prompts_per_step x group_size) must divide; past that, add --config.mesh.tensor.
  # On 16 GiB chips (v5e) the rollout's gathered weights need tensor=2: check a
  # slice before renting it with --config.bench.topology (docs/scaling.md).
  c.mesh = sharding.mesh_config()
  c.mesh.update(data=1, fsdp=-1)
  c.watchdog_s = recipes.WATCHDOG_S   # several hosts: gvu_jax/infra/recipes.py

  # The optimizer is transformers Trainer's default, which the reference uses: AdamW
  # (0.9, 0.999, eps 1e-8), no weight decay, clipping at 1, linear decay to 0
  # (schedule: constant | cosine | linear, after warmup_steps; sized in updates).
  # steps: the reference's 4 epochs at 8 prompts a step; geneval_prompts:train
  # holds about 2,200 prompts, so 1100 (set 4 x prompts / 8 for another set).
  c.gvu = dict(steps=1100, prompts_per_step=8, group_size=2, mu=1, grad_accum=1,
               lr=1e-6, warmup_steps=0, schedule="linear",
               adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, weight_decay=0.0,
               max_grad_norm=1.0, clip_eps=0.2, beta=0.03,
               scale_advantages_by_std=True,     # the paper's A = (r - mean) / (std + eps)
               # True: the update runs each prompt once for its G images (the same
               # log-probs, (G-1)/G of the prompt tokens' compute saved), but the image
               # tokens then attend with XLA attention, not cudnn/splash (docs/design.md §9).
               shared_prompt_pass=False,
               lora=dict(enabled=True, rank=8, alpha=32.0,
                         targets=("q", "k", "v", "o", "gate", "up", "down")),
               full_ft_modules=(),   # without LoRA: the top-level modules trained (() = all)
               sampling=dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.03, cfg_weight=1.0),
               log_every=1, checkpoint_every=50, keep=3, grid_every=50,
               max_nonfinite_steps=5)
  # reward, profile and logging: every recipe's blocks (gvu_jax/infra/recipes.py)
  c.reward, c.profile, c.logging = recipes.reward(), recipes.profile(), recipes.logging()
  # mode=eval: images of eval.prompts (default: data.prompts) for the base model and
  # the latest GvU policy, in WORKDIR/eval/{base,gvu}/<layout>/, the layout each
  # benchmark's scorer reads: geneval | geneval_plus | t2i_compbench | dpg_bench
  # (gvu_jax/evaluation/benchmark_images.py); auto = the dataset's own, else GenEval's.
  # understanding: understanding benchmarks scored for both as well, any of
  # pope,mme,seed_bench,gqa,mmbench (prepared from data.manual_dir: python -m
  # gvu_jax.data.builders --name=pope --manual_dir=DIR), in
  # WORKDIR/eval/{base,gvu}/understanding/<protocol>-<answers>/
  # (gvu_jax/evaluation/understanding.py): asked as understanding_protocol asks
  # (vlmevalkit: VLMEvalKit's Janus prompts | model_chat: the model's own chat),
  # answered by understanding_answers (logprob: one pass, the likeliest answer |
  # generate: the greedy reply of up to reply_tokens tokens, read by the
  # protocol's rule). GQA is always generated.
  c.eval = dict(prompts="", layout="auto", images_per_prompt=4, batch_size=4, understanding="",
                understanding_protocol="vlmevalkit", understanding_answers="logprob",
                reply_tokens=10,
                sampling=dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, cfg_weight=5.0))

  # mode=bench (gvu_jax/tools/bench.py): sampler batch sizes (prompts; CFG doubles the
  # rows), the reward batch, and how many of its images x answer_tokens reference
  # passes to time (0 = all); the GRPO step uses the gvu block above.
  # topology: compile the GvU step's programs for a TPU slice (v5e:2x4, v5p:4x4x4,
  # ...) on this host with libtpu, and say per chip whether they fit (docs/scaling.md).
  c.bench = dict(sampler_batches=(16, 64), cfg_weight=5.0, prompt_tokens=32, vq_images=16,
                 reward_images=16, reward_answer_tokens=16, reference_forwards=0, repeats=3,
                 transformers=True, analysis_only=False, topology="",
                 # analysis_only: estimate a step on v4 | v5e | v5p | v6e | h100 | h200
                 machine="")

  if preset == "t2i_r1":   # 8 GPUs x 1 prompt x 2 accumulated micro-batches, G=8
    c.gvu.update(steps=1600, group_size=8, prompts_per_step=16, grad_accum=2, beta=0.01,
                 full_ft_modules=("lm",))   # the language model; vision and gen_* frozen
    c.gvu.lora.enabled = False
    c.gvu.sampling.update(min_p=0.0, cfg_weight=5.0)
  if preset == "device_check":   # the lora recipe's step: 4 prompts x G=4, 16 images
    c.update(mode="bench", random_init=True)
    c.gvu.update(prompts_per_step=4, group_size=4)
    c.bench.update(sampler_batches=(16,), reward_images=16, reference_forwards=32, repeats=1)
  if preset == "small":
    c.update(mode="bench", random_init=True, expect_model="janus_small")
    c.model_options.update(dtype="float32", remat=False, mlp_chunks=1)
    c.gvu.update(prompts_per_step=2, group_size=4, shared_prompt_pass=True)   # XLA on CPU
    c.bench.update(sampler_batches=(4, 16), reward_images=4, reference_forwards=16, repeats=2)
  return c
