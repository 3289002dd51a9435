"""A planned run's compute reads the vocabulary of the data it will train on."""

from __future__ import annotations

from pathlib import Path

from qat_sweep.config.compose import plan_config
from qat_sweep.model.presets import PAPER_VOCAB
from qat_sweep.sweep.compute import model_flops, vocab_size


def test_a_prepared_corpus_sizes_the_run_with_its_own_vocabulary(demo_data: Path) -> None:
    prepared = plan_config(["model=1M", "data=demo", f"data.dir={demo_data}"])
    absent = plan_config(["model=1M", "data=demo", f"data.dir={demo_data / 'not-built'}"])
    assert vocab_size(prepared) == 512  # the demo corpus's BPE, from its manifest.json
    assert vocab_size(absent) == PAPER_VOCAB  # nothing prepared yet: the paper's tokenizer
    assert model_flops(prepared) < model_flops(absent)  # a 512-token head costs less
