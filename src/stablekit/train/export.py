"""The final artefact of a method, in the layouts other tools read; the writers live in formats/.

- LoRA (and DreamBooth-LoRA): `stablekit.formats.lora_kohya.save_kohya_lora` (kohya keys, alpha,
  ss_* metadata) from the peft state dicts (CONTRACTS.md "LoRA tensors").
- Textual inversion: `stablekit.formats.embeddings_a1111.save_a1111_embedding`.
- Full fine-tune / DreamBooth: `stablekit.formats.save_model`, single file + diffusers folder (with
  identifier_lr, the trained identifier rows written into the text encoder first).
- DreamBooth-LoRA with identifier_lr: also <out>/<word>.safetensors per identifier word, an A1111
  embedding of its trained rows, to be loaded with the LoRA (both files' metadata say so).
- ControlNet: `stablekit.formats.controlnet.save_controlnet`, LDM-layout single file + diffusers folder.
Until the ADAPTERS writers are merged, LoRA and embeddings fall back to the diffusers layouts
(`unet.` / `text_encoder.` prefixed peft keys; `emb_params` or `clip_l`/`clip_g`), with alpha and
rank in the file's metadata, so nothing trained is lost. The fallback is marked in the metadata.
"""
from __future__ import annotations

import json
from pathlib import Path


from stablekit.errors import StablekitError
from stablekit.train.strategies.lora import LoraStrategy
from stablekit.train.strategies.textual_inversion import TextualInversionStrategy


def export(method: str, s, strategy, components, out: Path, record: dict, suffix: str = "") -> Path:
    """Write the method's artefact(s) into `out`: <name><suffix>.safetensors (returned) and what goes
    with it. suffix "-best" names every file of the best-so-far export (train/run.py export_best),
    the identifier embeddings of a DreamBooth-LoRA too, so they never replace the final run's files
    and the cross-references in the metadata name the files actually written."""
    name = f"{s.name}{suffix}"
    path = out / f"{name}.safetensors"
    metadata = {"ss_training_comment": "stablekit", "stablekit_config": json.dumps(record), "ss_steps": str(record.get("steps", ""))}
    if record.get("lr") is not None:  # where kohya's tools (and Civitai) read the learning rates
        lr = record["lr"]
        metadata.update(ss_learning_rate=str(lr), ss_unet_lr=str(lr),
                        ss_text_encoder_lr=str(record.get("text_encoder_lr") or lr))
    pivotal = hasattr(strategy, "identifier_embeddings")  # DreamBooth with identifier_lr > 0 (train/pivotal.py)
    if isinstance(strategy, LoraStrategy):
        embeddings = strategy.identifier_embeddings() if pivotal else {}
        if embeddings:  # the identifier rows live outside the LoRA: say which files go with it
            metadata["stablekit_load_with_embeddings"] = ", ".join(f"{w}{suffix}.safetensors" for w in embeddings)
        save_lora(path, strategy, components.arch, metadata)
        for word, vectors in embeddings.items():
            save_identifier_embedding(out, name, word, vectors, metadata, suffix)
    elif method == "controlnet":
        from stablekit.formats.controlnet import save_controlnet

        save_controlnet(strategy.controlnet, path, to="single-file")
        save_controlnet(strategy.controlnet, out / name, to="diffusers")
    elif isinstance(strategy, TextualInversionStrategy):
        strategy.write()
        save_embedding(path, s.name, strategy.learned(), metadata)
    else:
        from stablekit.formats import save_model

        if pivotal:
            strategy.write_identifier()  # the trained identifier rows travel in the text encoder
        save_model(components, path, to="single-file")
        save_model(components, out / name, to="diffusers")
    return path


def save_lora(path: Path, strategy: LoraStrategy, arch: str, metadata: dict[str, str]) -> None:
    parts = strategy.lora_state_dicts()
    unet = parts.pop("unet")
    text = [parts[k] for k in ("text_encoder", "text_encoder_2") if k in parts]
    text_arg = None if not text else (text if len(text) > 1 else text[0])
    metadata = {**metadata, "ss_network_dim": str(strategy.rank), "ss_network_alpha": str(strategy.alpha),
                "ss_network_dropout": str(strategy.dropout),
                "ss_network_module": "networks.lora" if not strategy.conv else "lycoris.kohya"}
    from stablekit.formats.lora_kohya import save_kohya_lora

    # kohya's writer sets ss_base_model_version in kohya's spelling (sd_v1, sdxl_base_v1-0)
    save_kohya_lora(path, unet, text_arg, alpha=strategy.alpha, rank=strategy.rank, arch=arch, metadata=metadata)


def save_identifier_embedding(out: Path, name: str, word: str, vectors, metadata: dict[str, str],
                              suffix: str = "") -> Path:
    """<out>/<word><suffix>.safetensors: a DreamBooth-LoRA identifier's trained rows as an A1111
    embedding, named after the word so that the word in a prompt picks it up (A1111 and
    --embeddings-dir: an embedding named after a vocabulary word such as "sks" overrides it).
    The best-so-far copy, <word>-best.safetensors, is used by writing "<word>-best" where the
    trained prompt has the word: A1111 and stablekit replace the whole name by the embedding's
    vectors, so the text encoder sees the same token positions as "<word>" would give."""
    stem = f"{word}{suffix}"
    if Path(word).name != word or stem == name or not word.strip("."):
        raise StablekitError(f"the identifier {word!r} cannot name an embedding file beside {name}.safetensors; "
                             "use a plain word such as 'sks' (or another --name)")
    path = out / f"{stem}.safetensors"
    save_embedding(path, stem, vectors, {**metadata, "stablekit_load_with": f"{name}.safetensors"})
    return path


def save_embedding(path: Path, name: str, vectors, metadata: dict[str, str]) -> None:
    from stablekit.formats.embeddings_a1111 import save_a1111_embedding

    save_a1111_embedding(path, name, vectors, metadata)
