"""The inverse square-root learning-rate decay (optim.lr_decay, Karras et al. 2024, EDM2)."""
import pytest

from sdegen.train import learning_rate, load_config
from sdegen.train.config import ConfigError, resume_conflicts, to_dict


def test_inverse_sqrt_decay_after_warmup():
    # warm-up 10 updates to lr = 1, decay reference 100 updates: constant until update 100, then 1 / sqrt(n / 100)
    assert learning_rate(4, 1.0, 10, 100) == 0.5
    assert learning_rate(99, 1.0, 10, 100) == 1.0
    assert learning_rate(399, 1.0, 10, 100) == 0.5
    assert learning_rate(899, 3.0, 10, 100) == pytest.approx(1.0, rel=1e-12)
    assert learning_rate(9999, 1.0, 0, 100) == pytest.approx(0.1, rel=1e-12)
    # decay 0 keeps the constant rate after the warm-up
    assert learning_rate(10**6, 2.0, 10, 0) == 2.0


def test_lr_decay_config_key():
    assert load_config("digits_edm", ["optim.lr_decay=500"]).optim.lr_decay == 500
    with pytest.raises(ConfigError, match="optim.lr_decay must be >= 0"):
        load_config("digits_edm", ["optim.lr_decay=-1"])


def test_checkpoint_config_without_lr_decay_resumes():
    # a checkpoint written before optim.lr_decay existed was trained with a constant rate: no conflict
    saved = to_dict(load_config("digits_edm"))
    del saved["optim"]["lr_decay"]
    assert resume_conflicts(saved, load_config("digits_edm", ["optim.lr_decay=0"])) == []
    assert resume_conflicts(saved, load_config("digits_edm", ["optim.lr_decay=1000"])) == [
        "optim.lr_decay (0 in the checkpoint, now 1000)"]
