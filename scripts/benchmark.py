"""Training and evaluation throughput: a plain PyTorch loop against the project's Lightning loop.

    python scripts/benchmark.py                       # small, batch 20 x BPTT 35, real PTB if present
    python scripts/benchmark.py --size medium --vocab 33278 --json
    python scripts/benchmark.py model.dropout_recurrent=0      # any train.py override of the model

Every variant trains the same model class on the same windows in this one process: forward, loss,
backward, gradient clipping, SGD update (and, for Lightning, its hooks, logging and batch handling).
The variants take turns step by step (``Turns``), so the ratios compare steps run moments apart.
Times are per step, median over the timed steps after warm-up; tokens/s = batch x BPTT / median
step time. Peak memory is measured separately, one variant after another (``cpu_peaks``).

With the paper's state dropout (``model.dropout_state`` > 0, the small preset's), the same model runs
through nn.LSTM beside it, and the model's first LSTM layer is also timed alone (``layer_loop``): the
state-dropout layer, nn.LSTM on the input that layer widens, and the matrix products alone that a layer
written step by step must run (``layer_products``), each against nn.LSTM as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

from lm.allocator import keep_freed_memory
from lm.cli import report_user_errors
from lm.build import build_task, build_trainer, model_config
from lm.data import BPTTWindows, CorpusDataModule, Vocabulary, WindowLoader, batchify
from lm.errors import ConfigError
from lm.model import LSTMLanguageModel, detach_hidden

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SIZES = sorted(p.stem for p in (CONF / "size").glob("*.yaml"))
PTB = REPO.parent / "shared" / "data" / "ptb"


def windows(args) -> tuple[BPTTWindows, Vocabulary, str, int | None]:
    """The training windows, the vocabulary, where they came from, and the validation split's token count
    (None for synthetic tokens)."""
    data_dir = Path(args.data_dir or os.environ.get("PTB_DIR", PTB))
    if args.vocab is None and (data_dir / "ptb.train.txt").is_file():
        dm = CorpusDataModule(str(data_dir), batch_size=args.batch, bptt=args.bptt)
        dm.setup()
        valid_tokens = dm.windows("valid").streams[1:].numel()
        return dm.windows("train"), dm.vocab, f"PTB train split from {data_dir}", valid_tokens
    vocab = args.vocab or 10000
    ids = torch.randint(0, vocab, ((args.warmup + args.steps + 2) * args.batch * args.bptt,),
                        generator=torch.Generator().manual_seed(0))
    words = Vocabulary([f"w{i}" for i in range(vocab)])
    return BPTTWindows(batchify(ids, args.batch), args.bptt), words, f"synthetic tokens, vocabulary {vocab}", None


def project_config(args, output_dir: str, *extra: str) -> DictConfig:
    """The training config as train.py composes it for ``size=<args.size>`` and the command line's
    overrides (then ``extra``), without validation."""
    overrides = [f"size={args.size}", f"model={'tied' if args.tied else 'untied'}", f"paths.output_dir={output_dir}",
                 f"trainer.accelerator={args.device.split(':')[0]}",
                 "trainer.max_epochs=-1", f"trainer.max_steps={args.warmup + args.steps}",
                 "trainer.limit_val_batches=0", "trainer.num_sanity_val_steps=0", *args.overrides, *extra]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def make_model(cfg: DictConfig, vocab: int, device) -> LSTMLanguageModel:
    """The model exactly as conf/ builds it."""
    torch.manual_seed(0)
    return instantiate(model_config(cfg), vocab_size=vocab).to(device)


def _proc_status_mb(key: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


_cpu_baseline_mb: float | None = None


def peak_mb(device) -> float | None:
    """Peak memory of the timed steps. CUDA: the allocator's peak. CPU (Linux): the peak resident set
    since ``reset_peak`` minus the resident set then, i.e. what the steps added at most (meaningful
    in the ``cpu_peaks`` child, where freed blocks leave the resident set)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _proc_status_mb("VmHWM")
    return None if peak is None or _cpu_baseline_mb is None else peak - _cpu_baseline_mb


