"""What the tests share: small generated corpora, the real configs composed with Hydra, running the scripts,
the real PTB path. (Fixtures and the GPU skip are in conftest.py.)"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_PTB = REPO.parent / "shared" / "data" / "ptb"


def write_corpus(folder: Path, n_words: int = 40, lines: tuple[int, int, int] = (300, 40, 40), seed: int = 0,
                 prefix: str = "") -> Path:
    """A small language with learnable structure: each word is mostly followed by one of two others."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(n_words)]
    follow = {w: rng.sample(words, 2) for w in words}
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), lines):
        out = []
        for _ in range(count):
            w = rng.choice(words)
            sent = [w]
            for _ in range(rng.randint(4, 12)):
                w = rng.choice(follow[w]) if rng.random() < 0.9 else rng.choice(words)
                sent.append(w)
            out.append(" ".join(sent))
        (folder / f"{prefix}{split}.txt").write_text("\n".join(out) + "\n", encoding="utf-8")
    return folder


# Every dropout off: for runs that must be deterministic (compared across processes, or learning a toy
# language in a few epochs).
NO_DROPOUT = ["model.dropout_emb=0", "model.dropout_hidden=0", "model.dropout_out=0", "model.dropout_words=0",
              "model.dropout_recurrent=0", "model.dropout_state=0"]

TINY = [
    "model.emb_size=16",
    "model.hidden_size=16",
    "data.batch_size=4",
    "data.eval_batch_size=2",
    "data.bptt=8",
    "data.download=false",
    "data.sha256=null",
]


def compose_cfg(overrides: list[str], output_dir: Path, config_name: str = "train", return_hydra_config=False):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=config_name, overrides=[f"paths.output_dir={output_dir}", *overrides],
                       return_hydra_config=return_hydra_config)


def run_script(script: str, *args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    # PTB_DIR from the caller's shell must not leak into a test that sets data.data_dir.
    full_env = {k: v for k, v in os.environ.items() if k != "PTB_DIR"}
    full_env.update({"PYTHONUNBUFFERED": "1", **(env or {})})
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / script), *args],
        cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
