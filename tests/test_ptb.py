"""Real Penn Treebank, when ../shared/data/ptb is present: the default model learns."""

import math

import pytest

from helpers import SHARED_PTB, compose_cfg
from lm.build import build_datamodule, build_task, build_trainer

pytestmark = pytest.mark.skipif(not (SHARED_PTB / "ptb.train.txt").is_file(), reason="no ../shared/data/ptb")


def test_checksums_and_vocabulary(tmp_path):
    cfg = compose_cfg([f"data.data_dir={SHARED_PTB}", "data.download=false"], tmp_path)
    dm = build_datamodule(cfg)  # verifies the SHA-256 of all three files
    assert dm.vocab_size == 10000
    assert {s: t.numel() for s, t in dm._ids.items()} == {"train": 929589, "valid": 73760, "test": 82430}
    assert not any(dm.oov.values())  # the Mikolov split maps rare words to <unk> already


@pytest.mark.slow
def test_a_few_hundred_batches_cut_validation_perplexity_far_below_untrained(tmp_path):
    cfg = compose_cfg(
        [f"data.data_dir={SHARED_PTB}", "data.download=false", "trainer.max_epochs=1",
         "trainer.limit_train_batches=300", "trainer.num_sanity_val_steps=0", "logger=csv",
         "callbacks.progress_bar.refresh_rate=0"],
        tmp_path,
    )
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.vocab)
    trainer = build_trainer(cfg)
    untrained = trainer.validate(task, datamodule=dm, verbose=False)[0]["val/ppl"]
    trainer.fit(task, datamodule=dm)
    trained = trainer.callback_metrics["val/ppl"].item()
    assert untrained > 5000  # about the vocabulary size: a uniform guess
    assert math.isfinite(trained) and trained < 1000 and trained < untrained / 10
