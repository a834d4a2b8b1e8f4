"""Every combination the real configs offer composes, builds and runs one batch (fast_dev_run)."""

import itertools
import math

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from helpers import CONF, TINY, compose_cfg
from lm.build import build_datamodule, build_task, build_trainer, model_config
from lm.losses import AugmentedLoss, CrossEntropyLoss
from lm.schedules import Constant, Cosine, Linear

SCHEDULES = {"constant": Constant, "linear": Linear, "cosine": Cosine}


@pytest.mark.parametrize(
    "model,loss,schedule", list(itertools.product(["untied", "tied"], ["ce", "augmented"], SCHEDULES))
)
def test_fast_dev_run_every_combination(corpus, tmp_path, model, loss, schedule):
    cfg = compose_cfg(
        [*TINY, f"data.data_dir={corpus}", f"model={model}", f"loss={loss}", f"alpha_schedule={schedule}",
         f"tau_schedule={schedule}", "debug=fast_dev_run"],
        tmp_path,
    )
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.vocab)
    assert task.model.tie_weights == (model == "tied")
    assert isinstance(task.loss, AugmentedLoss if loss == "augmented" else CrossEntropyLoss)
    if loss == "augmented":
        assert isinstance(task.alpha_schedule, SCHEDULES[schedule])
        assert task.alpha_schedule.end == cfg.loss.alpha
        assert isinstance(task.tau_schedule, SCHEDULES[schedule]) and task.tau_schedule.end == cfg.loss.tau
    else:
        assert task.alpha_schedule is None and task.tau_schedule is None
    trainer = build_trainer(cfg)
    before = task.model.embedding.weight.detach().clone()
    trainer.fit(task, datamodule=dm)
    assert not torch.equal(before, task.model.embedding.weight)  # one real SGD step happened
    assert math.isfinite(trainer.callback_metrics["val/ppl"])
    test = trainer.test(task, datamodule=dm, verbose=False)
    assert math.isfinite(test[0]["test/ppl"])


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
                     if not p.stem.startswith("wt2_") and p.stem != "tuned_small_common")
PAPER = {"vd": ("untied", "ce"), "al": ("untied", "augmented"), "re": ("tied", "ce"), "real": ("tied", "augmented")}
UNITS = {"small": 200, "medium": 650, "large": 1500}
# Appendix A of the paper, per size: drop rate of the shared state mask, (decay factor, after epoch), clip.
PROTOCOL = {"small": (0.3, (0.9, 5), 5), "medium": (0.5, (0.9, 10), 5), "large": (0.65, (0.97, 1), 6)}


def test_twelve_paper_presets_and_four_tuned_small_presets_exist():
    paper = [f"{s}_{v}" for s in UNITS for v in PAPER]
    assert EXPERIMENTS == sorted(paper + [f"tuned_small_{v}" for v in PAPER])


def test_tied_presets_keep_an_output_bias_and_the_paper_s_form_is_one_override(tmp_path):
    for preset in ("small_re", "small_real", "medium_real", "large_re"):
        model = instantiate(model_config(compose_cfg([f"experiment={preset}"], tmp_path)), vocab_size=100)
        assert model.decoder.weight is model.embedding.weight and model.decoder.bias is not None, preset
    paper = compose_cfg(["experiment=small_real", "model.output_bias=false"], tmp_path)
    assert instantiate(model_config(paper), vocab_size=100).decoder.bias is None
    for tuned in ("tuned_small_re", "tuned_small_real"):  # measured without a bias, and kept so
        assert compose_cfg([f"experiment={tuned}"], tmp_path).model.output_bias is False


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_preset_sets_size_model_and_loss(tmp_path, name):
    size, variant = name.split("_")[-2:]
    cfg = compose_cfg([f"experiment={name}"], tmp_path)
    assert cfg.model.hidden_size == cfg.model.emb_size == UNITS[size]
    assert cfg.model.tie_weights == (PAPER[variant][0] == "tied")
    assert cfg.loss._target_.endswith("AugmentedLoss" if PAPER[variant][1] == "augmented" else "CrossEntropyLoss")
    assert cfg.data.bptt == 35 and cfg.data.batch_size == 20 and cfg.optim.optimizer.lr == 1.0
    model = instantiate(model_config(cfg), vocab_size=100)
    assert (model.decoder.weight is model.embedding.weight) == (PAPER[variant][0] == "tied")


