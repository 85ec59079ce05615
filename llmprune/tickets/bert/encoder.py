"""Loading a BERT-family encoder with a classification head, and naming its prunable matrices.

Prunable (Chen et al. 2020): every linear weight of the encoder layers (query, key, value,
attention output, intermediate, output) and the pooler. Never: embeddings, biases,
LayerNorm, the task classifier. Family knowledge is kept as data: where the layer list of
an encoder sits.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import LLMPruneError
from ...io.loading import is_sparse_folder, load_pretrained
from ...io.loading import resolve_model_path

# Attribute paths (below the base model) of the encoder's layer list, by family.
ENCODER_LAYER_PATHS = (
    "encoder.layer",  # BERT, RoBERTa, ELECTRA, MiniLM, XLM-R, DeBERTa
    "transformer.layer",  # DistilBERT
)
POOLER_PATH = "pooler"


def _get(root: nn.Module, dotted: str):
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


def encoder_prefix(model: nn.Module) -> str:
    """The dotted name of the encoder's layer list inside ``model``, or a clear error."""
    base_name = getattr(model, "base_model_prefix", "")
    base = getattr(model, base_name, None) if base_name else None
    if base is None:
        raise LLMPruneError(f"{type(model).__name__} has no base encoder to prune")
    for path in ENCODER_LAYER_PATHS:
        layers = _get(base, path)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return f"{base_name}.{path}"
    raise LLMPruneError(
        f"{type(model).__name__} has no BERT-style encoder ({' or '.join(ENCODER_LAYER_PATHS)}): "
        "lottery tickets need a classifier on top of an encoder such as BERT, RoBERTa or MiniLM"
    )


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Name -> weight of every linear layer in the encoder layers and the pooler, in model order."""
    layers_name = encoder_prefix(model)
    pooler_name = f"{model.base_model_prefix}.{POOLER_PATH}"
    found = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (name.startswith(layers_name + ".") or name.startswith(pooler_name + ".")):
            found[f"{name}.weight"] = module.weight
    if not found:
        raise LLMPruneError(f"{type(model).__name__}: no linear layers found in {layers_name}")
    return found


def load_classifier(spec: str, num_labels: int | None = None, seed: int = 0):
    """(model, tokenizer, path): an encoder with a sequence-classification head.

    With ``num_labels`` a new head of that size is created when the folder has none (or
    another size); the head's random initialisation comes from ``seed``.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(spec)
    try:
        config = AutoConfig.from_pretrained(path)
    except Exception as exc:
        raise LLMPruneError(f"cannot load model '{spec}': {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False):
        raise LLMPruneError(f"'{spec}' is a {config.model_type} decoder model; lottery tickets need a BERT-family encoder")
    kwargs = {}
    if num_labels is not None:
        kwargs = {"num_labels": num_labels, "ignore_mismatched_sizes": True}
        if num_labels == 1:
            kwargs["problem_type"] = "regression"
    torch.manual_seed(seed)
    try:
        if is_sparse_folder(path):  # e.g. a saved ticket: the project's reader restores dense weights
            model = load_pretrained(path, dtype=torch.float32)
            if num_labels is not None and model.config.num_labels != num_labels:
                raise LLMPruneError(f"{path} has a {model.config.num_labels}-label head, the task needs {num_labels}")
        else:
            model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except LLMPruneError:
        raise
    except Exception as exc:
        raise LLMPruneError(
            f"cannot load '{spec}' as a sequence classifier ({type(exc).__name__}): "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'}"
        ) from None
    prunable_parameters(model)  # fail now, not after the first fine-tuning
    return model, tokenizer, path
