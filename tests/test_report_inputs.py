"""`tcpfp report` on awkward inputs and options: one line on stderr and exit 2, never a
traceback; format recognition from the first 20 non-blank lines however long or late they
are; numbers beyond Int64; the progress bar cleared; --by, --top and --csv checked.
"""

from __future__ import annotations

import gzip
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from tcpfp_cli import report as reporting
from tcpfp_cli.cli import app

runner = CliRunner()

LINE = ('192.0.2.{n} - - [01/Feb/2024:10:00:00 +0000] "GET /{path} HTTP/1.1" 404 - "-" "{ua}" '
        '{ttl} 1 0 64240 7 1460 "2,4,8,1,3" 0 4 0 0 - - 64 3 "-" "-" "s:unix:Linux:3.11 and newer" "exact" '
        '5000 - - - - - "-"')


def line(n: int = 1, path: str = "", ua: str = "ua/1.0", ttl: str = "61") -> str:
    return LINE.format(n=n, path=path, ua=ua, ttl=ttl)


def invoke(*args):
    result = runner.invoke(app, ["report", *args])
    return result.exit_code, result.stdout, result.stderr


def one_line_error(code: int, err: str) -> bool:
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and "Traceback" not in err


def test_a_corrupt_gzip_is_one_line_not_a_traceback(tmp_path):
    good = gzip.compress("".join(line(n % 200, path=str(n)) + "\n" for n in range(2000)).encode())
    bad_member = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + b"\x07" * 64  # deflate block type 3: zlib.error
    log = tmp_path / "corrupt.log.gz"
    log.write_bytes(good + bad_member)
    for args in ([str(log)], ["--format", "tcpfp", str(log)]):
        code, _, err = invoke(*args)
        errors = [e for e in err.strip().splitlines() if "recognised from its first lines" not in e]
        assert code == 2 and "Traceback" not in err, err
        assert len(errors) == 1 and errors[0].startswith(f"tcpfp: {log}: cannot read: ")


@pytest.mark.parametrize("head", [
    [line(path="a" * 6000)],  # a first line longer than one read buffer
    ["not a log line"] + [line(ua="x" * 3000)] * 3,  # one bad line among long good ones
    [""] * 5000,  # blank lines first
], ids=["long-first-line", "garbage-then-long-lines", "leading-blanks"])
def test_the_format_is_recognised_from_the_first_20_lines(tmp_path, head):
    log = tmp_path / "a.log"
    log.write_text("\n".join(head + [line(n) for n in range(30)]) + "\n")
    code, out, err = invoke("--json", str(log))
    assert code == 0, err
    assert json.loads(out)["summary"]["format_name"] == "tcpfp"
    assert "as format 'tcpfp'" in err


def test_numbers_beyond_int64_are_malformed_lines_on_both_paths(tmp_path):
    lines = [line(n) for n in range(10)]
    lines[3] = line(ttl="99999999999999999999")  # the fast path (pandas) sees it
    lines[6] = line(ttl="9223372036854775808").replace(" - - [", "  - - [")  # a double space: LogFormat.parse
    lines[8] = line(ttl="9223372036854775807")  # the largest Int64: read exactly
    lines[9] = line(ttl="9" * 5000).replace(" - - [", "  - - [")  # more digits than int() takes
    log = tmp_path / "big-numbers.log"
    log.write_text("\n".join(lines) + "\n")
    code, out, err = invoke("--json", "--format", "tcpfp", "--by", "IP_TTL", str(log))
    assert code == 0 and "Traceback" not in err and "Warning" not in err, err
    report = json.loads(out)
    assert (report["summary"]["parsed"], report["summary"]["malformed"]) == (7, 3)
    assert [m["line"] for m in report["malformed_lines"]] == [4, 7, 10]
    assert sorted(f["FINGERPRINT_IP_TTL"] for f in report["fingerprints"]) == [61, 9223372036854775807]


