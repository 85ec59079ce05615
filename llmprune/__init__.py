"""llmprune: post-training pruning for large language models."""
