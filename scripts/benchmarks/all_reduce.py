"""One process of a one-process group, as ``accelerate launch`` would start it: an all-reduce through accelerate.

    python scripts/benchmarks/all_reduce.py NUMEL [--cpu]     (prints one JSON line)

``bench.py gpu`` runs it in a child process with RANK/WORLD_SIZE/MASTER_* set, so accelerate initialises a real
process group (NCCL on a GPU, gloo on the CPU) instead of the no-op of a plain single process, whose
``reduce`` returns its input without calling any collective. The child also keeps that group out of the bench's
own process. The figure is the cost of one collective's call path on this machine, not of a network."""

import json
import statistics
import sys
import time


def main(numel: int, cpu: bool) -> dict:
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=cpu)
    tensor = torch.ones(numel, device=accelerator.device)
    sync = torch.cuda.synchronize if accelerator.device.type == "cuda" else (lambda: None)
    times = []
    for _ in range(6):
        sync()
        start = time.perf_counter()
        total = accelerator.reduce(tensor, reduction="sum")
        sync()
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])  # the first pays the group's set-up
    backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else "none"
    return {"seconds": seconds, "gb_per_s": numel * 4 / seconds / 1e9, "numel": numel, "processes": accelerator.num_processes,
            "backend": backend, "distributed_type": str(accelerator.distributed_type).split(".")[-1],
            "correct": bool(total[0].item() == accelerator.num_processes)}


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]), "--cpu" in sys.argv[2:])))
