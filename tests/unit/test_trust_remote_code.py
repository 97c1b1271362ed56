"""trust_remote_code is off unless asked for, and loud when on."""

from __future__ import annotations

import logging

from helpers import save_checkpoint

from qk_sniffer.capture.models import build_config, load_model
from qk_sniffer.core.config import ModelConfig


def test_off_by_default_and_loud_when_on(tmp_path, caplog, monkeypatch):
    assert ModelConfig().trust_remote_code is False
    ckpt = save_checkpoint(tmp_path, "llama")
    seen = []
    import transformers

    original = transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    quiet = ModelConfig(name=str(ckpt))
    with caplog.at_level(logging.WARNING):
        load_model(quiet, build_config(quiet))
    assert seen == [False]
    assert "trust_remote_code" not in caplog.text

    loud = ModelConfig(name=str(ckpt), trust_remote_code=True)
    with caplog.at_level(logging.WARNING):
        load_model(loud, build_config(loud))
    assert seen == [False, True]
    assert f"model.trust_remote_code=true: running code from {ckpt}" in caplog.text
