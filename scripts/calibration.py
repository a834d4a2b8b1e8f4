"""How sharp a checkpoint's predictions are over a text: their mean entropy against their mean
cross-entropy, and the perplexity with the logits divided by each temperature T.

    python scripts/calibration.py data/ptb/ptb.valid.txt --ckpt <run>/checkpoints/best.ckpt [--temps 0.9,1.1,1.2]

The text is read as validation reads a split (10 streams, windows of 35), so the perplexity at T = 1
is the run's val/ppl. A calibrated model's entropy equals its cross-entropy on average; entropy below
cross-entropy and a lower perplexity at a T > 1 mean over-confident predictions.
"""

from __future__ import annotations

import math
from pathlib import Path

from lm.analysis import calibration, load_model, read_text
from lm.cli import checkpoint_tool_parser, parse_tool_args, report_user_errors, temperatures


@report_user_errors
def main() -> None:
    parser = checkpoint_tool_parser(__doc__)
    parser.add_argument("text", type=Path, help="a text file, such as ptb.valid.txt")
    parser.add_argument("--temps", type=temperatures, default="0.9,1.1,1.2,1.5",
                        help="temperatures besides 1, comma-separated")
    parser.add_argument("--streams", type=int, default=10, help="parallel streams (data.eval_batch_size)")
    parser.add_argument("--bptt", type=int, default=35, help="window length (data.bptt)")
    args = parse_tool_args(parser)
    if args.streams < 1 or args.bptt < 1:
        parser.error("--streams and --bptt must be at least 1")
    model, vocab = load_model(args.ckpt)
    result = calibration(model, read_text(args.text, vocab, "calibration.py"), args.temps, args.streams, args.bptt)
    print(f"{result['tokens']} tokens: mean entropy {result['entropy']:.3f} nats, mean cross-entropy "
          f"{result['cross_entropy']:.3f} nats (uniform {math.log(len(vocab)):.2f})")
    print("T | perplexity of softmax(logits / T)")
    for t, ppl in result["perplexity"].items():
        print(f"{t:g} | {ppl:.2f}")


if __name__ == "__main__":
    main()
