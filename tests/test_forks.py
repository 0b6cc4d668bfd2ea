"""``forks.run_in_forks``: results in task order, errors raised in the caller, no worker left.

The report reads large files this way; these tests specify the mechanism on
its own, with tasks small enough to run in a blink.
"""

from __future__ import annotations

import os
import time
from contextlib import closing

import pytest

from tcpfp_cli import forks
from tcpfp_cli.errors import UnknownField


def _children() -> list[int]:
    pid = os.getpid()
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def test_results_come_in_task_order_from_several_processes():
    results = list(forks.run_in_forks(list(range(10)), lambda n: (n * n, os.getpid()), 3))
    assert [square for square, _ in results] == [n * n for n in range(10)]
    assert len({pid for _, pid in results}) == 3 and os.getpid() not in {pid for _, pid in results}
    assert _children() == []


def test_start_runs_in_each_worker_before_its_tasks():
    marks = {}
    results = list(forks.run_in_forks([1, 2, 3, 4], lambda n: marks.get("started", False), 2,
                                      start=lambda: marks.update(started=True)))
    assert results == [True] * 4
    assert marks == {}  # the parent's own state is untouched


def test_an_error_of_the_family_arrives_as_itself():
    def work(n):
        if n == 2:
            raise UnknownField("NOPE")
        return n

    results = forks.run_in_forks([0, 1, 2, 3], work, 2)
    with pytest.raises(UnknownField) as raised:
        list(results)
    assert str(raised.value) == str(UnknownField("NOPE"))
    assert _children() == []


def test_closing_early_ends_every_worker():
    results = forks.run_in_forks(list(range(8)), lambda n: time.sleep(0.3) or n, 2)
    with closing(results):
        assert next(results) == 0
    assert _children() == []


def test_a_worker_that_exits_is_an_error_naming_it():
    with pytest.raises(forks.WorkerError, match=r"a worker process \(PID \d+\) ended without its result") as raised:
        list(forks.run_in_forks([0, 1], lambda n: os._exit(3), 2))
    assert raised.value.pid is not None
    assert _children() == []


def _family():
    """One instance of every class of the error family, built as the code builds them."""
    from tcpfp_cli import campaigns, errors, httpwire, logformat, logreader, report, rules, server, sigdb
    return [
        errors.BadHex("odd length", 3), errors.MalformedSyn("bad thing", 7),
        errors.Truncated("TCP header", 20, 20, 3), errors.UnsupportedIpVersion(5),
        errors.BadHeaderLength("IPv4 IHL", 4, 0), errors.NotTcp(17, 9), errors.NotSyn(0x10, 33),
        errors.UnknownField("NOPE"), httpwire.BadRequest(400, "bad method", b"G(T / HTTP/1.1"),
        forks.WorkerError("a worker process failed", 1234), report.ReportError("no line"),
        logreader.UnreadableInput("x: cannot read"), campaigns.CampaignFileError("f line 2: bad"),
        logformat.LogFormatError("unknown directive", "%h %Z", 3), logformat.LogLineError("not a number", 4),
        rules.RuleError("deny.rules", 2, "unknown field"), server.StartupError("port in use", 98),
        sigdb.SignatureFileError("p0f.fp", 3, "bad label"),
    ]


@pytest.mark.parametrize("error", _family(), ids=lambda e: type(e).__name__)
def test_every_error_of_the_family_crosses_a_pipe_whole(error):
    import pickle

    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error) and str(copy) == str(error)
    assert vars(copy) == vars(error)
