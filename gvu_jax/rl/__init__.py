"""GvU's reinforcement learning (docs/design.md §1-§4): the rollout's sampler,
the intrinsic reward, the control runs' rewards, GRPO's advantages and update,
the optimizer and the trainable state. The world's judge is read only by the
controls (controls.py)."""
