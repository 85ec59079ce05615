"""Bounds every allocation keeps."""

# Highest per-block sparsity handed out; a block pruned to 100% would cut the residual stream's
# contribution of that block entirely, which no allocation should do by accident.
MAX_BLOCK_SPARSITY = 0.99
