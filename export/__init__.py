"""Standalone pruned models: narrowed Hugging Face checkpoints (hf) and GGUF files (gguf)."""
