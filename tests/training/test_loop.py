"""The training loop's shared parts: the CSV log of a resumed run, and the check that stops a diverged run."""

import math

import pytest
import torch

from latentlab.errors import LatentlabError
from latentlab.training.loop import FiniteCheck, Progress, read_log


def log_steps(out, first_step, last_step, loss=1.0):
    progress = Progress(out, steps=last_step, minutes=None, batch_size=1, log_every=1, first_step=first_step)
    for step in range(first_step, last_step):
        progress.log(step, torch.tensor(loss))
    progress.close()


def test_a_resumed_log_drops_the_rows_a_killed_run_wrote_after_its_checkpoint(tmp_path):
    """Killed after step 6 with its checkpoint at 4: the resumed run logs 5 and 6 again, once each."""
    log_steps(tmp_path, 0, 6)
    log_steps(tmp_path, 4, 9, loss=2.0)
    rows = read_log(tmp_path / "log.csv")
    assert [row["step"] for row in rows] == list(range(1, 10))
    assert [row["loss"] for row in rows] == [1.0] * 4 + [2.0] * 5
    assert (tmp_path / "log.csv").read_text().count("step,") == 1


def test_a_row_cut_by_a_kill_goes_too(tmp_path):
    log_steps(tmp_path, 0, 3)
    with open(tmp_path / "log.csv", "a", newline="") as f:
        f.write("4,0.5")  # killed mid-row
    log_steps(tmp_path, 3, 5)
    assert [row["step"] for row in read_log(tmp_path / "log.csv")] == [1, 2, 3, 4, 5]


def test_the_finite_check_names_the_first_step_whose_loss_was_not_finite(tmp_path):
    weight = torch.nn.Parameter(torch.ones(3))
    check = FiniteCheck([weight], torch.device("cpu"), lr=0.5, checkpoint=tmp_path / "checkpoint.safetensors",
                        every=10)
    for step, loss in enumerate([1.0, 2.0, math.inf, math.nan, 1.0], start=1):
        check.record(step, torch.tensor(loss))  # no check before step 10
    with pytest.raises(LatentlabError, match=r"loss became NaN or infinite at step 3.*lr 0.5"):
        check.check(5)


def test_the_finite_check_sees_weights_that_are_not_finite(tmp_path):
    weight = torch.nn.Parameter(torch.ones(3))
    check = FiniteCheck([weight], torch.device("cpu"), lr=1.0, checkpoint=tmp_path / "c", every=2)
    check.record(1, torch.tensor(1.0))
    check.check(1)  # all finite: nothing happens
    with torch.no_grad():
        weight[1] = math.inf
    with pytest.raises(LatentlabError, match=r"weights became NaN or infinite by step 2"):
        check.record(2, torch.tensor(1.0))  # every 2nd step checks


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_recording_a_loss_does_not_wait_for_the_gpu(tmp_path):
    """Between checks the GPU runs ahead: recording a step's loss makes no device sync (CUDA's sync debug mode
    raises on one); the check itself syncs once and sees the NaN."""
    weight = torch.nn.Parameter(torch.ones(3, device="cuda"))
    check = FiniteCheck([weight], torch.device("cuda"), lr=1.0, checkpoint=tmp_path / "c", every=50)
    losses = torch.tensor([1.0, math.nan, 2.0], device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            check.record(step, losses[step - 1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(LatentlabError, match="at step 2"):
        check.check(3)
