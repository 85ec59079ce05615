"""Lottery tickets in pretrained BERT: iterative magnitude pruning with rewinding.

One job per module: ``tasks`` (which examples and labels), ``metrics`` (official task
metrics), ``features`` (tokenising and batching), ``encoder`` (loading a classifier and
finding its prunable matrices), ``masks`` (mask bookkeeping and the global threshold),
``schedule`` (sparsity per round), ``train`` (fine-tuning under a mask, evaluation),
``runner`` (rounds, seeds, baselines, resume), ``report`` (tables, matching rule, plot)
and ``ticket`` (saving the winning subnetwork).
"""
