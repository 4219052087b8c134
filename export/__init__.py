"""Standalone pruned models: narrowed Hugging Face checkpoints."""
