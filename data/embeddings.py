"""Sentence embeddings for observations: one encoder pass per item, mean-pooled over tokens,
cached on disk by content (`cached_embeddings`)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

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


def cached_embeddings(
    encoder: torch.nn.Module,
    tokenizer: object,
    texts: Sequence[str],
    encoder_spec: str,
    cache_dir: Path | None,
    batch_size: int = 32,
    max_tokens: int = 512,
) -> np.ndarray:
    """`embed_texts`, computed once per (encoder, max_tokens, texts) and kept as one .npy file
    in `cache_dir` (None: no cache), written atomically."""
    if cache_dir is None:
        return embed_texts(encoder, tokenizer, texts, batch_size, max_tokens)
    key = hashlib.sha256(f"{encoder_spec}\n{max_tokens}\n".encode())
    for text in texts:
        key.update(hashlib.sha256(text.encode()).digest())
    path = cache_dir / f"{key.hexdigest()[:24]}.npy"
    if path.is_file():
        emb = np.load(path)
        if emb.shape[0] == len(texts):
            return emb
    emb = embed_texts(encoder, tokenizer, texts, batch_size, max_tokens)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, emb)
    os.replace(tmp, path)
    return emb
