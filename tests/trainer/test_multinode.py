"""Multi-node through torchrun's c10d rendezvous: two agents ("nodes") of one rank each on
localhost form one world of 2 and train together (nothing home-made: torchrun does the
rendezvous, the trainer only reads the env it sets)."""

import os
import socket
import subprocess
import sys
import time

import pytest

from vlscale.records import read_run

pytestmark = pytest.mark.dist


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_rendezvous_and_train(tmp_path):
    port = _free_port()

    def agent(node_rank: int) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
               "--nproc-per-node", "1", "--node-rank", str(node_rank), "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vlscale-test",
               "-m", "trainer.train", "--model", "tiny-clip", "--steps", "3",
               "--global-batch", "8", "--out", str(tmp_path / "run")]  # fmt: skip
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        with open(tmp_path / f"node{node_rank}.log", "wb") as log:  # a full pipe cannot block
            return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)

    nodes = [agent(0), agent(1)]
    try:
        # if one node fails, the other may wait in a collective or a new rendezvous round:
        # never wait on one node alone
        deadline = time.monotonic() + 180
        while any(n.poll() is None for n in nodes) and time.monotonic() < deadline:
            if any(n.returncode not in (None, 0) for n in nodes):
                break
            time.sleep(0.2)
    finally:
        for n in nodes:
            if n.poll() is None:
                n.kill()
    for n in nodes:
        n.wait()
    outputs = [(tmp_path / f"node{i}.log").read_text() for i in range(2)]
    for node, out in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, out[-3000:]
    run = read_run(tmp_path / "run" / "run.jsonl")
    assert run.header.world_size == 2
    assert [s.step for s in run.steps] == [1, 2, 3]
