"""The most probable next words after some text, from a trained checkpoint.

    python scripts/predict.py "the stock market" --ckpt logs/runs/<run>/checkpoints/best.ckpt [--k 10]
"""

from __future__ import annotations

import argparse

from lm.analysis import load_model, predict_next
from lm.cli import report_user_errors


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("text", help="context words, space-separated (PTB is lower-case, numbers are N)")
    parser.add_argument("--ckpt", required=True, help="a .ckpt file written by train.py")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()
    model, vocab = load_model(args.ckpt)
    for word, prob in predict_next(model, vocab, args.text, args.k):
        print(f"{prob:8.4f}  {word}")


if __name__ == "__main__":
    main()
