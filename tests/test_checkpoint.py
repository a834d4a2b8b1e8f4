"""Reading checkpoints: nothing in a file runs, damage and mismatches are one clear error (in-process;
tests/test_bad_input.py runs the same cases through every script)."""

import pytest
import torch

from helpers import CONF, compose_cfg
from lm.build import model_config
from lm.checkpoint import adopt_model_config, check_compatible, load_checkpoint
from lm.errors import ConfigError, DataError
from lm.model import LSTMLanguageModel


class _Payload:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):  # unpickling calls open(path, "w"): a file appears if anything ran
        return open, (self.path, "w")


def _checkpoint(model, **extra):
    return {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "vocab": ["a", "b"], **extra}


def test_a_checkpoint_carrying_code_is_refused_and_nothing_runs(tmp_path):
    model = LSTMLanguageModel(vocab_size=2, emb_size=4, hidden_size=4)
    marker = tmp_path / "ran"
    torch.save(_checkpoint(model, note=_Payload(marker)), tmp_path / "crafted.ckpt")
    with pytest.raises(DataError, match=r"holds Python objects besides tensors .* Use a checkpoint that train.py wrote"):
        load_checkpoint(tmp_path / "crafted.ckpt")
    assert not marker.exists()
    torch.save(_checkpoint(model), tmp_path / "good.ckpt")
    assert load_checkpoint(tmp_path / "good.ckpt")["vocab"] == ["a", "b"]


def test_lightning_reads_through_the_same_safe_load(tmp_path):
    from lm.checkpoint import SafeCheckpointIO

    marker = tmp_path / "ran"
    torch.save({"state_dict": {}, "note": _Payload(marker)}, tmp_path / "crafted.ckpt")
    with pytest.raises(DataError, match="holds Python objects"):
        SafeCheckpointIO().load_checkpoint(tmp_path / "crafted.ckpt", weights_only=False)  # whatever is asked
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [(b"\x00garbage" * 100, "truncated or corrupt"), (None, "does not exist")])
def test_damaged_or_missing_checkpoint_is_one_clear_error(tmp_path, content, message):
    path = tmp_path / "x.ckpt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_checkpoint(path)


def test_a_checkpoint_of_another_size_or_variant_is_refused():
    small = LSTMLanguageModel(vocab_size=2, emb_size=4, hidden_size=4)
    with pytest.raises(ConfigError, match="another model size"):
        check_compatible(_checkpoint(small), "x.ckpt", LSTMLanguageModel(vocab_size=2, emb_size=6, hidden_size=6), None)
    with pytest.raises(ConfigError, match="another model variant"):
        check_compatible(_checkpoint(small), "x.ckpt", LSTMLanguageModel(vocab_size=2, emb_size=4, hidden_size=4,
                                                                         tie_weights=True, output_bias=False), None)
    with pytest.raises(DataError, match="another vocabulary"):
        check_compatible(_checkpoint(small), "x.ckpt", small, ["a", "c"])


def test_tied_and_untied_checkpoints_with_the_same_keys_are_told_apart():
    tied, untied = (LSTMLanguageModel(vocab_size=2, emb_size=4, hidden_size=4, tie_weights=t) for t in (True, False))
    assert tied.state_dict().keys() == untied.state_dict().keys()  # both keep an output bias
    with pytest.raises(ConfigError, match="another model variant: model=tied there .* Pass model=tied"):
        check_compatible(_checkpoint(tied), "x.ckpt", untied, None)
    with pytest.raises(ConfigError, match="another model variant: model=untied there .* Pass model=untied"):
        check_compatible(_checkpoint(untied), "x.ckpt", tied, None)
    check_compatible(_checkpoint(tied), "x.ckpt", tied, None)


def test_a_checkpoint_with_or_without_an_output_bias_names_the_override_that_fits_it():
    plain, biased = (LSTMLanguageModel(vocab_size=2, emb_size=4, hidden_size=4, tie_weights=True, output_bias=b)
                     for b in (False, True))
    with pytest.raises(ConfigError, match="without an output bias and this one has. Add model.output_bias=false"):
        check_compatible(_checkpoint(plain), "x.ckpt", biased, None)
    with pytest.raises(ConfigError, match="with an output bias and this one has none. Add model.output_bias=true"):
        check_compatible(_checkpoint(biased), "x.ckpt", plain, None)


def test_a_tool_adopts_the_checkpoints_model_and_refuses_an_override_that_contradicts_it(tmp_path):
    trained = compose_cfg(["model=untied", "model.emb_size=32", "model.hidden_size=32"], tmp_path)
    checkpoint = {"state_dict": {}, "model_config": model_config(trained)}
    cfg = compose_cfg([], tmp_path)  # the default, tied at 200 units
    adopt_model_config(cfg, checkpoint, "x.ckpt", [])
    assert model_config(cfg) == checkpoint["model_config"]
    agreeing = compose_cfg(["model=untied"], tmp_path)
    adopt_model_config(agreeing, checkpoint, "x.ckpt", ["model=untied", "data.bptt=20"])
    assert agreeing.model.hidden_size == 32
    for overrides, named in ((["model=tied"], "model contradicts"),
                             (["model.emb_size=64"], "model.emb_size contradicts"),
                             (["size=medium"], "size contradicts")):
        with pytest.raises(ConfigError, match=named + " checkpoint x.ckpt"):
            adopt_model_config(compose_cfg(overrides, tmp_path), checkpoint, "x.ckpt", overrides)


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")
                                          if p.stem != "tuned_small_common"))
def test_every_preset_s_checkpoint_is_read_with_no_model_setting(preset, tmp_path):
    # What evaluate.py ckpt_path=X does with no other flag: the evaluation config is the default one.
    trained = compose_cfg([f"experiment={preset}"], tmp_path)
    checkpoint = {"state_dict": {}, "model_config": model_config(trained)}
    cfg = compose_cfg([], tmp_path, config_name="evaluate")
    adopt_model_config(cfg, checkpoint, "x.ckpt", [])
    assert model_config(cfg) == checkpoint["model_config"]
