"""Two CPU processes with torch.distributed (gloo) each write a rank-named trace."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("torch")

from support.capture import read_trace

WORKER = textwrap.dedent(
    """
    import sys
    import torch
    import torch.distributed as dist
    import ckprof

    out_dir = sys.argv[1]
    dist.init_process_group("gloo")
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Sequential(
        torch.nn.Linear(16, 16), torch.nn.GELU(), torch.nn.Linear(16, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 16)
    with ckprof.capture(out_dir, wait=0, warmup=1, active=1) as cap:
        for _ in range(2):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            cap.step()
    dist.barrier()
    dist.destroy_process_group()
    print(cap.trace_paths[0])
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_gloo_ranks_write_rank_named_traces(tmp_path: Path) -> None:
    """GIVEN two processes in one gloo process group, both capturing into one folder
    WHEN each profiles one active step
    THEN two files exist, named ..._rank0_0 and ..._rank1_0, whose metadata carries
    their rank and world_size 2."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out_dir = tmp_path / "traces"
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                   WORLD_SIZE="2", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, str(script), str(out_dir)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [p.communicate(timeout=120) for p in procs]
    for proc, (_out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-2000:]
    paths = [Path(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert sorted(p.name.split("_", 2)[2] for p in paths) == [
        "rank0_0.pt.trace.json.gz", "rank1_0.pt.trace.json.gz"]
    assert sorted(os.listdir(out_dir)) == sorted(p.name for p in paths)
    for rank, path in enumerate(paths):
        meta = read_trace(path)["ckprof"]
        assert (meta["rank"], meta["world_size"]) == (rank, 2)
