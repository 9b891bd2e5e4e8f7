"""AG News data: sources (hub, CSV folder), splits, tokenization cache, batching."""
