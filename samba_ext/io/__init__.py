"""Checkpoint input/output: bounded file reads, the restricted ``.pth`` unpickler, load-time
validation, and Hugging Face-style folders (``config.json`` + ``model.safetensors``)."""
