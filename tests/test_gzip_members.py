"""Multi-member gzip and the streaming size guard (issue 16).

A ``.json.gz`` written as several gzip members (``cat a.gz b.gz``, pigz, log shippers)
must read exactly like the plain file wherever the member boundaries fall relative to
the reader's compressed reads and decompressed blocks; and the decompressed size is
guarded while streaming, whatever the gzip size field says.
"""

from __future__ import annotations

import functools
import gzip
import itertools
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_load import assert_same_trace
from test_robust_input import kineto_text

from ckprof.errors import TraceFormatError, TraceTooLargeError
from ckprof.trace.kineto import source as _source
from ckprof.trace.load import load_trace

PLAIN = kineto_text(300)  # ~70 KB of Kineto-layout JSON

BACKENDS = [pytest.param((zlib, (zlib.error,)), id="zlib")]
try:  # the optional ISA-L backend behaves differently after a member ends: test both
    from isal import isal_zlib

    BACKENDS.append(pytest.param((isal_zlib, (zlib.error, isal_zlib.error)), id="isal"))
except ImportError:  # pragma: no cover - depends on the environment
    pass


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    module, errors = request.param
    monkeypatch.setattr(_source, "_zlib", module)
    monkeypatch.setattr(_source, "_ZLIB_ERRORS", errors)
    return module


def members(data: bytes, cuts: list[int], levels: list[int], padding: list[int]) -> bytes:
    """``data`` split at ``cuts`` into gzip members (each with its level), with
    ``padding`` zero bytes after each member (what some writers leave)."""
    bounds = [0, *sorted(cuts), len(data)]
    out = []
    for i, (a, b) in enumerate(itertools.pairwise(bounds)):
        out.append(gzip.compress(data[a:b], compresslevel=levels[i % len(levels)]))
        out.append(bytes(padding[i % len(padding)]))
    return b"".join(out)


@st.composite
def member_layouts(draw):
    n = draw(st.integers(1, 6))
    cuts = draw(st.lists(st.integers(0, len(PLAIN)), min_size=n - 1, max_size=n - 1))
    levels = draw(st.lists(st.sampled_from([0, 1, 6, 9]), min_size=1, max_size=3))
    padding = draw(st.lists(st.sampled_from([0, 0, 1, 7]), min_size=1, max_size=3))
    block = draw(st.sampled_from([97, 1000, 4096, 65536, 16 * 1024 * 1024]))
    read = draw(st.sampled_from([5, 64, 777, 4096, 4 * 1024 * 1024]))
    return cuts, levels, padding, block, read


@given(layout=member_layouts())
@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_any_members_any_split_give_the_plain_bytes(tmp_path, monkeypatch, backend, layout):
    """GIVEN the same JSON split into 1-6 gzip members at any points (empty members, zero
    padding and stored blocks included), read with any compressed read size and block size
    WHEN the streaming reader decompresses it THEN it yields exactly the plain bytes and no
    problem -- the member boundary may fall anywhere relative to a read or a block."""
    cuts, levels, padding, block, read = layout
    monkeypatch.setattr(_source, "_COMPRESSED_READ", read)
    path = tmp_path / "t.json.gz"
    path.write_bytes(members(PLAIN, cuts, levels, padding))
    reader = _source.BlockReader(path, block_bytes=block)
    blocks = list(reader.blocks())
    assert reader.problem is None
    assert b"".join(blocks) == PLAIN


@given(cuts=st.lists(st.integers(0, len(PLAIN)), min_size=1, max_size=4),
       read=st.sampled_from([64, 4096]))
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_multi_member_trace_loads_like_the_plain_file(tmp_path, monkeypatch, cuts, read):
    """GIVEN a trace as several gzip members WHEN loaded THEN the Trace equals the plain
    file's (times, tree, memory, notes)."""
    monkeypatch.setattr(_source, "_COMPRESSED_READ", read)
    monkeypatch.setattr(_source.BlockReader.__init__, "__defaults__", (1000,))
    plain = tmp_path / "plain.json"
    plain.write_bytes(PLAIN)
    packed = tmp_path / "packed.json.gz"
    packed.write_bytes(members(PLAIN, cuts, [6], [0]))
    assert_same_trace(load_trace(packed), load_trace(plain))


