"""A tiny X-Omni release on disk, as the Hub's holds one: config.json,
model.safetensors (X-Omni's tensor names) and a word-level tokenizer.json with
X-Omni's special tokens (w0, w1, ... are the words; "2", "3" for image grids)."""

import json
import os

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<SOM>", "<EOM>", "<IMAGE>"]


def write_release(directory, config, tensors, words=40, extra_words=()):
  """`tensors`: name -> float numpy array; `extra_words` join the vocabulary."""
  import safetensors.numpy
  import tokenizers
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(config, f)
  safetensors.numpy.save_file(tensors, os.path.join(directory, "model.safetensors"))
  vocab = {s: i for i, s in enumerate(SPECIALS)}
  vocab.update({w: len(vocab) + i for i, w in enumerate(["<unk>", "2", "3"] +
                                                        [f"w{i}" for i in range(words)] +
                                                        list(extra_words))})
  tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(SPECIALS)
  tok.save(os.path.join(directory, "tokenizer.json"))