@pytest.mark.parametrize("option", ["--top", "--min-count", "--workers"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_counts_below_one_are_refused(tmp_path, option, value):
    log = tmp_path / "a.log"
    log.write_text("\n".join(line(n, path=str(n % 3)) for n in range(30)) + "\n")
    code, _, err = invoke("--format", "tcpfp", option, value, str(log))
    assert one_line_error(code, err) and f"{option} {value}" in err


def test_csv_into_a_file_is_one_line(tmp_path):
    log = tmp_path / "a.log"
    log.write_text(line() + "\n")
    (tmp_path / "taken").write_text("")
    code, _, err = invoke("--format", "tcpfp", "--csv", str(tmp_path / "taken"), str(log))
    assert one_line_error(code, err) and "--csv" in err


def test_by_a_field_named_twice_is_one_key_column(tmp_path):
    log = tmp_path / "a.log"
    log.write_text(line() + "\n")
    code, out, err = invoke("--json", "--format", "tcpfp", "--by", "IP_TTL,FINGERPRINT_IP_TTL", str(log))
    assert code == 0 and err == "", err
    assert json.loads(out)["summary"]["key"] == ["FINGERPRINT_IP_TTL"]


def test_only_blank_lines_with_a_format_says_the_input_is_empty(tmp_path):
    log = tmp_path / "blank.log"
    log.write_text("\n\n  \n")
    code, _, err = invoke("--format", "tcpfp", str(log))
    assert one_line_error(code, err) and "empty" in err and "no line of the input is empty" not in err


def test_the_progress_bar_is_closed_and_counts_compressed_bytes(tmp_path):
    text = "".join(line(n % 200, path=str(n)) + "\n" for n in range(30000))
    log = tmp_path / "a.log.gz"
    log.write_bytes(gzip.compress(text.encode()))
    size = log.stat().st_size
    bars = []

    class Bar:
        def __init__(self, total):
            self.total, self.done, self.closed = total, [], False

        def __call__(self, done, lines):
            self.done.append(done)

        def close(self):
            self.closed = True

    def progress(label, total):
        bars.append(Bar(total))
        return bars[-1]

    options = reporting.ReportOptions(workers=1, chunk_bytes=1 << 16)
    reporting.build_report([str(log)], "tcpfp", options, progress=progress)
    (bar,) = bars
    assert bar.closed
    assert bar.total == size and len(bar.done) > 2
    assert max(bar.done) <= size and bar.done[0] < size  # the share grows with the file, not at once


COMBINED = '192.0.2.{n} - - [01/Feb/2024:10:00:00 +0000] "GET /{n} HTTP/1.1" 404 - "-" "ua/1.0"'


@pytest.mark.parametrize("fmt, first", [
    ("combined", COMBINED.format(n=0) + " 1234 5"),  # a log with two more fields than the format
    ("tcpfp", line(0) + " surplus fields"),
    ("%h %>s %b", "192.0.2.1 404 - 1 2 3"),
    ("combined", COMBINED.format(n=0) + " " + " ".join("x" * 40)),
], ids=["combined+2", "tcpfp+2", "no-quotes+3", "combined+40"])
def test_a_first_line_with_surplus_fields_is_malformed_not_a_crash(tmp_path, fmt, first):
    """The tokenizer must not take the surplus tokens of the first line for an index, or fail."""
    rest = [COMBINED.format(n=n) if fmt == "combined" else line(n) if fmt == "tcpfp" else f"192.0.2.{n} 404 -"
            for n in range(1, 30)]
    log = tmp_path / "a.log"
    log.write_text("\n".join([first, *rest]) + "\n")
    code, out, err = invoke("--json", "--format", fmt, str(log))
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert (summary["parsed"], summary["malformed"]) == (len(rest), 1)


@pytest.mark.parametrize("fmt", ["tcpfp", "%h\t%r\t%>s\t%{User-Agent}i", "%h %U%q %>s"],
                         ids=["tcpfp", "tabs", "U-q"])
@pytest.mark.parametrize("cut", ["\0", "x"], ids=["nul-region", "no-newline"])
def test_a_line_of_megabytes_is_parsed_in_memory_proportional_to_it(fmt, cut):
    """A log cut while written (a region of NUL bytes, or text without its newline) joins the
    next line into one of megabytes; reading it held about 140 bytes per character (a 100 MB
    region took 14 GB)."""
    import tracemalloc

    from tcpfp_cli.logformat import LogLineError, compile_format

    compiled = compile_format(fmt)
    text = cut * (4 << 20) + {"tcpfp": line(), "%h %U%q %>s": "192.0.2.1 /a?b 200"}.get(
        fmt, "192.0.2.1\tGET / HTTP/1.1\t200\tua")
    tracemalloc.start()
    try:
        compiled.parse(text)
    except LogLineError:
        pass
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 << 20, f"{peak >> 20} MiB for a line of 4 MiB"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"a", b"bc", b"\n", b"\n\n", b"x" * 40, b"\r\n", b"\0" * 9]), max_size=40).map(b"".join),
       st.integers(1, 64))
def test_blocks_are_the_input_cut_after_line_ends_whatever_the_read_size(data, chunk):
    """The reader's blocks, for reads of any size (lines that span many reads, like a log cut
    while written that joins megabytes into one line): whole lines, in order, nothing lost,
    and a last line without its newline given one."""
    import io

    from tcpfp_cli.logformat import compile_format
    from tcpfp_cli.logreader import LogReader

    reader = LogReader(compile_format("common"), chunk_bytes=chunk)
    blocks = [block for block, _ in reader._blocks(io.BytesIO(data), "test")]
    assert all(block.endswith(b"\n") and block for block in blocks)
    assert b"".join(blocks) == (data + b"\n" if data and not data.endswith(b"\n") else data)


def test_a_first_line_too_long_to_recognise_the_format_says_so(tmp_path, monkeypatch):
    """Format detection reads at most CHUNK_BYTES: a first line longer than that (a NUL region
    of a log cut while written) is named as the reason, and --format still reads the log."""
    from tcpfp_cli import logreader

    monkeypatch.setattr(logreader, "CHUNK_BYTES", 4096)
    monkeypatch.setattr(logreader.read_sample, "__defaults__", (logreader.SAMPLE_LINES, 4096))
    log = tmp_path / "cut.log"
    log.write_text("\0" * 10_000 + "\n" + "\n".join(line(n) for n in range(5)) + "\n")
    code, _, err = invoke(str(log))
    assert one_line_error(code, err) and "the first line is longer than 4,096 bytes" in err
    code, out, err = invoke("--json", "--format", "tcpfp", str(log))
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert (summary["parsed"], summary["malformed"]) == (5, 1)
