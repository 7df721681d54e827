"""ckprof.sweep on real CPU captures of a tiny model (torch), and the sweep CLI."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

torch = pytest.importorskip("torch")
nn = torch.nn

from ckprof.analysis import load  # noqa: E402
from ckprof.cli.main import cli  # noqa: E402
from ckprof.errors import CkprofError  # noqa: E402
from ckprof.strategy.runner import parse_bytes, sweep  # noqa: E402

DIM = 32


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 4 * d)
        self.fc2 = nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.ln(x))))


class TinyNet(nn.Module):
    def __init__(self, depth: int = 4) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(DIM) for _ in range(depth))
        self.head = nn.Linear(DIM, 1)

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return self.head(x)


def make_model() -> TinyNet:
    return TinyNet()


def make_batch(batch_size: int) -> torch.Tensor:
    return torch.randn(batch_size, 8, DIM)


def make_tuple(batch_size: int = 32):
    """CLI-style factory: (model, batch, loss_fn)."""
    return TinyNet(), torch.randn(batch_size, 8, DIM), lambda out, batch: out.square().mean()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a busy shared 2-core machine, OpenMP threads waiting on
    each other make tiny ops 100x slower; the tests measure structure, not speed."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def swept(one_thread, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    result = sweep(make_model, make_batch, policies=["none", "full", "selective"], steps=4, rounds=2,
                   batch_sizes=(8, 16), isolation="inline", out_dir=out, optimizer="sgd", warmup=1)
    return result, out


def test_sweep_measures_every_policy(swept):
    """GIVEN none / full / selective on a tiny model WHEN swept (interleaved, 2 rounds of 2
    steps) THEN every policy has 4 measured steps at the first batch size, 2 per round,
    recompute only where checkpointing, and full checkpointing has the lowest peak."""
    result, _ = swept
    t = result.table.set_index("policy")
    assert list(t.index) == ["none", "full", "selective"]
    assert (t["steps"] == 4).all() and (t["batch_size"] == 8).all() and (t["rounds"] == 2).all()
    assert t.loc["none", "recompute_ms"] == 0
    assert t.loc["full", "recompute_ms"] > 0 and t.loc["selective", "recompute_ms"] > 0
    assert t.loc["full", "peak_bytes"] < t.loc["none", "peak_bytes"]
    assert t.loc["selective", "peak_bytes"] < t.loc["none", "peak_bytes"]
    assert t.loc["full", "saving_pct"] > 0
    assert t.loc["full", "blocks"] == "4/4 blocks"
    assert (t["step_ms_min"] <= t["step_ms"]).all() and (t["step_ms"] <= t["step_ms_max"]).all()
    assert len(result.runs) == 3 * 4 * 2
    assert result.runs.groupby(["batch_size", "policy", "round"]).size().eq(2).all()
    # the per-step phases of each measured step add up to its step time
    phases = result.runs[["forward_ms", "backward_ms", "recompute_ms", "optimizer_ms", "other_ms"]].sum(axis=1)
    assert phases.to_numpy() == pytest.approx(result.runs["step_ms"].to_numpy(), rel=1e-9)
    assert result.threads is None or result.threads >= 1
    assert "interleaved on one model" in result.schedule


def test_sweep_rounds_are_tagged_traces(swept):
    """GIVEN out_dir WHEN swept THEN one trace per (round, batch), each holding every
    policy's steps tagged as variants, the first after each switch excluded; a policy's
    steps analysed alone (variant=) find its regions by markers, and the table's peak is
    the highest of its per-round peaks."""
    result, out = swept
    assert [(label, b) for label, b, _ in result.traces] == [
        ("round0", 8), ("round1", 8), ("round0", 16), ("round1", 16)]
    paths = [Path(t) for _, b, t in result.traces if b == 8]
    assert all(p.is_file() and out in p.parents for p in paths)
    ab = load(paths[0]).ab
    assert set(ab.variants["variant"]) == {"none", "full", "selective"}
    assert int(ab.steps["excluded"].sum()) == 3  # one switch step per policy
    full = load(paths[0], variant="full")
    assert full.recompute_detection == "markers"
    assert set(full.regions_table()["region"]) == {f"blocks.{i}" for i in range(4)}
    peaks = [load(p, variant="full").memory_table().query("device == 'cpu'")["peak_bytes"].max() for p in paths]
    assert max(peaks) == result.table.set_index("policy").loc["full", "peak_bytes"]


def test_sweep_batch_estimate_uses_measured_slope(swept):
    """GIVEN two batch sizes WHEN a budget is applied THEN the estimate comes from the two
    measured peaks, the modelled peak at the estimated batch fits the budget while one
    more sample would not, and samples/s at that batch come from the two step times."""
    result, _ = swept
    none_peak = result.table.set_index("policy").loc["none", "peak_bytes"]
    judged = result.with_budget(int(none_peak * 1.5))
    for r in judged.table.itertuples(index=False):
        assert r.method == "measured slope (batch 8 and 16)"
        assert r.time_method.startswith("measured at batch 8 and 16 (linear)")
        assert r.bytes_per_sample_est > 0
        fits = r.fixed_bytes_est + r.bytes_per_sample_est * r.max_batch_est
        assert fits <= judged.budget_bytes < fits + r.bytes_per_sample_est
        assert r.samples_per_s_at_max_est == pytest.approx(r.max_batch_est / r.step_ms_at_max_est * 1e3)


def test_sweep_recommendation_by_throughput(swept):
    """GIVEN a budget between full's and none's peak at batch 8 WHEN judged THEN the
    recommendation is the policy with the most samples/s at its largest fitting batch."""
    result, _ = swept
    t = result.table.set_index("policy")
    budget = int((t.loc["full", "peak_bytes"] + t.loc["none", "peak_bytes"]) / 2)
    judged = result.with_budget(budget)
    rec = judged.recommendation
    able = judged.table[judged.table["max_batch_est"] >= 1]
    assert rec.by == "throughput"
    assert rec.policy == able.sort_values("samples_per_s_at_max_est", ascending=False).iloc[0]["policy"]
    assert rec.batch_size == int(judged.table.set_index("policy").loc[rec.policy, "max_batch_est"])
    fig = judged.plot()
    assert fig.axes[0].get_legend() is not None


@pytest.mark.slow
def test_sweep_process_isolation(tmp_path):
    """GIVEN importable factories WHEN swept with isolation='process' THEN the run happens
    in a spawned worker and still returns measured figures."""
    result = sweep(f"{__name__}:make_tuple", policies=["full"], steps=1, rounds=1, batch_size=8,
                   isolation="process", warmup=0, optimizer="sgd", threads=1)
    row = result.table.iloc[0]
    assert row["policy"] == "full" and row["batch_size"] == 8
    assert row["recompute_ms"] > 0 and row["peak_bytes"] > 0
    assert not any("inline" in n for n in result.notes)


def test_sweep_process_refuses_unimportable_factories():
    """GIVEN a lambda factory WHEN process isolation is forced THEN a typed error."""
    with pytest.raises(CkprofError, match="importable"):
        sweep(lambda: TinyNet(), make_batch, policies=["none"], isolation="process")


def test_sweep_rejects_bad_arguments():
    """GIVEN bad arguments WHEN sweeping THEN ValueError before any run."""
    with pytest.raises(ValueError, match="steps"):
        sweep(make_model, make_batch, steps=0)
    with pytest.raises(ValueError, match="rounds"):
        sweep(make_model, make_batch, rounds=0)
    with pytest.raises(ValueError, match="schedule"):
        sweep(make_model, make_batch, schedule="random")
    with pytest.raises(ValueError, match="isolation"):
        sweep(make_model, make_batch, isolation="thread")
    with pytest.raises(ValueError, match="not a size"):
        sweep(make_model, make_batch, memory_budget="lots")


# ---- CLI ------------------------------------------------------------------------------------


def test_cli_sweep_user_model_writes_plot_and_recommends(tmp_path):
    """GIVEN --model module:function WHEN `ckprof sweep` runs THEN it prints the table and
    a recommendation and writes the frontier PNG; a second run refuses to overwrite it."""
    png = tmp_path / "frontier.png"
    args = ["sweep", "--model", f"{__name__}:make_tuple", "--policy", "none,full", "--steps", "1",
            "--rounds", "1", "--warmup", "0", "--isolation", "inline", "--memory-budget", "1MiB", "-o", str(png),
            "--optimizer", "sgd", "--confirm", "--batch-size", "4"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "Recommendation: Use " in res.output and "memory budget: 1.0 MiB" in res.output
    assert "batch 8 was measured too" in res.output  # the second size, for the estimate
    # the recommended batch was run: it fitted, or a smaller one did (the estimate is linear)
    assert re.search(r"(Confirmed by running it|Not confirmed): \w+ at batch \d+", res.output), res.output
    assert "threads: torch pinned to" in res.output
    assert max(len(line) for line in res.output.splitlines()) <= 100
    assert png.read_bytes()[:4] == b"\x89PNG"
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 8 and "exists" in again.output


def test_cli_sweep_demo_model_json(tmp_path):
    """GIVEN no --model WHEN `ckprof sweep --format json` runs THEN the demo transformer is
    swept and the JSON lists both policies with measured peaks."""
    import json

    res = CliRunner().invoke(cli, ["sweep", "--policy", "full", "--steps", "1", "--rounds", "1",
                                   "--warmup", "0", "--isolation", "inline", "--format", "json",
                                   "--batch-size", "2"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.output[res.output.index("{"):])
    assert [p["policy"] for p in d["policies"]] == ["full"]
    assert d["policies"][0]["peak_bytes"] > 0 and d["policies"][0]["recompute_ms"] > 0
    assert d["recommendation"]["frontier"] == ["full"]


@pytest.mark.parametrize(("args", "needle"), [
    (["--memory-budget", "lots"], "not a size"),
    (["--policy", "sometimes"], "unknown policy"),
    (["--second-batch-size", "4"], "--batch-size"),
])
def test_cli_sweep_bad_options_exit_2(args, needle):
    """GIVEN a bad option WHEN `ckprof sweep` parses it THEN usage error (exit 2)."""
    res = CliRunner().invoke(cli, ["sweep", "--isolation", "inline", *args])
    assert res.exit_code == 2 and needle in res.output


def test_parse_bytes_matches_cli_budget():
    """GIVEN the CLI's budget text WHEN parsed by the library THEN the same bytes."""
    assert parse_bytes("1GiB") == 2**30 and not math.isnan(parse_bytes("0.5GiB"))


def test_cli_sweep_confirms_an_advised_policy(tmp_path):
    """GIVEN --policy advised:<ops> (its text is not its name, 'advised') WHEN the sweep
    recommends it under a budget and --confirm runs it THEN the confirmation finds the
    policy by name instead of parsing 'advised' (which needs its ops)."""
    args = ["sweep", "--model", f"{__name__}:make_tuple", "--policy", "advised:addmm+mm",
            "--steps", "1", "--rounds", "1", "--warmup", "0", "--isolation", "inline",
            "--memory-budget", "1MiB", "--optimizer", "sgd", "--confirm", "--batch-size", "4",
            "-o", str(tmp_path / "f.png")]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert re.search(r"(Confirmed by running it|Not confirmed): advised at batch \d+", res.output), res.output
