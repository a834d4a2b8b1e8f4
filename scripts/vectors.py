"""Train word2vec vectors on the training split of a corpus, for model.pretrained_vectors.

    python scripts/vectors.py [data=ptb] [word2vec.vector_size=650] [out=PATH]

Reads the training split only, tokenised as training reads it (an <eos> after every line), and refuses a
configuration whose training file is the validation or test file. Settings: conf/vectors.yaml.
"""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from lm.cli import report_user_errors
from lm.data import read_lines
from lm.errors import DataError
from lm.pretrained import train_word2vec, write_vectors

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="../conf", config_name="vectors")
@report_user_errors
def main(cfg: DictConfig) -> None:
    logging.getLogger("gensim").setLevel(logging.WARNING)  # its per-pass progress lines
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()  # download if absent, check the checksums
    paths = datamodule.split_paths()
    train = paths["train"].resolve()
    for split in ("valid", "test"):
        if paths[split].resolve() == train:
            raise DataError(f"the training split {paths['train']} is the {split} split's file: word2vec vectors "
                            f"must not see {split} text. Point data.files.train at the training file.")
    vectors = train_word2vec(read_lines(paths["train"]), **cfg.word2vec)
    write_vectors(cfg.out, vectors)
    print(f"{len(vectors)} words x {cfg.word2vec.vector_size} from {paths['train']} -> {cfg.out}")


if __name__ == "__main__":
    main()