@pytest.mark.parametrize("name", [f"{s}_{v}" for s in UNITS for v in PAPER])
def test_paper_presets_follow_the_papers_appendix(tmp_path, name):
    size, variant = name.split("_")
    cfg = compose_cfg([f"experiment={name}"], tmp_path)
    drop, (factor, after), clip = PROTOCOL[size]
    other = ("dropout_emb", "dropout_hidden", "dropout_out", "dropout_words", "dropout_recurrent")
    assert cfg.model.dropout_state == drop and all(cfg.model[k] == 0 for k in other)
    schedule = cfg.lr_schedule
    assert schedule._target_.endswith("DecayAfter") and (schedule.factor, schedule.after_epoch) == (factor, after)
    assert cfg.trainer.gradient_clip_val == clip
    if PAPER[variant][1] == "augmented":  # tau 20; alpha = gamma in 0.5..0.8 from the first step
        assert cfg.loss.tau == 20 and 0.5 <= cfg.loss.alpha <= 0.8
        assert cfg.alpha_schedule._target_.endswith("Constant") and cfg.tau_schedule._target_.endswith("Constant")


def test_the_design_card_command_trains_the_papers_small_real(tmp_path):
    card = compose_cfg(["model=tied", "loss=augmented"], tmp_path)
    assert OmegaConf.to_container(card) == OmegaConf.to_container(compose_cfg(["experiment=small_real"], tmp_path))


@pytest.mark.parametrize("variant,loss", [("re", "CrossEntropyLoss"), ("real", "AugmentedLoss")])
def test_wikitext2_presets(tmp_path, variant, loss):
    cfg = compose_cfg([f"experiment=wt2_medium_{variant}"], tmp_path)
    assert cfg.data.files.train == "wiki.train.tokens" and cfg.data.dir_env == "WT2_DIR"
    assert cfg.model.hidden_size == 650 and cfg.model.tie_weights and cfg.loss._target_.endswith(loss)
    assert list(cfg.data.sha256) == ["wikitext-2-v1.zip"] and len(cfg.data.url) == 2


def test_command_line_values_win_over_size(tmp_path):
    cfg = compose_cfg(["size=medium", "model.hidden_size=64", "model.emb_size=64", "trainer.max_epochs=3"], tmp_path)
    assert cfg.model.hidden_size == 64 and cfg.trainer.max_epochs == 3
    assert cfg.model.dropout_state == 0.5  # the rest of size=medium still applies


def test_tuned_augmented_presets_set_their_swept_alpha_and_the_command_line_wins(tmp_path):
    default = compose_cfg(["loss=augmented"], tmp_path).loss
    for name in ("tuned_small_al", "tuned_small_real"):
        preset = compose_cfg([f"experiment={name}"], tmp_path)
        assert (preset.loss.alpha, preset.loss.tau) == (0.1, 1.0) != (default.alpha, default.tau)
        assert preset.alpha_schedule._target_.endswith("Linear") and preset.alpha_schedule.end == preset.loss.alpha
        assert compose_cfg([f"experiment={name}", "loss.alpha=0.7"], tmp_path).alpha_schedule.end == 0.7


def test_the_four_small_presets_drop_what_the_size_drops_and_the_command_line_wins(tmp_path):
    # The table compares variants, so its four cells share one dropout setting.
    keys = ("dropout_emb", "dropout_hidden", "dropout_out", "dropout_words", "dropout_recurrent", "dropout_state")
    size = compose_cfg(["size=small"], tmp_path).model
    tuned = compose_cfg(["experiment=tuned_small_vd"], tmp_path).model
    for name in ("small_vd", "small_al", "small_re", "small_real"):
        model = compose_cfg([f"experiment={name}"], tmp_path).model
        assert [model[k] for k in keys] == [size[k] for k in keys], name
        model = compose_cfg([f"experiment=tuned_{name}"], tmp_path).model
        assert [model[k] for k in keys] == [tuned[k] for k in keys], name
        assert compose_cfg([f"experiment={name}", "model.dropout_out=0.4"], tmp_path).model.dropout_out == 0.4


