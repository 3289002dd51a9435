"""Run identity of the block formats and rotation: new settings at their defaults leave every
earlier run_key alone; set, they name the run (readable part and hash) and its analysis key."""

from __future__ import annotations

import copy

import pytest

from qat_sweep.config.compose import identity_fields, plan_config, run_key
from qat_sweep.model.precision import OPTIONAL_DEFAULTS

W4A4 = ["model=0.2M", "quant=w4a4"]


def key(*overrides: str) -> str:
    return plan_config([*W4A4, *overrides])["run_key"]


def test_a_config_from_before_the_new_keys_keeps_its_run_key() -> None:
    """Records written before scale_rounding, int4_range and rotation existed hold quant
    configs without them: the same run must get the same key from them."""
    for overrides in (W4A4, ["model=0.2M"], [*W4A4, "quant.format=fp4", "quant.group_size=32"]):
        config = plan_config(overrides)
        old = copy.deepcopy(config)
        for name in OPTIONAL_DEFAULTS:
            del old["quant"][name]
        assert run_key(old) == config["run_key"]


@pytest.mark.parametrize(
    ("explicit", "implicit"),
    [
        (["quant.rotation=none"], []),
        (["quant.format=mxfp4", "quant.group_size=null", "quant.scale_rounding=floor"],
         ["quant.format=mxfp4", "quant.group_size=null"]),
        (["quant.format=mxint4", "quant.group_size=null", "quant.int4_range=symmetric"],
         ["quant.format=mxint4", "quant.group_size=null"]),
    ],
)  # fmt: skip
def test_a_default_written_out_is_the_same_run(explicit: list[str], implicit: list[str]) -> None:
    assert key(*explicit) == key(*implicit)


def test_block_formats_and_rotation_name_their_runs() -> None:
    mx = key("quant.format=mxfp4", "quant.group_size=null")
    assert mx.startswith("0.2M_D2M_w4a4_mxfp4_g32_lr")
    assert key("quant.format=mxfp4", "quant.group_size=32") == mx  # G = the block: one run
    rotated = key("quant.format=mxfp4", "quant.group_size=null", "quant.rotation=hadamard")
    assert "_w4a4_mxfp4-had_g32_" in rotated and rotated != mx
    assert "_w4a4_nvint4-full_g16_" in key(
        "quant.format=nvint4", "quant.group_size=null", "quant.int4_range=full"
    )
    assert "_mxfp4-rceil-had16s2_g32_" in key(
        "quant.format=mxfp4", "quant.group_size=null", "quant.scale_rounding=rceil",
        "quant.rotation=hadamard", "quant.rotation_block=16", "quant.rotation_seed=2",
    )  # fmt: skip
    seeds = {key("quant.group_size=32", "quant.rotation=hadamard", f"quant.rotation_seed={s}")
             for s in (1, 2)}  # fmt: skip
    assert len(seeds) == 2


def test_identity_fields_carry_the_label_and_the_block() -> None:
    fields = identity_fields(
        plan_config(
            [*W4A4, "quant.format=nvfp4", "quant.group_size=null", "quant.rotation=hadamard"]
        )
    )
    assert (fields["format"], fields["group_size"]) == ("nvfp4-had", 16)
    plain = identity_fields(plan_config([*W4A4, "quant.group_size=32"]))
    assert (plain["format"], plain["group_size"]) == ("int4", 32)
    assert identity_fields(plan_config(["model=0.2M"]))["format"] == "bf16"
