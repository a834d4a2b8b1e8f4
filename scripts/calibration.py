"""How sharp a checkpoint's predictions are over a text: their mean entropy against their mean
cross-entropy, and the perplexity with the logits divided by each temperature T.

    python scripts/calibration.py data/ptb/ptb.valid.txt --ckpt <run>/checkpoints/best.ckpt [--temps 0.9,1.1,1.2]
    python scripts/calibration.py data/ptb/ptb.valid.txt --ckpt <run>/checkpoints/best.ckpt --pull [--alpha 0.65 --tau 20]

The text is read as validation reads a split (10 streams, windows of 35), so the perplexity at T = 1
is the run's val/ppl. A calibrated model's entropy equals its cross-entropy on average; entropy below
cross-entropy and a lower perplexity at a T > 1 mean over-confident predictions. With ``--pull``, also
how hard the augmented term at ``--alpha`` and ``--tau`` pulls on the top LSTM layer's output against
cross-entropy (``lm.analysis.pull_sums``), in the same pass: the ratio of the two gradients' norms and their cosine.
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
    parser.add_argument("--pull", action="store_true", help="also compare the augmented term's gradient with "
                        "cross-entropy's")
    parser.add_argument("--alpha", type=float, default=0.65, help="the augmented term's weight, for --pull")
    parser.add_argument("--tau", type=float, default=20.0, help="its temperature, for --pull")
    args = parse_tool_args(parser)
    if args.streams < 1 or args.bptt < 1:
        parser.error("--streams and --bptt must be at least 1")
    if args.tau <= 0:
        parser.error("--tau must be positive")
    model, vocab = load_model(args.ckpt)
    result = calibration(model, read_text(args.text, vocab, "calibration.py"), args.temps, args.streams, args.bptt,
                         pull=(args.alpha, args.tau) if args.pull else None)
    print(f"{result['tokens']} tokens: mean entropy {result['entropy']:.3f} nats, mean cross-entropy "
          f"{result['cross_entropy']:.3f} nats (uniform {math.log(len(vocab)):.2f})")
    print("T | perplexity of softmax(logits / T)")
    for t, ppl in result["perplexity"].items():
        print(f"{t:g} | {ppl:.2f}")
    if args.pull:
        pull = result["pull"]
        print(f"augmented term at alpha {args.alpha:g}, tau {args.tau:g}: its gradient on the top LSTM layer's "
              f"output is {pull['ratio']:.4f} of cross-entropy's in norm, cosine {pull['cosine']:.3f}")


if __name__ == "__main__":
    main()
