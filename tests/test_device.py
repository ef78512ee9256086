"""Device choice: the GPU a job was given, else the one with the most free memory; torch-free GPU count."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from slidesnake import device as dev
from slidesnake.device import DeviceUnavailableError, pick_cuda_index, select_device, visible_gpu_count

GIB = 1 << 30


@pytest.fixture
def fake_cuda(monkeypatch):
    """Four fake GPUs with the given free memory; records set_device calls."""
    free = {0: 2 * GIB, 1: 30 * GIB, 2: 7 * GIB, 3: 30 * GIB}
    current = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: len(free))
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=None: (free[i], 80 * GIB))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: current.append(i))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return free, current


def test_most_free_memory_wins_lowest_index_on_ties(fake_cuda):
    free, current = fake_cuda
    assert pick_cuda_index() == 1  # 1 and 3 tie at 30 GiB: the lower index
    assert select_device("auto") == torch.device("cuda", 1)
    assert select_device("cuda") == torch.device("cuda", 1)
    assert current == [1, 1]
    free[2] = 60 * GIB
    assert select_device("cuda") == torch.device("cuda", 2)


def test_assigned_gpus_are_used_as_given(fake_cuda, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    assert pick_cuda_index() == 0  # the first GPU the scheduler gave this job, whatever its free memory
    assert select_device("auto") == torch.device("cuda", 0)


def test_explicit_index_is_kept_and_checked(fake_cuda):
    assert select_device("cuda:2") == torch.device("cuda", 2)
    with pytest.raises(DeviceUnavailableError, match="only 4 CUDA device"):
        select_device("cuda:7")


def test_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
        select_device("cuda")


def test_visible_gpu_count(tmp_path):
    proc = tmp_path / "gpus"
    assert visible_gpu_count({}, proc) == 0
    proc.mkdir()
    for bus in ("0000:01:00.0", "0000:41:00.0"):
        (proc / bus).mkdir()
    assert visible_gpu_count({}, proc) == 2
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": "0,2,3"}, proc) == 3
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": ""}, proc) == 0
    assert visible_gpu_count({"CUDA_VISIBLE_DEVICES": "-1"}, proc) == 0


def test_gpu_count_does_not_import_torch():
    code = "import sys; from slidesnake.device import visible_gpu_count; visible_gpu_count(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert dev.NVIDIA_PROC.startswith("/proc/")
