"""Inputs: WikiText-2 and MMLU loaders (corpora ship beside this file), sentence embeddings."""
