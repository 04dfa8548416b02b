"""``bench label`` runs every side's model on the one device ``--device`` chose: the
job's model actor is granted a GPU exactly when that device is CUDA, and the naive
loops are told the same device. Fast tier: command lines only, nothing started."""

import math
from pathlib import Path

import pytest
import torch

from avfusion.device import choose_device
from jobs.bench import label as bench
from jobs.label import build_parser


@pytest.mark.parametrize("device", [torch.device("cpu"), torch.device("cuda", 0)])
def test_every_side_s_model_is_on_the_one_device(device):
    cmds = bench.side_commands(Path("/clips"), Path("/out"), Path("/run/last.pt"), 2, device)
    assert set(cmds) == {"job", "decode", "naive", "naive1"}

    job = cmds["job"]
    assert job[1:3] == ["-m", "jobs.label"]
    gpus = build_parser().parse_args(job[3:]).gpus_per_actor
    # the actor's device follows its grant: choose_device("auto", gpus_assigned=...)
    assert (math.ceil(gpus) >= 1) == (device.type == "cuda")
    if device.type == "cpu":
        assert choose_device("auto", gpus_assigned=math.ceil(gpus)) == device

    for side, threads in (("naive", 0), ("naive1", 1)):
        cmd = cmds[side]
        assert cmd[1:3] == ["-m", "jobs.bench.label"] and cmd[3] == "--naive-worker"
        args = bench.naive_args(cmd[3:])  # what the child's __main__ passes to naive_worker
        assert args["device"] == str(device) and args["threads"] == threads
        if device.type == "cpu":  # no GPU here to resolve "cuda:0" against
            assert choose_device(args["device"]) == device
    assert "--decode-only-worker" in cmds["decode"]  # decode only: no model to place


def test_a_device_that_cannot_be_had_is_one_line(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is here")
    assert bench.main(["--device", "cuda", "--small", "1", "--large", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("avfusion bench label: --device:")
