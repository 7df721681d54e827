"""ckprof.strategy.policies: which blocks get checkpointed, and applying that to a model without
changing its numerics or keeping it changed."""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ckprof.errors import CkprofError
from ckprof.strategy.policies import (
    DEFAULT_SAVE_OPS,
    Policy,
    builtin_policies,
    parse_policy,
    resolve_policies,
)

# ---- pure: no torch ------------------------------------------------------------------------


def test_chosen_blocks_per_policy():
    """GIVEN each built-in policy WHEN asked which of N blocks it checkpoints THEN none
    picks none, full all, every_2 the even ones, sqrt every ceil(sqrt(N))-th."""
    assert Policy.none().chosen(4) == ()
    assert Policy.full().chosen(4) == (0, 1, 2, 3)
    assert Policy.every_k(2).chosen(5) == (0, 2, 4)
    assert Policy.sqrt().chosen(9) == (0, 3, 6)
    assert Policy.sqrt().chosen(10) == (0, 4, 8)
    assert Policy.selective().chosen(3) == (0, 1, 2)
    assert Policy.custom("last", select=lambda i, n: i == n - 1).chosen(4) == (3,)


@given(st.integers(1, 200), st.integers(1, 50))
def test_every_k_checkpoints_ceil_n_over_k(n, k):
    """GIVEN N blocks and k WHEN every_k chooses THEN ceil(N/k) blocks, k apart, from 0."""
    chosen = Policy.every_k(k).chosen(n)
    assert len(chosen) == math.ceil(n / k)
    assert chosen[0] == 0 and all(b - a == k for a, b in itertools.pairwise(chosen))


@pytest.mark.parametrize(
    ("text", "name", "kind", "every"),
    [("none", "none", "none", 1), ("full", "full", "every", 1), ("every_1", "full", "every", 1),
     ("every3", "every_3", "every", 3), ("every:4", "every_4", "every", 4), ("SQRT", "sqrt", "sqrt", 1),
     ("selective", "selective", "selective", 1)],
)
def test_parse_policy_names(text, name, kind, every):
    """GIVEN a policy name as typed on the command line WHEN parsed THEN the policy."""
    p = parse_policy(text)
    assert (p.name, p.kind, p.every) == (name, kind, every)
    assert parse_policy(p.spec) == p  # the spec travels to worker processes


def test_parse_policy_selective_ops_and_module_function():
    """GIVEN selective with ops and a module:function WHEN parsed THEN op names are
    normalised and the function's Policy is returned."""
    p = parse_policy("selective:aten::mm,aten.addmm,bmm")
    assert p.kind == "selective" and p.save_ops == ("mm", "addmm", "bmm")
    assert parse_policy("ckprof.strategy.policies:Policy.full") == Policy.full()
    assert Policy.selective().save_ops == DEFAULT_SAVE_OPS


@pytest.mark.parametrize("text", ["sometimes", "every_0", "selective:", "nosuchmodule_xyz:fn",
                                  "ckprof.strategy.policies:DEFAULT_SAVE_OPS"])
def test_parse_policy_rejects(text):
    """GIVEN a bad policy name WHEN parsed THEN ValueError."""
    with pytest.raises(ValueError):
        parse_policy(text)


def test_builtin_and_resolve():
    """GIVEN a block count WHEN the default sweep is built THEN sqrt is dropped when it
    equals full or every_2; duplicate names are refused."""
    assert [p.name for p in builtin_policies(4)] == ["none", "full", "every_2", "selective"]
    assert [p.name for p in builtin_policies(16)] == ["none", "full", "every_2", "sqrt", "selective"]
    assert [p.name for p in resolve_policies(["none", Policy.full()])] == ["none", "full"]
    with pytest.raises(ValueError, match="unique"):
        resolve_policies(["full", "every_1"])


# ---- applied to modules (torch) ---------------------------------------------------------------

torch = pytest.importorskip("torch")
nn = torch.nn

from ckprof.strategy.apply import apply_policy, find_blocks  # noqa: E402


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(x))))


class Net(nn.Module):
    def __init__(self, n: int = 4, d: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(d, d)
        self.small = nn.ModuleList([nn.Linear(d, d), nn.Linear(d, d)])
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        x = self.embed(x)
        for b in self.blocks:
            x = b(x)
        return self.head(x).sum()


def make_net(n: int = 4) -> Net:
    torch.manual_seed(0)
    return Net(n)


def grads(model, x) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    model(x).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


class CountOps(torch.utils._python_dispatch.TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket).removeprefix("aten.")] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def x():
    torch.manual_seed(1)
    return torch.randn(8, 16)


