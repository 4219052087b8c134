"""Sentence embeddings for observations: one encoder pass per item, mean-pooled over tokens."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


@torch.inference_mode()
def embed_texts(
    encoder: torch.nn.Module,
    tokenizer: object,
    texts: Sequence[str],
    batch_size: int = 32,
    max_tokens: int = 512,
) -> np.ndarray:
    """Mean-pooled, L2-normalised last hidden states.  Returns float32 [n_texts, hidden]."""
    device = next(encoder.parameters()).device
    positions = getattr(encoder.config, "max_position_embeddings", max_tokens)
    limit = min(max_tokens, positions, getattr(tokenizer, "model_max_length", max_tokens))
    out = []
    for start in range(0, len(texts), batch_size):
        batch = tokenizer(
            list(texts[start : start + batch_size]),
            padding=True,
            truncation=True,
            max_length=limit,
            return_tensors="pt",
        ).to(device)
        hidden = encoder(**batch).last_hidden_state.float()  # [B, T, H]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, T, 1]
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # [B, H]
        out.append(torch.nn.functional.normalize(pooled, dim=-1).cpu())
    if not out:
        raise ValueError("embed_texts got no texts; check the data split is not empty")
    return torch.cat(out).numpy().astype(np.float32)
