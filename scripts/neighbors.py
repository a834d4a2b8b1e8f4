"""The words the augmented loss credits for WORD: the top of its target y~ = softmax(L L[WORD] / tau).

    python scripts/neighbors.py money --ckpt logs/runs/<run>/checkpoints/best.ckpt [--k 10] [--tau 1.0]
"""

from __future__ import annotations

import argparse
import sys

from lm.analysis import load_model, target_neighbors
from lm.errors import UserError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("word")
    parser.add_argument("--ckpt", required=True, help="a .ckpt file written by train.py")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tau", type=float, default=1.0, help="the temperature of the target (loss.tau)")
    args = parser.parse_args()
    try:
        model, vocab = load_model(args.ckpt)
        for word, prob in target_neighbors(model.embedding.weight, vocab, args.word, args.k, args.tau):
            print(f"{prob:8.4f}  {word}")
    except UserError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