def test_find_blocks_largest_modulelist():
    """GIVEN a model with a 2-long and a 4-long ModuleList WHEN blocks are found THEN the
    4 children of the larger, named by path; a named container is honoured."""
    model = make_net()
    found = find_blocks(model)
    assert found.path == "blocks" and found.names == ("blocks.0", "blocks.1", "blocks.2", "blocks.3")
    assert find_blocks(model, "small").names == ("small.0", "small.1")
    with pytest.raises(CkprofError, match="no submodule 'nope'"):
        find_blocks(model, "nope")
    with pytest.raises(CkprofError, match=r"no nn\.ModuleList"):
        find_blocks(nn.Sequential(nn.Linear(2, 2)))


POLICIES = [
    Policy.full(),
    Policy.every_k(2),
    Policy.sqrt(),
    Policy.selective(),
    Policy.custom("custom_sac", select=lambda i, n: i >= n // 2,
                  op_policy=lambda ctx, op, *a, **k: torch.utils.checkpoint.CheckpointPolicy.PREFER_RECOMPUTE),
]


@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: p.name)
def test_policy_keeps_gradients_and_recomputes_chosen_blocks(policy, x):
    """GIVEN a policy WHEN applied THEN gradients equal the uncheckpointed model's, and
    fc1 runs twice (forward + recompute) exactly in the chosen blocks."""
    model = make_net()
    reference = grads(model, x)
    calls: Counter[str] = Counter()
    handles = [blk.fc1.register_forward_hook(lambda m, i, o, name=name: calls.update([name]))
               for name, blk in find_blocks(model).items]
    with apply_policy(model, policy) as found:
        got = grads(model, x)
    for h in handles:
        h.remove()
    assert got.keys() == reference.keys()
    for k in reference:
        torch.testing.assert_close(got[k], reference[k], rtol=1e-6, atol=1e-7)
    chosen = set(policy.chosen(len(found)))
    assert chosen, "every policy here checkpoints something"
    for i, name in enumerate(found.names):
        assert calls[name] == (2 if i in chosen else 1), (name, dict(calls))


def test_selective_saves_matmuls_and_recomputes_pointwise(x):
    """GIVEN no / full / selective checkpointing WHEN ops are counted over forward +
    backward THEN full recomputes matmuls, selective recomputes none of them (saved) but
    does recompute pointwise gelu."""
    counts = {}
    for policy in (Policy.none(), Policy.full(), Policy.selective()):
        model = make_net()
        with CountOps() as mode, apply_policy(model, policy):
            model(x).backward()
        counts[policy.name] = mode.counts
    assert counts["full"]["addmm"] > counts["none"]["addmm"]
    assert counts["selective"]["addmm"] == counts["none"]["addmm"]
    assert counts["selective"]["gelu"] == 2 * counts["none"]["gelu"]


def test_apply_policy_restores_model_also_on_error(x):
    """GIVEN a model WHEN a policy is applied and the body raises THEN the blocks get no
    lasting attribute, state_dict keys are unchanged and calls are no longer checkpointed."""
    model = make_net()
    keys = list(model.state_dict())
    with pytest.raises(RuntimeError, match="boom"), apply_policy(model, Policy.full()):
        assert all("forward" in b.__dict__ for b in model.blocks)
        assert list(model.state_dict()) == keys
        raise RuntimeError("boom")
    assert not any("forward" in b.__dict__ for b in model.blocks)
    assert list(model.state_dict()) == keys
    calls = Counter()
    model.blocks[0].fc1.register_forward_hook(lambda *a: calls.update(["fc1"]))
    model(x).backward()
    assert calls["fc1"] == 1


def test_apply_policy_emits_region_markers(x):
    """GIVEN every_2 applied WHEN profiled THEN checkpoint and recompute markers name
    exactly the chosen blocks."""
    from torch.profiler import ProfilerActivity, profile

    model = make_net()
    with apply_policy(model, Policy.every_k(2)), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(x).backward()
    names = {e.name for e in prof.events()}
    assert {"ckprof::checkpoint::blocks.0", "ckprof::checkpoint::blocks.2",
            "ckprof::recompute::blocks.0", "ckprof::recompute::blocks.2"} <= names
    assert not any(n.endswith(("blocks.1", "blocks.3")) for n in names if n.startswith("ckprof::"))
