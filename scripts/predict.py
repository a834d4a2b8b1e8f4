"""The most probable next words after some text, from a trained checkpoint.

    python scripts/predict.py "the stock market" --ckpt logs/runs/<run>/checkpoints/best.ckpt [--k 10]
"""

from __future__ import annotations

from lm.analysis import load_model, predict_next
from lm.cli import checkpoint_tool_parser, parse_tool_args, report_user_errors


@report_user_errors
def main() -> None:
    parser = checkpoint_tool_parser(__doc__)
    parser.add_argument("text", help="context words, space-separated (PTB is lower-case, numbers are N)")
    parser.add_argument("--k", type=int, default=10)
    args = parse_tool_args(parser)
    model, vocab = load_model(args.ckpt)
    for word, prob in predict_next(model, vocab, args.text, args.k):
        print(f"{prob:8.4f}  {word}")


if __name__ == "__main__":
    main()
