"""Two real processes (one gloo group on the CPU): each sees a disjoint part of every training epoch, together
all of it, reshuffled per epoch; evaluation batches count each image once. tl's own loaders and accelerator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = '''
import json, sys
import torch
from torch.utils.data import Dataset
from accelerate.utils import gather_object
from tl.config import DataConfig, RunConfig, TrainConfig
from tl.data.datasets import DatasetBundle
from tl.training import setup

class Indices(Dataset):
    """Item i is i: what each process drew is then plain to see."""
    def __init__(self, n): self.n = n
    def __len__(self): return self.n
    def __getitem__(self, i): return torch.tensor(i)

cfg = TrainConfig(data=DataConfig(dataset="synthetic", batch_size=4, num_workers=0), run=RunConfig(out=sys.argv[1], seed=3))
accelerator = setup.make_accelerator(cfg)
bundle = DatasetBundle(Indices(48), Indices(13), None, ["a", "b"], "test")
train, val = accelerator.prepare(*setup.loaders(bundle, cfg, accelerator))
record = {"rank": accelerator.process_index, "epochs": []}
for epoch in range(2):
    train.set_epoch(epoch)
    record["epochs"].append([int(i) for batch in train for i in batch])
record["val"] = [int(i) for batch in val for i in accelerator.gather_for_metrics(batch)]
records = gather_object([record])
if accelerator.is_main_process:
    with open(sys.argv[1] + "/shards.json", "w") as handle:
        json.dump(records, handle)
accelerator.end_training()  # tears the process group down; without it gloo aborts at interpreter exit
'''


@pytest.mark.slow
def test_two_processes_see_disjoint_shards_covering_each_epoch(tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(SCRIPT)
    exe = Path(sys.executable).with_name("accelerate")
    accelerate = str(exe) if exe.exists() else (shutil.which("accelerate") or "accelerate")
    command = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", str(script), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    records = sorted(json.loads((tmp_path / "shards.json").read_text()), key=lambda r: r["rank"])
    assert [r["rank"] for r in records] == [0, 1]
    for epoch in range(2):
        first, second = (set(r["epochs"][epoch]) for r in records)
        assert len(records[0]["epochs"][epoch]) == len(first) == 24 and len(second) == 24  # no repeats within a process
        assert not first & second and first | second == set(range(48))  # disjoint, and the whole set
    assert records[0]["epochs"][0] != records[0]["epochs"][1]  # reshuffled per epoch
    assert sorted(records[0]["val"]) == list(range(13))  # 13 does not split evenly: padding is dropped, each counted once