def test_data_after_the_last_member_is_damage(tmp_path, backend):
    """GIVEN a complete gzip member followed by bytes that are not another member WHEN
    read THEN the data is complete and the problem says what follows it."""
    path = tmp_path / "t.json.gz"
    path.write_bytes(gzip.compress(PLAIN) + b"\x00\x00garbage")
    reader = _source.BlockReader(path)
    assert reader.read_all() == PLAIN
    assert reader.problem == "damaged (data after the end of the gzip stream)"


def test_truncated_second_member(tmp_path, backend):
    """GIVEN two members, the second cut short WHEN read THEN 'truncated'."""
    second = gzip.compress(PLAIN[1000:])
    path = tmp_path / "t.json.gz"
    path.write_bytes(gzip.compress(PLAIN[:1000]) + second[: len(second) // 2])
    reader = _source.BlockReader(path)
    data = reader.read_all()
    assert reader.problem == "truncated" and PLAIN.startswith(data) and len(data) > 1000


def _blank_members(n_members: int, member_bytes: int) -> bytes:
    return _blank_member(member_bytes) * n_members


@functools.lru_cache(maxsize=4)
def _blank_member(member_bytes: int) -> bytes:
    return gzip.compress(b" " * member_bytes, compresslevel=9)


def test_streaming_guard_ignores_the_size_field(tmp_path, monkeypatch, backend):
    """GIVEN a gzip bomb scaled down: 8 members of 4 MiB of blanks whose last member's
    size field says 4 MiB, and a machine with 'available' memory for ~10 MiB WHEN the
    stream is read with that limit THEN it stops with DecompressedTooLarge once past the
    limit, having decompressed no more than the limit plus one block."""
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(_blank_members(8, 4 << 20))
    reader = _source.BlockReader(path, block_bytes=1 << 20, max_bytes=10 << 20)
    seen = 0
    with pytest.raises(_source.DecompressedTooLarge) as info:
        for block in reader.blocks():
            seen += len(block)
    assert seen <= 10 << 20 and info.value.seen <= (10 << 20) + (1 << 20)


def test_loader_refuses_a_bomb_with_exit_10(tmp_path, monkeypatch):
    """GIVEN a bomb of a JSON prefix then blanks in many members (the fast path streams
    it) and 200 MiB 'available' WHEN loaded THEN TraceTooLargeError (exit 10) naming
    gzip, not a kill by the OOM killer."""
    head = gzip.compress(b'{"traceEvents": [\n  {"ph": "X", "name": "a", "pid": 1, "tid": 1, '
                         b'"ts": 1, "dur": 1},')
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(head + _blank_members(4, 16 << 20))
    monkeypatch.setattr(_source, "available_memory_bytes", lambda: 128 << 20)
    with pytest.raises(TraceTooLargeError) as info:
        load_trace(path)
    assert "gzip" in str(info.value) and info.value.exit_code == 10


def test_expansion_ratio_guard(tmp_path, monkeypatch):
    """GIVEN a stream expanding ~1000x (a bomb of blanks; the ratio limit scaled down
    to apply after 8 MiB) WHEN loaded THEN TraceFormatError (exit 4) saying it expands
    more than any trace."""
    monkeypatch.setattr(_source, "BOMB_MIN_BYTES", 8 << 20)
    path = tmp_path / "bomb.json.gz"
    path.write_bytes(gzip.compress(b'{"traceEvents": [') + _blank_members(4, 16 << 20))
    with pytest.raises(TraceFormatError) as info:
        load_trace(path)
    assert "expands more than" in str(info.value) and info.value.exit_code == 4
