"""Adapters on loaded models (math only; file layouts live in stablekit.formats).

    apply_adapters(components, [(path, scale), ...]) -> AppliedAdapters   (.set_scales, .remove)
    load_embeddings(components, folder_or_files) -> list[str]              (textual inversion)
"""
from stablekit.adapters.apply import AppliedAdapters, apply_adapters, find_adapter, parse_adapter_spec
from stablekit.adapters.embeddings import expand_embeddings, load_embeddings

__all__ = ["AppliedAdapters", "apply_adapters", "find_adapter", "parse_adapter_spec", "load_embeddings", "expand_embeddings"]