def reset_peak(device) -> None:
    global _cpu_baseline_mb
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        _cpu_baseline_mb = _proc_status_mb("VmRSS")
    except OSError:
        _cpu_baseline_mb = None


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_loop(args, cfg, data, vocab, device, tick: Callable[[], None]) -> None:
    """The reference: pytorch/examples word_language_model style, cross-entropy."""
    model = make_model(cfg, vocab, device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    hidden = model.init_hidden(args.batch)
    for i in range(args.warmup + args.steps):
        x, y = (t.to(device, non_blocking=True) for t in data[i])
        hidden = detach_hidden(hidden)
        logits, hidden = model(x, hidden)
        loss = F.cross_entropy(logits.view(-1, vocab), y.reshape(-1)) * x.size(0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        sync(device)
        tick()


class _Tick(pl.Callback):
    def __init__(self, tick: Callable[[], None], device):
        self.tick, self.device = tick, device

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        self.tick()


def lightning_loop(args, cfg, data, vocab: Vocabulary, device, tick: Callable[[], None]) -> None:
    """The project's loop: the task and trainer train.py builds (loss, schedules, callbacks, logger,
    checkpoint I/O); a step's time includes Lightning's work between steps (hooks, logging, fetching and
    moving the batch), since the clock runs from one step's end to the next's."""
    torch.manual_seed(0)
    task = build_task(cfg, vocab)
    trainer = build_trainer(cfg)
    trainer.callbacks.append(_Tick(tick, device))
    trainer.fit(task, train_dataloaders=WindowLoader(data, pin_memory=device.type == "cuda"))


def layer_loop(args, cfg, device, kind: str, tick: Callable[[], None]) -> None:
    """The model's first LSTM layer alone, forward and backward (upstream: a fixed random gradient), on
    random inputs: ``nn_lstm`` nn.LSTM as it is; ``widened`` nn.LSTM on an input with one more feature per
    sequence, as the state-dropout layer widens it (the kernel's share of what the mask costs);
    ``state_dropout`` the model's own state-dropout layer (``run_layer``), a new mask each step;
    ``products`` only the matrix products of ``layer_products``."""
    model = make_model(cfg, 2, device).train()  # two words: only the first layer runs
    lstm = model.lstms[0]
    if kind == "widened":
        lstm = torch.nn.LSTM(lstm.input_size + args.batch, lstm.hidden_size).to(device)
    x = torch.randn(args.bptt, args.batch, lstm.input_size, device=device, requires_grad=True)
    state = model.init_hidden(args.batch)[0]
    upstream = torch.randn(args.bptt, args.batch, lstm.hidden_size, device=device)
    products = layer_products(lstm, x) if kind == "products" else None
    for _ in range(args.warmup + args.steps):
        if products is not None:
            products()
        else:
            out = model.run_layer(lstm, x, state)[0] if kind == "state_dropout" else lstm(x, state)[0]
            out.backward(upstream)
        sync(device)
        tick()


def layer_products(lstm: torch.nn.LSTM, x: torch.Tensor) -> Callable[[], None]:
    """A function that runs the matrix products that an LSTM layer written step by step needs for one
    forward and backward pass over the window x (T, B, d), and nothing else: the input products of all
    steps as one, one recurrent product per step each way, and the gradients of W_ih, W_hh and x as one
    product each over all steps. Their time is a floor for any such layer on torch's matrix products,
    whatever it computes between them (the gates, the mask), so ``layer_products_over_nn_lstm`` bounds what
    a kernel of the project's own could reach. Values do not change the time: random ones stand in for the
    states and gradients."""
    steps, b, d = x.shape
    w_ih, w_hh, bias = (p.detach() for p in (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0))
    flat = x.detach().reshape(steps * b, d)
    h = torch.randn(steps, b, lstm.hidden_size, device=x.device)  # the state each step reads
    grad_gates = torch.randn(steps, b, 4 * lstm.hidden_size, device=x.device)

    def run() -> None:
        gates = torch.addmm(bias, flat, w_ih.t()).view(steps, b, -1)
        for t in range(steps):
            torch.addmm(gates[t], h[t], w_hh.t())
        for t in range(steps - 1, 0, -1):  # the carried-in state takes no gradient
            torch.mm(grad_gates[t], w_hh)
        grad = grad_gates.view(steps * b, -1)
        torch.mm(grad.t(), flat)  # W_ih's gradient
        torch.mm(grad.t(), h.view(steps * b, -1))  # W_hh's
        torch.mm(grad, w_ih)  # x's

    return run


def eval_loop(args, cfg, data, vocab, device, tick: Callable[[], None]) -> None:
    model = make_model(cfg, vocab, device).eval()
    hidden = model.init_hidden(args.batch)
    with torch.no_grad():
        for i in range(args.warmup + args.steps):
            x, y = (t.to(device) for t in data[i])
            logits, hidden = model(x, hidden)
            F.cross_entropy(logits.view(-1, vocab), y.reshape(-1))
            sync(device)
            tick()


class Turns:
    """Runs every variant in its own thread, one step at a time and in rotating order, so that a slow
    spell of a shared machine falls on neighbouring steps of all variants rather than on one variant's
    block of steps (separate blocks gave ratios that moved by +-8% between runs on a 2-core VM).
    Only the thread holding the turn runs; a step is timed from the moment its thread gets the turn
    to its ``tick``, so everything the loop does per step is inside it."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.cond = threading.Condition()
        self.turn: str | None = None
        self.finished: set[str] = set()
        self.errors: list[BaseException] = []
        self.times: dict[str, list[float]] = {}
        self._started = 0.0

    def _wait(self, name: str) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == name)
        self._started = time.perf_counter()

    def _release(self) -> None:
        with self.cond:
            self.turn = None
            self.cond.notify_all()

    def _run(self, name: str, body: Callable) -> None:
        try:
            self._wait(name)  # setting up also happens in turn, so it never overlaps a timed step
            body(lambda: self._tick(name))
        except BaseException as exc:  # re-raised by run() in the main thread
            self.errors.append(exc)
        finally:
            with self.cond:
                self.finished.add(name)
                self.turn = None
                self.cond.notify_all()

    def _tick(self, name: str) -> None:
        elapsed = time.perf_counter() - self._started
        times = self.times.setdefault(name, [])
        times.append(elapsed)
        self._release()
        self._wait(name)

    def run(self, variants: dict[str, Callable], steps: int) -> dict[str, list[float]]:
        threads = [threading.Thread(target=self._run, args=(n, body), daemon=True) for n, body in variants.items()]
        for t in threads:
            t.start()
        names = list(variants)
        for r in range(steps + 1):  # the extra round lets each thread finish (tear down) in its turn
            for name in names[r % len(names):] + names[: r % len(names)]:
                with self.cond:
                    if name in self.finished:
                        continue
                    self.turn = name
                    self.cond.notify_all()
                    self.cond.wait_for(lambda: self.turn is None)
            if self.errors:
                raise self.errors[0]
        for t in threads:
            t.join()
        return {name: t[self.warmup:] for name, t in self.times.items()}


def sequential_peaks(args, variants: dict[str, Callable], device) -> dict[str, float | None]:
    """Peak memory of each variant's steps after warm-up, one variant after another."""
    peaks = {}
    for name, body in variants.items():
        count = [0]

        def tick():
            count[0] += 1
            if count[0] == args.warmup:
                reset_peak(device)

        body(tick)
        peaks[name] = peak_mb(device)
    return peaks


def cpu_peaks(args) -> dict:
    """CPU peak memory per variant, measured in a child process in which glibc returns every large
    block to the system on free (fixed mmap threshold), so that the resident set follows live tensor
    memory. In this process freed blocks stay resident and would hide the peak."""
    child = [a for a in sys.argv[1:] if a != "--json"] + ["--memory-only", "--steps", "3"]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    result = subprocess.run([sys.executable, __file__, *child], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        print(f"CPU peak memory not measured: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {}
    return json.loads(result.stdout.strip().splitlines()[-1])


@report_user_errors
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--bptt", type=int, default=35)
    parser.add_argument("--vocab", type=int, default=None, help="synthetic data with this vocabulary size")
    parser.add_argument("--tied", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--alpha", type=float, default=None, help="the augmented loss's (default: conf/loss's)")
    parser.add_argument("--tau", type=float, default=None, help="the augmented loss's (default: conf/loss's)")
    parser.add_argument("--steps", type=int, default=90, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--default-malloc", action="store_true",
                        help="leave glibc's allocator thresholds as they are (train.py sets them: lm/allocator.py)")
    parser.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    parser.add_argument("--memory-only", action="store_true", help=argparse.SUPPRESS)  # the CPU peak child
    parser.add_argument("overrides", nargs="*", help="train.py overrides, e.g. model.dropout_recurrent=0")
    args = parser.parse_args()
    # As train.py does; the peak-memory child instead needs every freed block returned (cpu_peaks).
    allocator = "glibc defaults"
    if not (args.default_malloc or args.memory_only) and keep_freed_memory():
        allocator = "freed memory kept (lm/allocator.py)"
    pl.seed_everything(0, verbose=False)
    device = torch.device(args.device)
    data, vocab, source, valid_tokens = windows(args)
    if len(data) < args.warmup + args.steps:
        raise ConfigError(f"the training split has only {len(data)} windows of batch {args.batch} x BPTT {args.bptt}: "
                          f"lower --steps or --warmup to {len(data)} together at most")
    tokens = args.batch * args.bptt

    output_dir = tempfile.mkdtemp(prefix="benchmark-")  # what the trainers write (CSV logs), removed below
    # The learning rate stays at lr 1 (no decay), as in the plain loop.
    loss_overrides = [f"loss.{k}={v}" for k, v in (("alpha", args.alpha), ("tau", args.tau)) if v is not None]
    cfg = {"ce": project_config(args, f"{output_dir}/ce", "loss=ce", "lr_schedule=none"),
           "al": project_config(args, f"{output_dir}/al", "loss=augmented", *loss_overrides, "lr_schedule=none")}
    # The paper's state dropout (lm.lstm.masked_lstm) runs nn.LSTM's kernel on an input widened by one
    # column per sequence; beside it, the same model without it: what the mask costs.
    state_dropout = cfg["ce"].model.dropout_state > 0
    if state_dropout:
        cfg["nn_lstm"] = project_config(args, f"{output_dir}/nn_lstm", "loss=ce", "lr_schedule=none",
                                        "model.dropout_state=0")

    def variants(timing: bool) -> dict[str, Callable]:
        """The training loops; with ``timing``, also evaluation and (state dropout) the layer alone."""
        loops = {
            "plain_ce": lambda tick: plain_loop(args, cfg["ce"], data, len(vocab), device, tick),
            "lightning_ce": lambda tick: lightning_loop(args, cfg["ce"], data, vocab, device, tick),
            "lightning_al": lambda tick: lightning_loop(args, cfg["al"], data, vocab, device, tick),
        }
        if state_dropout:
            loops["lightning_ce_nn_lstm"] = lambda tick: lightning_loop(args, cfg["nn_lstm"], data, vocab, device, tick)
        if timing:
            loops["eval"] = lambda tick: eval_loop(args, cfg["ce"], data, len(vocab), device, tick)
        if timing and state_dropout:
            for kind in ("nn_lstm", "widened", "state_dropout", "products"):
                loops[f"layer_{kind}"] = lambda tick, kind=kind: layer_loop(args, cfg["ce"], device, kind, tick)
        return loops

    try:
        if args.memory_only:
            print(json.dumps(sequential_peaks(args, variants(timing=False), device)))
            return
        times = Turns(args.warmup).run(variants(timing=True), args.warmup + args.steps)
        peak = cpu_peaks(args) if device.type == "cpu" else sequential_peaks(args, variants(timing=False), device)
    finally:
        shutil.rmtree(output_dir, ignore_errors=True)
    rate = {k: tokens / statistics.median(t) for k, t in times.items()}
    out = {
        "plain_ce_tokens_per_s": rate["plain_ce"],
        "lightning_ce_tokens_per_s": rate["lightning_ce"],
        "lightning_al_tokens_per_s": rate["lightning_al"],
        "eval_tokens_per_s": rate["eval"],
    }
    if state_dropout:  # the model through nn.LSTM without the mask (model.dropout_state=0), and the layer alone
        out |= {
            "lightning_ce_nn_lstm_tokens_per_s": rate["lightning_ce_nn_lstm"],
            "state_dropout_over_nn_lstm": rate["lightning_ce"] / rate["lightning_ce_nn_lstm"],
            "layer_state_dropout_over_nn_lstm": rate["layer_state_dropout"] / rate["layer_nn_lstm"],
            "layer_widened_over_nn_lstm": rate["layer_widened"] / rate["layer_nn_lstm"],
            "layer_products_over_nn_lstm": rate["layer_products"] / rate["layer_nn_lstm"],
        }
    out |= {
        "al_over_ce": rate["lightning_al"] / rate["lightning_ce"],
        "lightning_over_plain": rate["lightning_ce"] / rate["plain_ce"],
        "peak_mb_plain": peak.get("plain_ce"),
        "peak_mb_ce": peak.get("lightning_ce"),
        "peak_mb_al": peak.get("lightning_al"),
    }
    if valid_tokens is not None:  # a run of the preset's epochs with the augmented loss: training plus one validation each
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            epochs = compose(config_name="train", overrides=[f"size={args.size}", *args.overrides]).trainer.max_epochs
        epoch_s = data.streams[1:].numel() / rate["lightning_al"] + valid_tokens / rate["eval"]
        out["projected_al_run_hours"] = epochs * epoch_s / 3600
    print(f"{' '.join([args.size, *args.overrides])}, {'tied' if args.tied else 'untied'}, batch {args.batch} x "
          f"BPTT {args.bptt}, augmented loss at alpha {cfg['al'].loss.alpha} and tau {cfg['al'].loss.tau}, "
          f"{source}, {args.device}, {torch.get_num_threads()} threads, {allocator}, "
          f"median of {args.steps} steps after {args.warmup} warm-up steps, variants taking turns step by step")
    for k, v in out.items():
        print(f"  {k:34s} {'n/a (needs CUDA or Linux /proc)' if v is None else f'{v:,.3f}'}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
