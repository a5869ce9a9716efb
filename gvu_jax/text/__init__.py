"""Prompt templates and tokenizers: common.py (shared), synthetic.py (the embedded
world), janus.py and xomni.py (the released models)."""
