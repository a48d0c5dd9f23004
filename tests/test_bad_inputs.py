"""The bad-input table: every entry point, each mistake one `error:` line, and nothing lost.

Each row is a command line a user could type and the fragments its one `error:` line must
contain (the bad value, and the valid choices or the rule). Every row must exit with status 2,
print no traceback, leave `{fresh}` (a workdir that does not exist yet) uncreated and leave
`{run}` (a finished training run) byte for byte as it was. All rows run in two processes
(tests/cli_harness.py), the training entry points in one, the others in a second.

Placeholders: `{raises}` a config file whose `get_config` raises, `{file}` a plain file, `{fresh}`
a path that must never be made, `{absent}` a path that does not exist, `{run}` the workdir of a
finished 2-step `configs/default.py` run.
"""

import json
import os
import subprocess
import sys

import pytest

from cnnjax import cli
from cnnjax.train import train_and_evaluate
from tests.cli_harness import error_line
from tests.conftest import ROOT, file_digests

RAISES = "import math\n\n\ndef get_config(arg=None):\n    return math.log(0)\n"

FRESH = "--workdir={fresh}"
MAIN = ["--config=configs/default.py", FRESH]
RUN = ["--config=configs/default.py", "--workdir={run}", "--config.num_steps=2"]
BN = ["--config=configs/experiments/bn_dropout.py", FRESH]
BLUR = ["--config=configs/experiments/blur_pool.py", FRESH]
COMPRESS = ["--model=lenet5", "--checkpoint={run}", "--out={fresh}"]


def config_file_rows(entry, flags_hint=""):
    return [
        (entry, ["--bogus=1"], ("unknown flag --bogus", flags_hint)),
        (entry, ["--config=configs/nope.py", FRESH], ("config file 'configs/nope.py' not found",)),
        (entry, ["--config={raises}", FRESH], ("raised ValueError at line 5: math domain error",)),
    ]


