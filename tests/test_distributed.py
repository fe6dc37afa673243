"""Dictionary learning under torch.distributed: 2 gloo processes, each streaming its shard of
the data through a DistributedSampler, learn the dictionary one process learns on the
concatenated batches."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from torch_structlearn import DictionaryLearner

from .test_coding import _planted
from .test_ddp import _free_port, gloo

B = 64  # per-rank batch


def _learner():
    # float32: bfloat16 products of a 64-row and a 128-row batch round differently
    return DictionaryLearner(16, lam1=0.1, epochs=3, seed=0, tol=0.0, max_iter=60, verbose=False,
                             precision="float32")


def _worker(rank, world, port, out):
    with gloo(rank, world, port):
        X, _ = _planted(n=1024, d=32, k=16, width=6)
        ds = TensorDataset(X)
        sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=False)
        dl = _learner().fit(DataLoader(ds, batch_size=B, sampler=sampler))
        assert dl._distributed
        D = dl.dictionary_.contiguous()
        others = [torch.empty_like(D) for _ in range(world)]
        dist.all_gather(others, D)
        if rank == 0:
            torch.save({"D": D, "all": others, "objective": dl.objective_}, out)


def test_two_gloo_ranks_learn_the_single_process_dictionary(tmp_path):
    out = str(tmp_path / "dist.pt")
    mp.spawn(_worker, args=(2, _free_port(), out), nprocs=2, join=True)
    res = torch.load(out, weights_only=True)
    assert torch.equal(res["all"][0], res["all"][1])  # one dictionary on every rank
    # the single process sees, at each step, rank 0's batch followed by rank 1's
    X, _ = _planted(n=1024, d=32, k=16, width=6)
    shards = [X[r::2] for r in range(2)]
    batches = [torch.cat([s[i : i + B] for s in shards]) for i in range(0, len(shards[0]), B)]
    single = _learner().fit(batches)
    torch.testing.assert_close(res["D"], single.dictionary_, atol=1e-4, rtol=1e-3)
    for a, b in zip(res["objective"], single.objective_, strict=True):
        assert abs(a - b) <= 1e-4 * abs(b)


def test_torchrun_recipe_gives_every_rank_the_same_stack(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from torch_structlearn import load

    from .test_ddp import _free_port as port

    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(port()), str(root / "recipes" / "distributed_learn.py"),
           "--dataset", "digits", "--width", "32", "--max-depth", "2", "--epochs", "2",
           "--out", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (load(tmp_path / f"stack-rank{r}.safetensors") for r in range(2))
    assert a.depth == b.depth >= 1
    for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y)
