"""The PyTorch reference GvU step (gvu_jax/tools/bench_reference.py) on the tiny Janus."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from helpers_janus import tiny_model_config           # noqa: E402

from gvu_jax.tools import bench_reference  # noqa: E402

TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
ARGS = dict(group_size=2, sampling=dict(cfg_weight=1.0, min_p=0.03), prompt_tokens=5, answer_tokens=3, lora_rank=2,
            lora_alpha=4.0, lora_targets=TARGETS, beta=0.03, clip_eps=0.2)


@pytest.fixture(scope="module")
def loop():
  return bench_reference.ReferenceLoop(tiny_model_config(), lr=1e-2, seed=0, **ARGS)


def _lora(loop, which):
  return {n: p.detach().clone() for n, p in loop.model.named_parameters() if which in n}


def test_lora_on_the_language_model_only(loop):
  m = tiny_model_config()
  trainable = [n for n, p in loop.model.named_parameters() if p.requires_grad]
  assert len(trainable) == 2 * m.lm.layers * len(TARGETS)
  assert all(".language_model.layers." in n and "lora_" in n for n in trainable)
  assert all(p.requires_grad for p in loop.opt.param_groups[0]["params"])


def test_step(loop):
  m, prompts = tiny_model_config(), 2
  rows = prompts * ARGS["group_size"]
  b = _lora(loop, "lora_B")
  assert all((v == 0).all() for v in b.values())
  out = loop.step(prompts)

  # Phases, timed back to back.
  assert set(out["phases"]) == {"sample", "decode", "reward", "update"}
  assert all(s > 0 for s in out["phases"].values())
  assert sum(out["phases"].values()) == pytest.approx(out["seconds"], rel=1e-6)

  # The rollout: groups of identical prompts, codes in the codebook, pixels in [-1, 1]
  # at the understanding encoder's size.
  ids, codes = out["prompt_ids"], out["codes"]
  assert ids.shape == (rows, ARGS["prompt_tokens"])
  assert (ids[0::2] == ids[1::2]).all() and (ids[:, 0] == 1).all() and (ids[:, -1] == 2).all()
  assert codes.shape == (rows, m.image_tokens)
  assert 0 <= int(codes.min()) and int(codes.max()) < m.codebook_size
  assert out["pixels"].shape == (rows, 3, m.vision.image_size, m.vision.image_size)
  assert float(out["pixels"].abs().max()) <= 1

  # Rewards: geometric mean probabilities; group advantages sum to zero.
  r = out["rewards"]
  assert r.shape == (rows,) and bool(((r > 0) & (r <= 1)).all())
  torch.testing.assert_close(r, out["token_logps"].mean(1).exp())
  assert torch.allclose(out["advantages"].view(prompts, -1).sum(1), torch.zeros(prompts),
                        atol=1e-4)

  # B starts at 0: the reference (adapters off) is the policy before the update ...
  torch.testing.assert_close(out["ref_logp"], out["logp"], atol=1e-6, rtol=0)
  # ... and the update moves every B, so they differ after it.
  assert all(not torch.equal(v, _lora(loop, "lora_B")[n]) for n, v in b.items())
  with torch.no_grad():
    policy = loop.logps(ids, codes)
    with loop.peft.disable_adapter():
      ref = loop.logps(ids, codes)
  torch.testing.assert_close(ref, out["ref_logp"], atol=1e-6, rtol=0)
  assert float((policy - ref).abs().max()) > 1e-4


def test_per_token_reward_reads_the_right_positions(loop):
  """The per-token loop equals one batched forward over the whole sequence."""
  out = loop.step(1)
  pixels, und = out["pixels"], out["understanding_ids"]
  per_token = loop.reward_logps(pixels, und)
  with torch.no_grad():
    logits = loop.model(input_ids=und, pixel_values=pixels).logits.float()
  n = ARGS["answer_tokens"]
  batched = logits.log_softmax(-1)[:, -n - 1:-1].gather(-1, und[:, -n:, None])[..., 0]
  torch.testing.assert_close(per_token, batched, atol=1e-4, rtol=0)
  assert (und[:, 8:8 + tiny_model_config().image_tokens] == loop.model.config.image_token_id).all()


def test_reference_step():
  out = bench_reference.reference_step(tiny_model_config(), prompts=1, lr=1e-6, repeats=2,
                                       **ARGS)
  assert out["rows"] == ARGS["group_size"]
  assert out["reward_forwards"] == ARGS["group_size"] * ARGS["answer_tokens"]
  assert set(out["phases"]) == {"sample", "decode", "reward", "update"}
  assert sum(out["phases"].values()) == pytest.approx(out["seconds"], rel=1e-6)