TABLE = [
    *config_file_rows("cnnjax.main", "(flags: --config, --workdir)"),
    ("cnnjax.main", ["--config=configs/default.py"], ("missing required flag --workdir",)),
    ("cnnjax.main", [*MAIN, "extra"], ("unexpected arguments ['extra']", "--config.key=value")),
    ("cnnjax.main", ["--config=configs/lenet5_mnist.py:bogus", FRESH],
     ("unknown variant 'bogus'", "valid choices")),
    ("cnnjax.main", [*MAIN, "--config.lr=0.1"], ("unknown config key 'lr'", "optimizer.lr")),
    ("cnnjax.main", [*MAIN, "--config.optimizer.learning_rate=1"],
     ("'optimizer.learning_rate'", "did you mean 'optimizer.lr'")),
    ("cnnjax.main", [*MAIN, "--config.optimizer.lr=abc"],
     ("could not convert string to float: 'abc'",)),
    ("cnnjax.main", [*MAIN, "--config.model=resnet21"],
     ("unknown model 'resnet21'", "did you mean 'resnet20'", "valid choices: alexnet")),
    ("cnnjax.main", [*MAIN, "--config.dataset=imagenet"],
     ("unknown dataset 'imagenet'", "valid choices: cifar10, cifar10_jpeg")),
    ("cnnjax.main", [*MAIN, "--config.model_kwargs.width=4"],
     ("model_kwargs.width", "add it to config.model_kwargs in the config file")),
    ("cnnjax.main", [*MAIN, "--config.dataset=cifar10_jpeg", "--config.data_dir={absent}"],
     ("{absent}", "TFDS_DATA_DIR")),
    ("cnnjax.main", [*MAIN, "--config.optimizer.name=lion"],
     ("unknown optimizer.name 'lion'", "valid choices: adam, adamw, sgd")),
    ("cnnjax.main", [*MAIN, "--config.schedule.name=cosinex"],
     ("'cosinex'", "did you mean 'cosine'", "valid choices: constant, cosine, piecewise")),
    ("cnnjax.main", [*MAIN, "--config.loss=hinge"],
     ("unknown loss 'hinge'", "valid choices: capsule, cross_entropy")),
    ("cnnjax.main", [*MAIN, "--config.data.fit=squash"],
     ("unknown data.fit 'squash'", "valid choices: pad, resize")),
    ("cnnjax.main", [*MAIN, "--config.augment.pad_mode=wrapx"],
     ("'wrapx'", "valid choices: circular, constant, reflect")),
    ("cnnjax.main", [*MAIN, "--config.data.train_split=bogus"],
     ("'bogus'", "valid choices: test, train")),
    ("cnnjax.main", [*MAIN, "--config.label_smoothing=5"],
     ("label_smoothing must be in [0, 1), got 5.0",)),
    ("cnnjax.main", [*MAIN, "--config.num_steps=-5"],
     ("num_steps must be an integer >= 0 (0 = use num_epochs), got -5",)),
    ("cnnjax.main", [*MAIN, "--config.optimizer.lr=inf"],
     ("optimizer.lr must be a finite number > 0, got inf",)),
    ("cnnjax.main", [*MAIN, "--config.seed=-1"],
     ("seed must be an integer in [0, 2**32), got -1",)),
    ("cnnjax.main", [*MAIN, "--config.share.bits=17"],
     ("share.bits must be an integer in [0, 16] (0 = off), got 17",)),
    ("cnnjax.main", [*MAIN, "--config.share.init=kmeans++"],
     ("unknown share.init 'kmeans++'", "density, linear, random")),
    ("cnnjax.main", [*MAIN, "--config.prune.method=random"],
     ("unknown prune.method 'random'", "magnitude, none")),
    ("cnnjax.main", [*MAIN, "--config.prune.method=magnitude", "--config.prune.sparsity=1.0"],
     ("prune.sparsity must be in [0, 1), got 1.0",)),
    ("cnnjax.main", [*MAIN, "--config.prune.method=magnitude", "--config.prune.sparsity=0.5",
                     "--config.prune.schedule=gradual", "--config.prune.end_step=100000"],
     ("last pruning event", "at update 100000", "updates 0..")),
    ("cnnjax.main", [*MAIN, "--config.quant.qat_bits=4"],
     ("quant.qat_bits must be 0 (off) or 8, got 4",)),
    ("cnnjax.main", [*MAIN, "--config.model=resnet20", "--config.quant.qat_bits=8"],
     ("quant.fold_batch_norm folds trained BatchNorm statistics", "init_from.workdir")),
    ("cnnjax.main", [*MAIN, "--config.distill.teacher={absent}"],
     ("distill.teacher:", "config.json does not exist")),
    ("cnnjax.main", [*MAIN, "--config.distill.teacher={run}", "--config.distill.temperature=-1"],
     ("distill.temperature must be a finite number > 0, got -1",)),
    ("cnnjax.main", [*MAIN, "--config.init_from.workdir={absent}"],
     ("init_from:", "does not exist", "a run folder?")),
    ("cnnjax.main", [*MAIN, "--config.init_from.workdir={run}", "--config.model=lenet5_1998"],
     ("does not fit this model", "c3/kernel", "init_from.reinit")),
    ("cnnjax.main", [*MAIN, "--config.param_groups.frozen=('c9',)"],
     ("unknown frozen parameter pattern 'c9'", "c1/kernel")),
    ("cnnjax.main", [*MAIN, "--config.data.num_workers=-1"],
     ("data.num_workers must be an integer >= 0", "got -1")),
    ("cnnjax.main", [*MAIN, "--config.data.prefetch=-1"],
     ("data.prefetch must be an integer >= 0, got -1",)),
    ("cnnjax.main", [*MAIN, "--config.input_shape=(0,0,1)"],
     ("input shape (0, 0, 1) must be positive integers, e.g. (32, 32, 1)",)),
    ("cnnjax.main", [*MAIN, "--config.input_shape=(32,32)"],
     ("input shape (32, 32) has 2 dimensions; model 'lenet5' takes 3",)),
    ("cnnjax.main", [*MAIN, "--config.batch_size=5000"],
     ("batch_size 5000 exceeds the 1438 training",)),
    ("cnnjax.main", ["--config=configs/default.py", "--workdir={file}"],
     ("{file}", "is a file, not a folder")),
    ("cnnjax.main", ["--config=configs/default.py", "--workdir={file}/run"],
     ("cannot create workdir '{file}/run'",)),
    ("cnnjax.main", [*RUN, "--config.optimizer.lr=0.5"],
     ("refusing to resume it (optimizer.lr: 0.002 -> 0.5)", "new --workdir")),
    ("cnnjax.main", [*RUN, "--config.batch_size=5000"], ("batch_size 5000 exceeds",)),
    ("cnnjax.main", [*RUN, "--config.model=resnet21"], ("unknown model 'resnet21'",)),
    ("cnnjax.summary", ["--bogus"], ("unknown flag --bogus",)),
    ("cnnjax.summary", [], ("missing required flag --model",)),
    ("cnnjax.summary", ["--model=resnet21"],
     ("unknown model 'resnet21'", "did you mean 'resnet20'", "valid choices")),
    ("cnnjax.summary", ["--model=alexnet", "--input=32,32,3"], ("too small for alexnet",)),
    ("cnnjax.summary", ["--model=lenet5", "--batch=0"],
     ("--batch=0: 0 is not a positive integer",)),
    ("cnnjax.summary", ["--model=lenet5", "--max_rows=0"], ("--max_rows=0",)),
    ("cnnjax.summary", ["--model=resnet20", "--input=32,32"],
     ("input shape (32, 32) has 2 dimensions; model 'resnet20' takes 3",)),
    ("cnnjax.summary", ["--model=lenet5", "--input=a,b"], ("--input='a,b' is not a shape",)),
    ("cnnjax.summary", ["--model=lenet5", "--input=2,2,1"], ("(2, 2, 1) is too small for lenet5",)),
    ("cnnjax.summary", ["--model=lenet5", "--device=h100x"],
     ("unknown device 'h100x'", "did you mean 'h100'", "valid choices")),
    ("cnnjax.summary", ["--model=lenet5", "--precision=fp8"],
     ("'fp8'", "valid choices: bf16, float32, fp16, tf32")),
    ("cnnjax.summary", ["--model=lenet5", "--optimizer=lion"],
     ("'lion'", "valid choices: adam, adamw, sgd")),
    ("cnnjax.bench", ["--model=lenet5", "--stepz=2"], ("--stepz", "did you mean --steps?")),
    ("cnnjax.bench", [], ("give --model or --variables",)),
    ("cnnjax.bench", ["--model=lenet5", "--model_fields=hidden=3"],
     ("--model_fields='hidden=3' is not a JSON object", '{{"hidden": [120, 40]}}')),
    ("cnnjax.bench", ["--model=lenet5", '--model_fields={{"widthz": 3}}'],
     ("widthz",)),
    ("cnnjax.bench", ["--variables={absent}/m.cnnz"], ("{absent}/m.cnnz",)),
    ("cnnjax.bench", ["--variables={file}", '--model_fields={{"hidden": [3]}}'],
     ("--model_fields and --variables exclude each other",)),
    ("cnnjax.bench", ["--model=resnet21"], ("unknown model 'resnet21'", "valid choices")),
    ("cnnjax.bench", ["--model=lenet5", "--impl=cuda"], ("--impl=cuda", "auto|xla|onednn")),
    ("cnnjax.bench", ["--model=lenet5", "--compare=tf"], ("--compare=tf", "torch")),
    ("cnnjax.bench", ["--model=lenet5", "--batch_size=0"], ("--batch_size=0 must be at least 1",)),
    ("cnnjax.bench", ["--model=lenet5", "--windows=0"], ("--windows=0 must be at least 1",)),
    ("cnnjax.bench", ["--model=lenet5", "--steps=0"], ("--steps=0 must be at least 1",)),
    ("cnnjax.bench", ["--model=lenet5", "--threads=0"], ("--threads=0",)),
    ("cnnjax.bench", ["--model=lenet5", "--num_classes=0"], ("--num_classes=0",)),
    ("cnnjax.bench", ["--model=lenet5", "--input=32,32"],
     ("input shape (32, 32) has 2 dimensions; model 'lenet5' takes 3",)),
    ("cnnjax.compress", [*COMPRESS, "--method=prune_filters"],
     ("does not know the family LeNet5", "valid: LeNetCaffe, LeNetMLP, VGG")),
    ("cnnjax.compress", [*COMPRESS, "--method=none", "--compact"],
     ("does not know the family LeNet5",)),
    ("cnnjax.compress", [*COMPRESS, "--method=zip"],
     ("unknown --method 'zip'", "none, prune, prune_filters, prune_share, share")),
    ("cnnjax.compress", [*COMPRESS, "--method=prune", "--sparsity=1.0"],
     ("--sparsity must be in [0, 1), got 1.0",)),
    ("cnnjax.compress", [*COMPRESS, "--method=share", "--bits=0"],
     ("--bits must be an integer in [1, 16], got 0",)),
    ("cnnjax.compress", [*COMPRESS, "--method=none", "--model=lenet300_100"],
     ("is a checkpoint of 'lenet5', not of --model='lenet300_100'",)),
    ("cnnjax.compress", [*COMPRESS, "--method=none", "--model=lenet6"],
     ("unknown model 'lenet6'", "lenet5")),
    ("cnnjax.compress", ["--model=lenet5", "--checkpoint={absent}", "--method=none",
                         "--out={fresh}"], ("--checkpoint:", "config.json does not exist")),
    ("cnnjax.compress", [*COMPRESS, "--method=none", "--out={absent}/x.cnnz"],
     ("cannot write --out={absent}/x.cnnz", "is not a folder")),
    ("cnnjax.compress", ["--model=lenet5", "--checkpoint={run}", "--out={fresh}"],
     ("missing required flag --method",)),
    ("cnnjax.plot", ["--bogus"], ("unknown flag --bogus",)),
    ("cnnjax.plot", [], ("missing argument WORKDIR",)),
    ("cnnjax.plot", ["{absent}"], ("no metrics.jsonl in {absent}",)),
    ("cnnjax.plot", ["{file}"], ("no metrics.jsonl in {file}",)),
    ("cnnjax.plot", ["{run}", "--out={absent}/curves.png"],
     ("--out={absent}/curves.png", "{absent} is not a folder")),
    *config_file_rows("experiments.bn_dropout"),
    ("experiments.bn_dropout", ["--config=configs/experiments/bn_dropout.py:big", FRESH],
     ("unknown variant 'big'", "valid choices")),
    ("experiments.bn_dropout", [*BN, "--config.arms=bogus"],
     ("unknown arm 'bogus'", "'none' or '<position>[_<kind>]_<rate>'")),
    ("experiments.bn_dropout", [*BN, "--config.seeds=(-1,)"],
     ("seed must be an integer in [0, 2**32), got -1",)),
    ("experiments.bn_dropout", [*BN, "--config.seeds=(0,0)"],
     ("seeds must be unique and at least one, got [0, 0]",)),
    ("experiments.bn_dropout", [*BN, "--config.measure_images=0"],
     ("measure_images must be an integer >= 1, got 0",)),
    ("experiments.bn_dropout", [*BN, "--config.toy_steps=0"],
     ("toy_steps must be an integer >= 1, got 0",)),
    ("experiments.bn_dropout", [*BN, "--config.toy_rates=(1.5,)"],
     ("toy_rates must be rates in (0, 1), got (1.5,)",)),
    ("experiments.bn_dropout", [*BN, "--config.train.optimizer.lr=-1"],
     ("optimizer.lr must be a finite number > 0, got -1.0",)),
    ("experiments.bn_dropout", ["--config=configs/experiments/bn_dropout.py", "--workdir={file}"],
     ("workdir '{file}' is a file, not a folder",)),
    *config_file_rows("experiments.blur_pool"),
    ("experiments.blur_pool", ["--config=configs/experiments/blur_pool.py:cpuu", FRESH],
     ("'cpuu'", "did you mean 'cpu'?")),
    ("experiments.blur_pool", [*BLUR, "--config.arms=resnet20-blur9"],
     ("unknown arm 'resnet20-blur9'", "M in 1..7")),
    ("experiments.blur_pool", [*BLUR, "--config.consistency_images=0"],
     ("consistency_images must be an integer >= 1, got 0",)),
    ("experiments.blur_pool", [*BLUR, "--config.train.batch_size=0"],
     ("batch_size must be >= 1, got 0",)),
    ("experiments/smoke_zoo.py", ["--bogus"], ("unknown flag --bogus",)),
    ("experiments/smoke_zoo.py", ["--models=resnet21", FRESH],
     ("unknown smoke model 'resnet21'", "did you mean 'resnet20'?")),
    ("benchmarks/bench_table.py", ["--bogus"], ("unknown flag --bogus",)),
    ("benchmarks/bench_table.py", ["--models=resnet21"], ("did you mean 'resnet20'?",)),
    ("benchmarks/conv_ops.py", ["--bogus"], ("unknown flag --bogus",)),
    ("benchmarks/conv_ops.py", ["--cases=3x3"], ("unknown case '3x3'",)),
    ("benchmarks/memory_efficient_densenet.py", ["--bogus"], ("unknown flag --bogus",)),
    ("benchmarks/memory_efficient_densenet.py", ["--batch=0"], ("0 is not a positive integer",)),
    ("benchmarks/summary_zoo.py", ["--bogus"], ("unknown flag --bogus",)),
    ("benchmarks/summary_zoo.py", ["--batch=x"], ("--batch=x: invalid literal for int()",)),
    ("benchmarks/suite_time.py", ["--bogus"], ("unknown flag --bogus",)),
    ("benchmarks/suite_time.py", ["--suite=fast"],
     ("unknown --suite 'fast' (valid choices: default, slow)",)),
    ("benchmarks/xla_flops_check.py", ["--bogus"], ("unknown flag --bogus",)),
    ("benchmarks/xla_flops_check.py", ["--compiled=maybe"], ("--compiled=maybe",)),
]  # fmt: skip

