"""Other tools' files in and out: convert a published checkpoint (convert/),
export the trained policy to transformers / PEFT (export.py), generate images
from either (generate.py)."""
