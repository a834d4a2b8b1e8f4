"""The words the augmented loss credits for WORD: the top of its target y~ = softmax(L L[WORD] / tau).

    python scripts/neighbors.py money --ckpt logs/runs/<run>/checkpoints/best.ckpt [--k 10] [--tau 1.0]

With --spread TEXT instead of a word: where y~ puts its mass at several temperatures, averaged over the
words of a text (on the word itself, on its k nearest other words, entropy), to choose loss.tau; and
how much of y~ the first principal axis of L decides, whatever the temperature:

    python scripts/neighbors.py --spread data/ptb/ptb.valid.txt --ckpt ... --taus 1,2,5,10
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lm.analysis import load_model, read_text, target_axis, target_neighbors, target_spread
from lm.cli import checkpoint_tool_parser, parse_tool_args, report_user_errors, temperatures


@report_user_errors
def main() -> None:
    parser = checkpoint_tool_parser(__doc__)
    parser.add_argument("word", nargs="?")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--tau", type=float, default=1.0, help="the temperature of the target (loss.tau)")
    parser.add_argument("--spread", type=Path, metavar="TEXT", help="summarise y~ over the words of this text")
    parser.add_argument("--taus", type=temperatures, default="1,2,5,10",
                        help="temperatures for --spread, comma-separated")
    args = parse_tool_args(parser)
    if (args.word is None) == (args.spread is None):
        parser.error("give a WORD or --spread TEXT (one of the two)")
    model, vocab = load_model(args.ckpt)
    if args.word is not None:
        for word, prob in target_neighbors(model.embedding.weight, vocab, args.word, args.k, args.tau):
            print(f"{prob:8.4f}  {word}")
        return
    counts = torch.bincount(read_text(args.spread, vocab, "--spread"), minlength=len(vocab))
    uniform = math.log(len(vocab))
    print(f"tau | on the word | on its {args.k} nearest others | entropy (nats; uniform {uniform:.2f})")
    for tau in args.taus:
        spread = target_spread(model.embedding.weight, counts, tau, args.k)
        print(f"{tau:g} | {spread['self']:.3f} | {spread['near']:.3f} | {spread['entropy']:.2f}")
    axis = target_axis(model.embedding.weight, counts)
    print(f"first principal axis of L: {axis['variance']:.3f} of L's variance, {axis['logits']:.3f} of the variance "
          f"of y~'s logits; |correlation| of the words' coordinates on it with log(1 + count): {axis['frequency']:.2f}")


if __name__ == "__main__":
    main()