@pytest.mark.parametrize("trainer,accelerator,precision,strategy", [
    ("cpu", "cpu", "32-true", None), ("gpu", "gpu", "bf16-mixed", None), ("ddp", "auto", "32-true", "ddp"),
])
def test_trainer_configs_compose(tmp_path, trainer, accelerator, precision, strategy):
    cfg = compose_cfg([f"trainer={trainer}"], tmp_path)
    assert cfg.trainer.accelerator == accelerator and cfg.trainer.precision == precision
    assert cfg.trainer.get("strategy") == strategy
    assert cfg.trainer.use_distributed_sampler is False


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PTB_DIR", "/somewhere/ptb")
    assert compose_cfg([], tmp_path).data.data_dir == "/somewhere/ptb"
    monkeypatch.delenv("PTB_DIR")
    assert compose_cfg([], tmp_path).data.data_dir == "data/ptb"


def test_tensorboard_logger_config_composes(tmp_path):
    cfg = compose_cfg(["logger=tensorboard"], tmp_path)
    assert cfg.logger.tensorboard._target_.endswith("TensorBoardLogger")


def test_tuned_small_presets_set_variational_lstm_dropout_and_plateau_schedule(tmp_path):
    # The preset's values must survive size/, which comes after model/ and optim/ in the defaults list.
    tuned = compose_cfg(["experiment=tuned_small_vd"], tmp_path)
    assert (tuned.model.dropout_words, tuned.model.dropout_recurrent, tuned.model.dropout_state) == (0.1, 0.2, 0.0)
    assert tuned.lr_schedule._target_.endswith("HeldPlateau")
    assert compose_cfg(["experiment=small_vd"], tmp_path).lr_schedule._target_.endswith("DecayAfter")


def test_tf32_is_enabled_for_gpu_runs_only(monkeypatch):
    from lm.build import enable_tf32

    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("highest")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        assert not enable_tf32("cpu") and torch.get_float32_matmul_precision() == "highest"
        assert enable_tf32("gpu") and torch.get_float32_matmul_precision() == "high"
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        torch.set_float32_matmul_precision("highest")
        assert not enable_tf32("auto") and torch.get_float32_matmul_precision() == "highest"
    finally:
        torch.set_float32_matmul_precision(before)


def test_the_gpu_trainer_builds_and_steps_with_bf16_autocast_on_cpu(corpus, tmp_path):
    """trainer=gpu's precision on CPU autocast: the step runs, the loss is finite, the LSTMs stay float32."""
    cfg = compose_cfg([*TINY, f"data.data_dir={corpus}", "trainer=gpu", "trainer.accelerator=cpu",
                       "debug=fast_dev_run"], tmp_path)
    assert cfg.trainer.precision == "bf16-mixed"
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.vocab)
    seen = []
    task.model.lstms[0].register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    trainer = build_trainer(cfg)
    before = task.model.embedding.weight.detach().clone()
    trainer.fit(task, datamodule=dm)
    assert not torch.equal(before, task.model.embedding.weight) and math.isfinite(trainer.callback_metrics["val/ppl"])
    assert seen and set(seen) == {torch.float32}


@pytest.mark.gpu
def test_the_gpu_trainer_runs_on_a_gpu(corpus, tmp_path):
    cfg = compose_cfg([*TINY, f"data.data_dir={corpus}", "trainer=gpu", "debug=fast_dev_run"], tmp_path)
    dm = build_datamodule(cfg)
    task = build_task(cfg, dm.vocab)
    trainer = build_trainer(cfg)
    trainer.fit(task, datamodule=dm)
    assert task.model.embedding.weight.device.type == "cuda" and math.isfinite(trainer.callback_metrics["val/ppl"])
