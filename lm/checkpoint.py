"""Checkpoints: written atomically, read without running code, checked against the run before use.

A checkpoint holds tensors and plain values only (dicts, lists, numbers, strings), so every load,
the project's own and Lightning's (through ``SafeCheckpointIO``), uses ``torch.load(weights_only=True)``:
a file that carries pickled Python objects, as a crafted one would, is refused before anything in it runs.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins import TorchCheckpointIO
from torch import nn

from lm.errors import ConfigError, DataError
from lm.files import atomic_write


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes ``<name>.tmp`` beside the target, flushes it to disk, then renames it over the target;
    reads with ``weights_only=True`` whatever the caller asks.

    A rename within one folder is atomic, so a crash or a kill mid-write leaves the previous
    checkpoint intact. (Lightning's default writes through a temporary file that may sit on
    another file system, where the final move is a copy.)
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_write(path) as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """The checkpoint's contents, or one clear error if the file is missing, truncated, not a checkpoint,
    or carries Python objects (which loading would run)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {path} does not exist; pass the path of a .ckpt file written by train.py.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # weights_only=True refuses any reference to a Python function or class ("GLOBAL"): what a
        # crafted file calls when it is unpickled. Anything else that fails to unpickle is damage.
        found = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if found is not None:
            raise DataError(
                f"checkpoint {path} holds Python objects besides tensors and plain values ({found[:200]}); it was "
                "not written by train.py, and loading it could run code from the file, so it was not loaded. "
                "Use a checkpoint that train.py wrote."
            ) from None
        raise DataError(
            f"checkpoint {path} cannot be read (UnpicklingError): it is truncated or corrupt. Use another "
            "checkpoint of the run (checkpoints/last.ckpt or best.ckpt)."
        ) from None
    except Exception as exc:  # torch raises RuntimeError, EOFError, ... for a damaged file
        raise DataError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}): it is "
            "truncated or corrupt. Use another checkpoint of the run (checkpoints/last.ckpt or best.ckpt)."
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise DataError(f"{path} is not a checkpoint written by train.py (it holds no model state_dict).")
    return checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The model's own parameters from a checkpoint of the Lightning task (keys without ``model.``)."""
    return {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}


def check_compatible(checkpoint: dict[str, Any], path, model: nn.Module, vocab: list[str] | None) -> None:
    """Refuse a checkpoint from another vocabulary or another model size or variant, naming the difference."""
    saved_vocab = checkpoint.get("vocab")
    if vocab is not None and saved_vocab is not None and saved_vocab != vocab:
        first = next((i for i, (a, b) in enumerate(zip(saved_vocab, vocab)) if a != b), min(len(saved_vocab), len(vocab)))
        raise DataError(
            f"checkpoint {path} was trained on another vocabulary ({len(saved_vocab)} words; this data has "
            f"{len(vocab)}, first difference at index {first}). Point data.data_dir at the corpus it was trained on."
        )
    saved = model_state(checkpoint)
    expected = model.state_dict()
    # Tied and untied models (each with an output bias) have the same keys; a tied one saved W and L equal.
    w, emb = saved.get("decoder.weight"), saved.get("embedding.weight")
    if w is not None and emb is not None and hasattr(model, "tie_weights"):
        tied = w.shape == emb.shape and torch.equal(w, emb)
        if tied != model.tie_weights:
            variant = "model=tied" if tied else "model=untied"
            raise ConfigError(
                f"checkpoint {path} holds another model variant: {variant} there and the other here. Pass "
                f"{variant}, as the run that wrote it did."
            )
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    if (missing, unexpected) in ((["decoder.bias"], []), ([], ["decoder.bias"])):
        raise ConfigError(
            f"checkpoint {path} holds a model {'without' if missing else 'with'} an output bias and this one "
            f"{'has' if missing else 'has none'}. Add model.output_bias={'false' if missing else 'true'} "
            "(model=tied keeps a bias unless told otherwise)."
        )
    if missing or unexpected:
        raise ConfigError(
            f"checkpoint {path} holds another model variant (parameters only in the checkpoint: {unexpected or 'none'}; "
            f"only in this model: {missing or 'none'}). Pass the model=... overrides of the run that wrote it."
        )
    for name, tensor in expected.items():
        if saved[name].shape != tensor.shape:
            raise ConfigError(
                f"checkpoint {path} holds another model size: {name} is {tuple(saved[name].shape)} there and "
                f"{tuple(tensor.shape)} here. Pass the size=... / model.* overrides of the run that wrote it."
            )


# What a config-group choice on the command line says about the model: model=tied|untied its variant,
# size=... and experiment=... its size too. A checkpoint that differs there contradicts the choice.
_CHOICE_DECIDES = {"model": ("tie_weights",), "size": ("emb_size", "hidden_size"),
                   "experiment": ("tie_weights", "emb_size", "hidden_size")}


def adopt_model_config(cfg, checkpoint: dict[str, Any], path, overrides: list[str]) -> None:
    """Set ``cfg.model`` to the settings the checkpoint was trained with (it keeps them as ``model_config``),
    so that a tool needs no model overrides. An override that says otherwise, ``model.X=...`` or a
    ``model=``, ``size=`` or ``experiment=`` choice of another variant or size, is refused, naming the difference."""
    saved = checkpoint.get("model_config")
    if saved is None:
        return
    given = {o.partition("=")[0].lstrip("+~") for o in overrides}
    for key, value in saved.items():
        if key not in cfg.model or cfg.model[key] == value:
            continue
        said = [f"model.{key}"] if f"model.{key}" in given else [g for g in sorted(given)
                                                                 if key in _CHOICE_DECIDES.get(g, ())]
        if said:
            raise ConfigError(
                f"{said[0]} contradicts checkpoint {path}: model.{key} is {value!r} there and {cfg.model[key]!r} "
                f"here. Leave the model settings out: the checkpoint says what it is."
            )
        cfg.model[key] = value
