"""X-Omni's prompts, token for token as the GvU reference builds them
(omni_r1/trainer/grpo_trainer.py and utils/rewards.py of GitHub matrix0721/GvU):

  generation      the raw prompt, then "<SOM>{H} {W}<IMAGE>" (no chat template);
                  CFG's unconditional row is "<SOM>{H} {W}<IMAGE>" alone
  understanding   a user turn holding the image block "<SOM>{H} {W}<IMAGE>",
                  H*W image tokens and "<EOM>", then "\\n" and the query
                  "Describe the image in detail."; the assistant turn's answer is
                  the prompt's own tokens (the GvU reward scores those)

The chat turns are Qwen's ChatML. Which system turn X-Omni-En's
tokenizer_config.json adds is not known here: `system_prompt` (default Qwen2.5's
own default) is a model option; "" leaves the system turn out.
"""

from gvu_jax.text.common import ReleaseTemplates, left_padded

SOM, EOM, IMAGE = "<SOM>", "<EOM>", "<IMAGE>"
IM_START, IM_END, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
UNDERSTANDING_QUERY = "Describe the image in detail."
QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


class XOmniTemplates(ReleaseTemplates):

  def __init__(self, tokenizer, image_grid, max_prompt_tokens, vocab_size,
               system_prompt=QWEN_SYSTEM_PROMPT):
    super().__init__(tokenizer, (SOM, EOM, IMAGE, IM_START, IM_END, PAD), max_prompt_tokens,
                     "X-Omni")
    self.pad_id, self.eos_id = self.ids[PAD], self.ids[IM_END]
    system_prompt = QWEN_SYSTEM_PROMPT if system_prompt is None else system_prompt
    # Image slots hold a placeholder the reward overwrites with the image's tokens:
    # the first multimodal id, which no text encodes to.
    self.image_token_id = vocab_size
    h, w = image_grid
    self.image_tokens = h * w
    self._gen_head, self._gen_tail = [], self._encode(f"{SOM}{h} {w}{IMAGE}")
    system = f"{IM_START}system\n{system_prompt}{IM_END}\n" if system_prompt else ""
    self._user_turn = self._encode(f"{system}{IM_START}user\n")
    self._und_image = self.image_block(image_grid)
    self._und_prefix = self._und_image + self._question_ids(UNDERSTANDING_QUERY)

  def image_block(self, grid=None):
    if grid is None:
      return self._und_image
    h, w = grid
    return [*self._user_turn, *self._encode(f"{SOM}{h} {w}{IMAGE}"),
            *[self.image_token_id] * (h * w), self.ids[EOM]]

  def _question_ids(self, text):
    return self._encode(f"\n{text}{IM_END}\n{IM_START}assistant\n")

  def unconditional(self, batch):
    """CFG's unconditional rows: the image prefix alone, left-padded."""
    return left_padded([self._gen_tail] * batch, self.generation_length, self.pad_id)
