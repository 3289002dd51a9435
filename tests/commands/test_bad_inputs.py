"""Every command refuses a bad input before any work: exit code 2, a message naming the value
(and what is allowed), no traceback, and nothing written where the command would write.

One table, run in-process through `qat-sweep`'s own `main`: each value of the run config is
tried as `train` would take it, in a sweep's `plan` and in a local `launch`; then the
arguments of every other command. A case that wrongly passes would start work, so the first
check is the exit code."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest

from qat_sweep import __version__
from qat_sweep.cli import COMMANDS, main
from qat_sweep.config.typed import did_you_mean
from qat_sweep.config_dirs import CONFIG_DIR_ENV

TINY_SWEEP = "overrides: [data=demo, logger=none]\nsubgrids: {a: {model: 0.2M, tokens: 4096}}\n"
NPY = "data=npy data.paths=[{tmp}/tok.npy] data.vocab_size=512 data.eos_token_id=0"
FILES = {
    "tiny.yaml": TINY_SWEEP,
    "table.csv": "run_key,loss\nx,3.1\n",
    "notes.txt": "some text, not a corpus of tokens",
    # under their own --config-dir: a broken preset stops every command listing presets
    "broken/conf/model/broken.yaml": "name: broken\nn_layers: [2\n",
    "broken/conf/quant/broken.yaml": "scheme: w4a4\nformat: {int4\n",
    "launchers/broken.yaml": "kind: [local\n",
    "launchers/cloud.yaml": "kind: cloud\n",
    "launchers/many.yaml": "kind: local\nmax_parallel: many\n",
    "launchers/extra.yaml": "kind: local\ngpus: 2\n",
    "launchers/zero.yaml": "kind: local\nmax_parallel: 0\n",
}

# --- the run config: (override, text the refusal must contain) ---
# Each is tried by `train`, by `plan` on a one-run sweep, and by a local `launch` of it.
CONFIG_CASES: list[tuple[str, str]] = [
    # unknown keys: they would fork the run key and change nothing
    ("+foo=1", "unknown config key 'foo'"),
    ("+train.dropout=0.1", "unknown config key 'train.dropout'"),
    ("+model.dropout=0.1", "unknown config key 'model.dropout'"),
    ("+optim.momentum=0.9", "unknown config key 'optim.momentum'"),
    ("+data.foo=1", "unknown config key 'data.foo'"),
    ("+data.max_epoch=2", "unknown config key 'data.max_epoch' (did you mean 'data.max_epochs'?)"),
    ("+eval.foo=1", "unknown config key 'eval.foo'"),
    ("foo=1", "unknown config key 'foo'"),
    ("optim.lrr=1e-3", "'optim.lrr' in override 'optim.lrr=1e-3' (did you mean 'optim.lr'?)"),
    ("train.lr=1e-3", "(did you mean 'optim.lr'"),
    ("train.micro_batch=2", "did you mean 'train.micro_batch_seqs'?"),
    ("eval.batch=2", "did you mean 'eval.batches'"),
    ("checkpoint.every_step=5", "did you mean 'checkpoint.every_steps'"),
    # deleted keys, grammar
    ("~train", "config key 'train' is missing"),
    ("~optim", "config key 'optim' is missing"),
    ("~quant.format", "config key 'quant.format' cannot be deleted"),
    ("~tokens", "'tokens'"),
    ("tokens", "cannot read override 'tokens' (key 'tokens'): missing EQUAL"),
    ("optim.lr=[1", "cannot read override 'optim.lr=[1' (key 'optim.lr')"),
    ("optim.lr=1e-3=", "cannot read override 'optim.lr=1e-3=' (key 'optim.lr')"),
    ("seed='abc", "(key 'seed'): an unclosed quote or bracket"),
    ("=3", "override '=3' names no key"),
    ("optim.lr=${oops", "(key 'optim.lr')"),
    # config groups
    ("model=7B", "model=7B: no such option; model presets:"),
    ("--config-dir={tmp}/broken model=broken", "conf/model/broken.yaml, line 3: not valid YAML"),
    ("quant=w3a3", "quant=w3a3: no such option; schemes: bf16"),
    ("model=74m", "model=74m: no such option (did you mean model=74M?)"),
    ("quant=w4a", "(did you mean quant=w4a4?)"),
    ("--config-dir={tmp}/broken quant=broken", "conf/quant/broken.yaml, line 3: not valid YAML"),
    ("data=nope", "data=nope: no such option"),
    ("optim=nope", "optim=nope: no such option; optim options: adamw_cosine"),
    ("logger=nope", "logger=nope: no such option"),
    # tokens and seed
    ("tokens=abc", "tokens=abc"),
    ("tokens=-5", "tokens=-5"),
    ("tokens=0", "tokens=0"),
    ("tokens=1.5", "tokens=1.5"),
    ("tokens=100", "smaller than one global batch"),
    ("tokens=1e400", "tokens=1e400: 1e400 is beyond the largest number"),
    ("tokens=inf", "tokens=inf"),
    ("tokens=nan", "tokens=nan"),
    ("tokens=2X", "tokens=2X"),
    ("seed=abc", "seed='abc'"),
    ("seed=-1", "seed=-1"),
    ("seed=1.5", "seed=1.5"),
    ("seed=99999999999999999999999", "seed=99999999999999999999999: must be a whole number in"),
    ("seed=true", "seed=True"),
    # optim
    ("optim.lr=-1", "optim.lr=-1: must be a number > 0"),
    ("optim.lr=0", "optim.lr=0: must be a number > 0"),
    ("optim.lr=abc", "optim.lr='abc'"),
    ("optim.lr=inf", "optim.lr=inf"),
    ("optim.lr=nan", "optim.lr=nan"),
    ("optim.lr=1e400", "optim.lr=1e400: 1e400 is beyond the largest number"),
    ("optim.eps=0", "optim.eps=0"),
    ("optim.eps=-1e-8", "optim.eps=-1e-08"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1"),
    ("optim.grad_clip=0", "optim.grad_clip=0"),
    ("optim.grad_clip=-1", "optim.grad_clip=-1"),
    ("optim.batch_seqs=0", "optim.batch_seqs=0"),
    ("optim.batch_seqs=1.5", "optim.batch_seqs=1.5"),
    ("optim.batch_seqs=abc", "optim.batch_seqs='abc'"),
    ("optim.warmup_steps=-1", "optim.warmup_steps=-1"),
    ("optim.warmup_max_fraction=2", "optim.warmup_max_fraction=2"),
    ("optim.warmup_max_fraction=-0.1", "optim.warmup_max_fraction=-0.1"),
    ("optim.min_lr_ratio=1.5", "optim.min_lr_ratio=1.5"),
    ("optim.min_lr_ratio=-1", "optim.min_lr_ratio=-1"),
    ("optim.decay_fraction=2", "optim.decay_fraction=2"),
    ("optim.schedule=linear", "optim.schedule='linear': allowed: cosine, wsd"),
    ("optim.betas=[0.9]", "optim.betas=[0.9]"),
    ("optim.betas=[1.0,0.9]", "optim.betas=[1.0, 0.9]"),
    ("optim.betas=[0.9,-0.1]", "optim.betas=[0.9, -0.1]"),
    ("optim.betas=abc", "optim.betas='abc'"),
    # train
    ("train.seq_len=0", "train.seq_len=0"),
    ("train.seq_len=abc", "train.seq_len='abc'"),
    ("train.micro_batch_seqs=0", "train.micro_batch_seqs=0"),
    ("train.micro_batch_seqs=3", "train.micro_batch_seqs=3 does not divide"),
    ("train.micro_batch_seqs=abc", "train.micro_batch_seqs='abc'"),
    ("train.max_loss=0", "train.max_loss=0"),
    ("train.max_loss=-1", "train.max_loss=-1"),
    ("train.device=gpu", "train.device='gpu': allowed: auto"),
    ("train.device=tpu", "train.device='tpu'"),
    ("train.compile=maybe", "train.compile='maybe'"),
    ("train.compile=2", "train.compile=2"),
    ("train.autocast_bf16=maybe", "train.autocast_bf16='maybe': allowed: auto, true, false"),
    ("train.threads=100000", "train.threads=100000: must be null or a whole number in [0, 1024]"),
    ("train.threads=-1", "train.threads=-1"),
    ("train.threads=1025", "train.threads=1025"),
    ("train.threads=abc", "train.threads='abc'"),
    ("train.parallelism=tensor", "train.parallelism='tensor'"),
    ("train.activation_checkpointing=maybe", "train.activation_checkpointing='maybe'"),
    ("train.loss_smoothing=5", "train.loss_smoothing=5: must be a mapping"),
    ("train.loss_smoothing.fraction=5", "train.loss_smoothing.fraction=5"),
    ("train.loss_smoothing.fraction=0", "train.loss_smoothing.fraction=0"),
    ("train.loss_smoothing.max_steps=0", "train.loss_smoothing.max_steps=0"),
    # eval, checkpoint, logger
    ("eval.every_steps=-1", "eval.every_steps=-1"),
    ("eval.batches=0", "eval.batches=0"),
    ("eval.batch_seqs=0", "eval.batch_seqs=0"),
    ("eval.micro_batch_seqs=3", "eval.micro_batch_seqs=3 does not divide the eval batch"),
    ("eval.micro_batch_seqs=0", "eval.micro_batch_seqs=0"),
    ("checkpoint.every_minutes=-1", "checkpoint.every_minutes=-1"),
    ("checkpoint.every_minutes=nan", "checkpoint.every_minutes=nan"),
    ("checkpoint.every_steps=-1", "checkpoint.every_steps=-1"),
    ("checkpoint.keep=0", "checkpoint.keep=0"),
    ("checkpoint.keep_on_success=maybe", "checkpoint.keep_on_success='maybe'"),
    ("logger.wandb.mode=sometimes", "logger.wandb.mode='sometimes': allowed: auto"),
    ("logger.progress_every_steps=0", "logger.progress_every_steps=0"),
    # model
    ("model.norm_eps=-1", "model.norm_eps=-1: must be a number > 0"),
    ("model.norm_eps=0", "model.norm_eps=0"),
    ("model.rope_theta=0", "model.rope_theta=0"),
    ("model.rope_theta=-10000", "model.rope_theta=-10000"),
    ("model.lr=-1", "model.lr=-1"),
    ("model.n_layers=0", "n_layers must be a positive int, got 0"),
    ("model.n_layers=-2", "n_layers must be a positive int, got -2"),
    ("model.hidden_size=65", "hidden_size 65 is not divisible by n_heads"),
    ("model.n_heads=3", "is not divisible by n_heads 3"),
    ("model.n_kv_heads=3", "n_kv_heads 3"),
    ("model.vocab_size=0", "vocab_size"),
    ("model.hidden_size=abc", "model.hidden_size='abc'"),
    # quant (w4a4 with its group size: 0.2M has widths 64 and 256)
    ("quant=w4a4 quant.group_size=1", "quant.group_size=1: allowed an integer >= 2"),
    ("quant=w4a4 quant.group_size=0", "quant.group_size=0"),
    ("quant=w4a4 quant.group_size=-32", "quant.group_size=-32"),
    ("quant=w4a4 quant.group_size=48", "allowed: 2, 4, 8, 16"),
    ("quant=w4a4 quant.group_size=abc", "quant.group_size='abc'"),
    ("quant=w4a4 quant.format=int3", "unknown format 'int3'"),
    ("quant=w4a4 quant.rotation=givens", "allowed: none, hadamard"),
    ("quant=w4a4 quant.act_quantizer=foo", "unknown act_quantizer 'foo'"),
    ("quant=w4a4 quant.format=mxfp4", "group_size=128 with format mxfp4"),
    ("quant.rotation=hadamard", "with scheme bf16"),
    # data: values the reader would refuse only once a run has started
    ("data.max_epochs=abc", "data.max_epochs='abc': must be null (no limit) or a number > 0"),
    ("data.max_epochs=0", "data.max_epochs=0"),
    ("data.max_epochs=-1", "data.max_epochs=-1"),
    ("data.check=maybe", "data.check='maybe': allowed: sample, full"),
    ("data.build_if_missing=maybe", "data.build_if_missing='maybe'"),
    (f"{NPY} data.dtype=int8", "data.dtype='int8'"),
    (f"{NPY} data.val_fraction=2", "data.val_fraction=2"),
    (f"{NPY} data.vocab_size=abc", "data.vocab_size='abc'"),
    (f"{NPY} tokens=1e9", "tokens=1B needs 50,391 passes over the 20,000 tokens of data 'npy'"),
    (f"{NPY} tokens=5M", "tokens=5M needs 252 passes"),
]

# Refused by train and launch: plan runs where the runs' files and data may not be (a
# laptop), so it only warns of what it finds missing there.
TRAIN_AND_LAUNCH_CASES: list[tuple[str, str]] = [
    ("paths.runs={tmp}/notes.txt", "is a file, not a directory"),
    ("paths.runs={tmp}/notes.txt/runs", "is a file, not a directory"),
    (f"{NPY} data.val_block=1000000", "20,000 tokens make 0 block(s) of data.val_block=1000000"),
    (f"{NPY} data.val_block=12000", "data.val_block=12000: too few to hold one out"),
    ("data=npy data.paths=[{tmp}/none.npy] data.vocab_size=512 data.eos_token_id=0", "none.npy"),
    ("data=custom paths.data={tmp}/none", "not prepared"),
    ("data=npy", "names no token files"),
    ("paths.data={tmp}/notes.txt", "data.dir={tmp}/notes.txt/demo: {tmp}/notes.txt is a file"),
    (f"{NPY} model.vocab_size=100", "model.vocab_size=100 is smaller than the vocabulary"),
]

TINY = "sweep={tmp}/tiny.yaml"
DEMO_SWEEP = "sweep=demo"

# --- every other argument: (command line, text the refusal must contain) ---
COMMAND_CASES: list[tuple[str, str]] = [
    # plan
    ("plan", "missing sweep=NAME"),
    ("plan sweep=nope", "unknown sweep 'nope'"),
    (f"plan {TINY} --bogus", "unknown option '--bogus'"),
    (f"plan {TINY} --json=x --bogus", "unknown option '--bogus'"),
    (f"plan {TINY} mfu=2", "mfu=2"),
    (f"plan {TINY} mfu=0", "mfu=0"),
    (f"plan {TINY} mfu=nan", "mfu=nan"),
    (f"plan {TINY} mfu=abc", "mfu and peak_tflops must be numbers"),
    (f"plan {TINY} peak_tflops=inf", "peak=inf"),
    (f"plan {TINY} peak_tflops=0", "peak=0"),
    (f"plan {TINY} peak_tflops=-1", "peak=-1"),
    (f"plan {TINY} peak_tflops=abc", "peak_tflops must be numbers"),
    (f"plan {TINY} launcher=nope", "unknown launch profile 'nope'"),
    (f"plan {TINY} launcher=broken", "launchers/broken.yaml, line 2: not valid YAML"),
    (f"plan {TINY} launcher=cloud", "kind must be one of"),
    (f"plan {TINY} launcher=many", "max_parallel must be int, got 'many'"),
    (f"plan {TINY} launcher=extra", "unknown key(s) ['gpus']"),
    (f"plan {TINY} launcher={{tmp}}/none.yaml", "none.yaml"),
    # launch
    (f"launch {TINY}", "missing launcher=PROFILE"),
    ("launch launcher=local", "missing sweep=NAME"),
    (f"launch {TINY} launcher=nope", "unknown launch profile 'nope'"),
    (f"launch {TINY} launcher=broken", "launchers/broken.yaml, line 2: not valid YAML"),
    (f"launch {TINY} launcher=cloud", "kind must be one of"),
    (f"launch {TINY} launcher=many", "max_parallel must be int, got 'many'"),
    (f"launch {TINY} launcher=zero", "max_parallel"),
    (f"launch {TINY} launcher=local --bogus", "unknown option '--bogus'"),
    (f"launch {TINY} launcher=local --dry-run mfu=5", "mfu=5"),
    (f"launch {TINY} launcher=ci", "sinfo"),
    # status
    ("status", "missing sweep=NAME"),
    ("status sweep=nope", "unknown sweep 'nope'"),
    (f"status {TINY} --watch=abc", "--watch=abc"),
    (f"status {TINY} --watch=0", "--watch=0"),
    (f"status {TINY} --watch=-5", "--watch=-5"),
    (f"status {TINY} --watch=inf", "--watch=inf"),
    (f"status {TINY} --watch=nan", "--watch=nan"),
    (f"status {TINY} --watch=1e300", "--watch=1e300"),
    (f"status {TINY} --bogus", "unknown option '--bogus'"),
    (f"status {TINY} launcher=nope", "unknown launch profile 'nope'"),
    (f"status {TINY} optim.lr=-1", "optim.lr=-1"),
    (f"status {TINY} +foo=1", "unknown config key 'foo'"),
    # fit
    ("fit --table {tmp}/none.csv --out {tmp}/fit", "none.csv"),
    ("fit --table {tmp}/table.csv --out {tmp}/fit", "columns"),
    ("fit --table {tmp}/notes.txt --out {tmp}/fit", "notes.txt"),
    ("fit --runs {tmp}/none --out {tmp}/fit", "none"),
    (
        "fit --bootstrap -1 --table {tmp}/table.csv",
        "--bootstrap: '-1': must be a whole number >= 0",
    ),
    ("fit --bootstrap abc --table {tmp}/table.csv", "--bootstrap: 'abc'"),
    ("fit --bootstrap 1.5 --table {tmp}/table.csv", "--bootstrap: '1.5'"),
    ("fit --huber-base inf --table {tmp}/table.csv", "--huber-base: 'inf': must be a number > 0"),
    ("fit --huber-base nan --table {tmp}/table.csv", "--huber-base: 'nan'"),
    ("fit --huber-base 0 --table {tmp}/table.csv", "--huber-base: '0'"),
    ("fit --huber-base -1 --table {tmp}/table.csv", "--huber-base: '-1'"),
    ("fit --seed -1 --table {tmp}/table.csv", "--seed: '-1'"),
    ("fit --seed abc --table {tmp}/table.csv", "--seed: 'abc'"),
    ("fit --bogus", "--bogus"),
    ("fit --table {fit}/runs.csv --out {tmp}/notes.txt/fit", "--out={tmp}/notes.txt/fit: {tmp}/"),
    ("fit --law cubic --table {tmp}/table.csv", "cubic"),
    ("fit sweep=nope", "nope"),
    # design
    ("design sweep=demo --noise nan", "--noise: 'nan'"),
    ("design sweep=demo --noise inf", "--noise: 'inf'"),
    ("design sweep=demo --noise -1", "--noise: '-1'"),
    ("design sweep=demo --noise 2", "--noise 2.0: need 0 <= SD < 1"),
    ("design sweep=demo --noise abc", "--noise: 'abc'"),
    ("design sweep=demo --cell-noise -1", "--cell-noise: '-1'"),
    ("design sweep=demo --cell-noise nan", "--cell-noise: 'nan'"),
    ("design sweep=demo --sims 5", "--sims: '5': must be a whole number >= 10"),
    ("design sweep=demo --sims abc", "--sims: 'abc'"),
    ("design sweep=demo --sims 1e3", "--sims: '1e3'"),
    ("design sweep=demo --seed -1", "--seed: '-1'"),
    ("design", "missing sweep=NAME"),
    ("design sweep=nope", "unknown sweep 'nope'"),
    ("design sweep=demo mfu=2", "mfu=2"),
    ("design sweep=demo peak_tflops=inf", "peak=inf"),
    ("design sweep=demo --prior {tmp}/none", "none"),
    ("design sweep=demo --target 'model=7X tokens=20B'", "7X"),
    ("design sweep=demo --target 'model=973M tokens=abc'", "abc"),
    ("design sweep=demo --target 'model=973M tokens=20B group_size=1'", "group_size=1"),
    ("design sweep=demo --truth cubic", "cubic"),
    ("design sweep=demo stray", "unexpected argument 'stray'"),
    ("design sweep=demo optim.lr=-1", "optim.lr=-1"),
    # predict
    ("predict --fit {tmp}/none model=74M tokens=20B", "none"),
    ("predict --fit {fit} n_params=0 tokens=20B", "n_params"),
    ("predict --fit {fit} model=74M", "tokens= is required"),
    ("predict --fit {fit} model=74M tokens=abc", "tokens=abc"),
    ("predict --fit {fit} model=74M tokens=-1", "tokens=-1"),
    ("predict --fit {fit} model=74M tokens=1e400", "tokens"),
    ("predict --fit {fit} model=7X tokens=20B", "7X"),
    ("predict --fit {fit} model=74M tokens=20B scheme=w4a4 group_size=1", "group_size=1"),
    ("predict --fit {fit} model=74M tokens=20B scheme=w4a4 group_size=abc", "group_size=abc"),
    ("predict --fit {fit} model=74M tokens=20B scheme=w4a4 group_size=0", "group_size=0"),
    ("predict --fit {fit} model=74M tokens=20B scheme=w4a4", "group_size= is required"),
    ("predict --fit {fit} n_params=1e8 hidden_size=abc tokens=20B", "hidden_size"),
    ("predict --fit {fit} model=74M tokens=20B --law cubic", "cubic"),
    ("predict --fit {fit} model=74M tokens=20B bogus=1", "bogus"),
    # decide
    ("decide --fit {tmp}/none model=74M tokens=20B", "none"),
    ("decide --fit {fit} model=74M tokens=20B --bits 0", "--bits: '0': must be a number > 0"),
    ("decide --fit {fit} model=74M tokens=20B --bits nan", "--bits: 'nan'"),
    ("decide --fit {fit} model=74M tokens=20B --bits abc", "--bits: 'abc'"),
    ("decide --fit {fit} model=74M tokens=20B --scale-bits -1", "--scale-bits: '-1'"),
    ("decide --fit {fit} model=74M tokens=20B --tolerance inf", "--tolerance: 'inf'"),
    ("decide --fit {fit} model=74M tokens=20B --tolerance 0", "--tolerance: '0'"),
    ("decide --fit {fit} model=7X tokens=20B", "7X"),
    ("decide --fit {fit} model=74M tokens=abc", "abc"),
    ("decide --fit {fit} model=74M tokens=20B group_size=1", "group_size=1"),
    ("decide --fit {fit} model=74M tokens=20B stray", "stray"),
    # suggest
    ("suggest --fit {tmp}/none sweep=demo --target 'model=973M tokens=20B'", "none"),
    ("suggest --fit {fit} sweep=demo --target 'model=973M tokens=20B' --k 0", "--k: '0'"),
    ("suggest --fit {fit} sweep=demo --target 'model=973M tokens=20B' --k abc", "--k: 'abc'"),
    ("suggest --fit {fit} sweep=demo --target 'model=973M tokens=20B' --budget 0", "--budget: '0'"),
    ("suggest --fit {fit} sweep=demo --target 'model=973M tokens=20B' --budget inf", "'inf'"),
    ("suggest --fit {fit} sweep=demo --target 'model=973M tokens=20B' --noise -1", "'-1'"),
    ("suggest --fit {fit} sweep=demo --target 'model=973M tokens=20B' --noise nan", "'nan'"),
    ("suggest --fit {fit} sweep=demo --target 'model=7X tokens=20B'", "7X"),
    ("suggest --fit {fit} sweep=nope --target 'model=973M tokens=20B'", "unknown sweep 'nope'"),
    ("suggest --fit {fit} sweep=demo", "--target"),
    (
        "suggest --fit {fit} sweep=paper --target 'model=973M tokens=20B' --out {tmp}/notes.txt/s",
        "--out={tmp}/notes.txt/s: {tmp}/notes.txt is a file",
    ),
    ("suggest --fit {fit} sweep=demo --target 'model=973M tokens=20B' mfu=3", "mfu=3"),
    # prepare
    ("prepare input={tmp}/none.txt out={tmp}/out", "none.txt"),
    ("prepare input={tmp}/notes.txt out={tmp}/out bogus=1", "bogus"),
    ("prepare input={tmp}/notes.txt", "missing required key(s): out"),
    ("prepare out={tmp}/out", "missing required key(s): input"),
    ("prepare input={tmp}/notes.txt out={tmp}/out vocab_size=abc", "vocab_size='abc'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out vocab_size=0", "vocab_size='0'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out val_fraction=2", "val_fraction='2'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out val_fraction=nan", "val_fraction='nan'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out val_fraction=0", "val_fraction='0'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out workers=0", "workers='0'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out part_mb=0", "part_mb='0'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out part_mb=inf", "part_mb='inf'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out min_frequency=-1", "min_frequency='-1'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out shard=-1", "shard='-1'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out seed=-1", "seed='-1'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out force=maybe", "force='maybe'"),
    ("prepare input={tmp}/notes.txt out={tmp}/out stray", "stray"),
    ("prepare demo out={tmp}/out vocab_size=abc", "vocab_size='abc'"),
    ("prepare demo out={tmp}/out max_bytes=0", "max_bytes='0'"),
    ("prepare demo out={tmp}/out bogus=1", "bogus"),
    ("prepare hf dataset=x tokenizer=y out={tmp}/out", "max_tokens"),
    ("prepare hf dataset=x tokenizer=y out={tmp}/out max_tokens=abc", "max_tokens"),
    ("prepare check data=nope", "data/nope"),
    # bench
    ("bench model=7B", "'7B'"),
    ("bench --config-dir={tmp}/broken model=broken", "model/broken.yaml, line 3: not valid YAML"),
    ("bench batch=abc", "batch='abc'"),
    ("bench batch=0", "batch='0'"),
    ("bench batch=8 micro_batch=3", "batch=8 is not a multiple of micro_batch=3"),
    ("bench steps=0", "steps='0'"),
    ("bench warmup=-1", "warmup='-1'"),
    ("bench seq_len=0", "seq_len='0'"),
    ("bench vocab_size=0", "vocab_size='0'"),
    ("bench schemes=w3a3", "unknown schemes ['w3a3']"),
    ("bench format=int3", "unknown formats ['int3']"),
    ("bench group_size=abc", "group_size='abc'"),
    ("bench group_size=0", "group_size='0'"),
    ("bench rotation=givens", "unknown rotations ['givens']"),
    ("bench act_quantizer=foo", "act_quantizer='foo': allowed: auto"),
    ("bench compile=maybe", "compile='maybe'"),
    ("bench device=gpu", "device='gpu'"),
    ("bench seed=-1", "seed='-1'"),
    ("bench json={tmp}/none/out.json", "json="),
    ("bench bogus=1", "bogus"),
    ("bench --bogus", "expected key=value, got '--bogus'"),
    # the command line itself
    ("nope", "unknown command 'nope'"),
    ("--config-dir={tmp}/none plan sweep=demo", "--config-dir=DIR needs a directory"),
]

TRAIN_RUN = ["model=0.2M", "tokens=4096", "logger=none"]  # tiny: a case that passes is quick


def _cases() -> list[tuple[str, list[str], str]]:
    """(id, argv with {tmp}/{fit} placeholders, text the refusal must contain)."""
    cases = []
    for override, expected in CONFIG_CASES + TRAIN_AND_LAUNCH_CASES:
        words = override.split()
        cases.append((f"train {override}", ["train", *TRAIN_RUN, *words], expected))
        if (override, expected) in CONFIG_CASES:
            cases.append((f"plan {override}", ["plan", TINY, *words], expected))
        cases.append((f"launch {override}", ["launch", TINY, "launcher=local", *words], expected))
    for line, expected in COMMAND_CASES:
        cases.append((line, _split(line), expected))
    return cases


def _split(line: str) -> list[str]:
    import shlex

    return shlex.split(line)


CASES = _cases()


@pytest.fixture(scope="module")
def case_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad-inputs")
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (np.arange(20_000) % 500).astype(np.uint32).tofile(root / "tok.npy")
    return root


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_the_table_tries_at_least_300_bad_inputs() -> None:
    assert len(CASES) >= 300
    assert len({c[0] for c in CASES}) == len(CASES), "case ids must be unique"
    commands = {argv[0] for _, argv, _ in CASES}
    expected = ["train", "plan", "launch", "fit", "design", "decide", "predict", "suggest"]
    assert commands >= {*expected, "prepare", "bench", "status"}


@pytest.mark.parametrize(("argv", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_any_work(
    argv: list[str],
    expected: str,
    case_root: Path,
    saved_fit: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(case_root)  # ./conf and ./launchers overlay; runs/ and data/ land here
    monkeypatch.delenv("SLURM_CONF", raising=False)  # no cluster: launcher=ci is refused
    monkeypatch.delenv("QAT_SWEEP_CONFIG_DIR", raising=False)
    args = [a.replace("{tmp}", str(case_root)).replace("{fit}", str(saved_fit)) for a in argv]
    if args[0] in ("train", "launch", "status"):
        args.append(f"paths.runs={case_root}/runs") if not any(
            a.startswith("paths.runs=") for a in args
        ) else None
    before = _listing(case_root)
    capsys.readouterr()
    try:
        code = main(args)
    finally:
        os.environ.pop(CONFIG_DIR_ENV, None)  # --config-dir sets it for the process
    out = capsys.readouterr()
    output = out.out + out.err
    assert code == 2, output
    assert "Traceback" not in output
    assert expected.replace("{tmp}", str(case_root)) in output, output
    assert _listing(case_root) == before, "a refused command must write nothing"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_answers_help_and_version(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main([command, "--help"])
    except SystemExit as e:  # train's help is its Hydra app's, which exits
        code = e.code
    help_text = capsys.readouterr().out
    assert code == 0
    assert f"qat-sweep {command}" in help_text or "powered by Hydra" in help_text
    assert main([command, "--version"]) == 0
    assert capsys.readouterr().out == f"qat-sweep {__version__}\n"


@pytest.mark.parametrize(
    ("key", "suggested"),
    [
        ("train.lr", "'optim.lr'"),
        ("optim.lrr", "'optim.lr'"),
        ("optim.warmup", "'optim.warmup_steps'"),
        ("train.seqlen", "'train.seq_len'"),
        ("eval.every", "'eval.every_steps'"),
        ("logger.wandb.mod", "'logger.wandb.mode'"),
        ("quant.group", "'quant.group_size'"),
        ("seeds", "'seed'"),
    ],
)
def test_a_misspelt_key_gets_the_key_it_meant(key: str, suggested: str) -> None:
    assert did_you_mean(key).startswith(f" (did you mean {suggested}")
    assert did_you_mean("completely.unrelated") == ""


def test_ctrl_c_ends_a_command_with_a_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))  # Ctrl-C, mid-way
    timer.start()
    try:
        code = main(["design", "sweep=paper", "--sims", "1000000"])  # minutes of simulation
    finally:
        timer.cancel()
    assert code == 130
    err = capsys.readouterr().err
    assert "qat-sweep design: interrupted" in err and "Traceback" not in err
