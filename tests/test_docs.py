"""Every train.py / evaluate.py command the README and docs show composes, and its batches shard."""

import re
import shlex

import pytest
import torch
from hydra.utils import instantiate

from helpers import REPO, compose_cfg
from lm.build import model_config
from lm.data import CorpusDataModule

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "conf" / "cluster").glob("*.yaml"))]
# Config groups whose choices need a Hydra plugin from an optional extra (pyproject.toml).
PLUGINS = {"cluster": ("hydra_plugins.hydra_submitit_launcher", "[slurm]"),
           "hparams_search": ("hydra_plugins.hydra_optuna_sweeper", "[search]")}
COMMAND = re.compile(r"python scripts/(train|evaluate)\.py((?:[^\n`|\\]|\\\n#?)*)")


def _commands():
    found = []
    for doc in DOCS:
        for match in COMMAND.finditer(doc.read_text()):
            text = re.sub(r"\\\n#?", " ", match.group(2)).replace("#", " #", 1)
            words = shlex.split(text.split(" #")[0].replace("`", " ").replace("<", "").replace(">", ""))
            for variant in (["vd", "al", "re", "real"] if "_X" in text else [None]):  # X: each variant, as the docs say
                cell = [w.replace("_X", f"_{variant}") for w in words] if variant else words
                found.append(pytest.param(match.group(1), cell, id=f"{doc.name}:{' '.join(cell)[:80]}"))
    return found


@pytest.mark.parametrize("script, words", _commands())
def test_documented_command_composes_and_its_batches_shard(tmp_path, script, words):
    overrides = [w for w in words if "=" in w and not w.startswith("-")]
    overrides = [o if "," not in o.partition("=")[2] else o.split(",")[0] for o in overrides]  # a sweep's first point
    for group, (plugin, extra) in PLUGINS.items():
        if any(o.startswith(f"{group}=") for o in overrides):
            pytest.importorskip(plugin, reason=f"needs the {extra} extra")
    cfg = compose_cfg(overrides, tmp_path, config_name="train" if script == "train" else "evaluate")
    instantiate(model_config(cfg), vocab_size=100)
    devices = cfg.trainer.get("devices", 1)
    world = (devices if isinstance(devices, int) else 1) * cfg.trainer.get("num_nodes", 1)

    for split, batch in (("train", cfg.data.batch_size), ("valid", cfg.data.eval_batch_size)):
        for rank in range(world):  # raises the ConfigError a real start would
            CorpusDataModule._shard(torch.zeros(3, batch), rank, world, split)


def test_the_documents_show_commands():
    assert len(_commands()) >= 15
