"""The one scoring path: (item, allocation) pairs to log-likelihoods and lm-eval metrics."""