# The rows run in two processes side by side, split so that they take about as long.
FIRST_PROCESS = ("cnnjax.main", "experiments.blur_pool", "experiments.bn_dropout",
                 "experiments/smoke_zoo.py")  # fmt: skip


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_inputs")
    paths = {name: folder / name for name in ("raises.py", "file", "fresh", "absent", "run")}
    paths["raises.py"].write_text(RAISES)
    paths["file"].write_text("not a folder")
    config = cli.load_config("configs/default.py")
    config.num_steps, config.progress = 2, False
    train_and_evaluate(config, str(paths["run"]))
    return {name.removesuffix(".py"): str(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def outcomes(places):
    """`(exit status, stderr)` of every row, and the run's files before and after them all."""
    rows = [
        (entry, [arg.format(**places) for arg in argv], [f.format(**places) for f in fragments])
        for entry, argv, fragments in TABLE
    ]
    before = file_digests(places["run"])
    groups = [[r for r in rows if (r[0] in FIRST_PROCESS) == first] for first in (True, False)]
    processes = []
    for group in groups:
        commands = {}
        for entry, argv, _ in group:
            commands.setdefault(entry, []).append(argv)
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "tests.cli_harness", json.dumps(commands)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = {}
    for process in processes:
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        by_entry = json.loads(out.splitlines()[-1])
        for entry in by_entry:
            for index, result in enumerate(by_entry[entry]):
                results[entry, index] = result
    ordered, seen = [], {}
    for entry, argv, fragments in rows:
        index = seen[entry] = seen.get(entry, -1) + 1
        ordered.append((argv, fragments, results[entry, index]))
    return ordered, before, file_digests(places["run"])


def row_id(row) -> str:
    entry, argv, _ = row
    return f"{entry} {' '.join(a for a in argv if not a.startswith('--workdir'))}"


@pytest.mark.parametrize("index", range(len(TABLE)), ids=[row_id(r) for r in TABLE])
def test_each_mistake_is_one_error_line_naming_it(outcomes, index):
    argv, fragments, result = outcomes[0][index]
    assert result["code"] == 2, (argv, result)
    line = error_line(result["stderr"])
    for fragment in fragments:
        assert fragment in line, (argv, fragment, line)


def test_no_mistake_makes_a_workdir_or_changes_a_finished_run(outcomes, places):
    _, before, after = outcomes
    assert not os.path.exists(places["fresh"])
    assert after == before and "config.json" in before and "metrics.jsonl" in before
