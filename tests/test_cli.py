"""`tcpfp decode` through typer's CliRunner: table, JSON lines, --fields, stdin, bad input, exit codes.

The SYNs here are hand-assembled hex so that each expected value can be read
off the bytes: LINUX is an IPv4 SYN with TTL 64, DF, IP ID 0x04d2, window
64240, options MSS 1460, SACK-permitted, TS (TSval 0x0cfb1d08), NOP, WS 7.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tcpfp_cli.cli import app

LINUX = (
    "4500003c04d240004006000cc6120002c6120001"  # IPv4, tot 60, id 1234, DF, TTL 64, TCP
    "cf4e0050bbde1d2a00000000a002faf0d8fc0000"  # ports, seq, ack 0, doff 10, SYN, win 64240
    "020405b40402080a0cfb1d080000000001030307"  # MSS 1460, SOK, TS, NOP, WS 7
)
# IPv6, hop limit 57, traffic class 0x02 (ECT), no options, window 65535, ECE|CWR.
IPV6_NO_OPTIONS = (
    "60200000001406392001" "0db8000000000000000000000002" "20010db8000000000000000000000001"
    "cf4e0050000000010000000050c2ffff00000000"
)

runner = CliRunner()


def invoke(*args: str, stdin: str | None = None):
    return runner.invoke(app, ["decode", *args], input=stdin)


def test_table_names_every_syn_field():
    result = invoke(LINUX)
    assert result.exit_code == 0, result.output
    rows = dict(line.split(None, 1) for line in result.stdout.splitlines() if line.startswith("FINGERPRINT"))
    assert rows["FINGERPRINT_IP_TTL"] == "64"
    assert rows["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3"
    assert rows["FINGERPRINT_TCP_TS"] == str(0x0CFB1D08)
    assert rows["FINGERPRINT_P0F"] == "4:64+0:0:1460:mss*44,7:mss,sok,ts,nop,ws:df,id+:0"
    assert rows["FINGERPRINT_SAVED_SYN"] == LINUX


def test_json_lines_are_keyed_by_field_name_and_typed():
    result = invoke("--json", LINUX, IPV6_NO_OPTIONS)
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["FINGERPRINT_IP_TTL"] == 64 and first["FINGERPRINT_IP_DF"] == 1
    assert first["FINGERPRINT_TCP_WSCALE"] == 7
    assert second["FINGERPRINT_IP_VERSION"] == 6
    assert second["FINGERPRINT_IP_TTL"] == 57
    assert second["FINGERPRINT_IP_DF"] is None and second["FINGERPRINT_IP_ID"] is None
    assert second["FINGERPRINT_IP_ECN"] == 2
    assert second["FINGERPRINT_TCP_ECN"] == 3
    assert second["FINGERPRINT_TCP_MSS"] is None
    assert second["FINGERPRINT_TCP_OPTIONS"] == ""


def test_fields_prints_one_line_per_good_input_in_order():
    result = invoke("--fields", "FINGERPRINT_IP_TTL,tcp_mss,TCP_WSCALE", LINUX, IPV6_NO_OPTIONS)
    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["64\t1460\t7", "57\t-\t-"]


def test_json_with_fields_keeps_only_those_fields_in_their_order():
    result = invoke("--json", "--fields", "tcp_mss,FINGERPRINT_IP_TTL", LINUX, IPV6_NO_OPTIONS)
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in result.stdout.splitlines()] == [
        {"FINGERPRINT_TCP_MSS": 1460, "FINGERPRINT_IP_TTL": 64},
        {"FINGERPRINT_TCP_MSS": None, "FINGERPRINT_IP_TTL": 57},
    ]
    assert list(json.loads(result.stdout.splitlines()[0])) == ["FINGERPRINT_TCP_MSS", "FINGERPRINT_IP_TTL"]


def test_stdin_with_dash_and_without_arguments():
    lines = f"{LINUX}\n\n{IPV6_NO_OPTIONS}\n"
    for args in (["-"], []):
        result = invoke("--fields", "IP_VERSION", *args, stdin=lines)
        assert result.exit_code == 0
        assert result.stdout.splitlines() == ["4", "6"]


@pytest.mark.parametrize("spelling", [
    LINUX.upper(),
    "0x" + LINUX,
    " ".join(LINUX[i:i + 2] for i in range(0, len(LINUX), 2)),
    ":".join(LINUX[i:i + 2] for i in range(0, len(LINUX), 2)),
])
def test_accepts_prefix_spaces_colons_upper_case(spelling):
    result = invoke("--fields", "TCP_WSIZE", spelling)
    assert result.exit_code == 0
    assert result.stdout == "64240\n"


@pytest.mark.parametrize("bad, problem", [
    ("4500zz", "not hex"),
    ("45000", "odd number"),
    ("4500", "truncated IPv4 header"),
    (LINUX.replace("4006", "4011", 1), "not TCP"),
    ("7" + LINUX[1:], "IP version 7"),
])
def test_bad_input_is_one_line_and_exit_2_while_good_ones_print(bad, problem):
    result = invoke("--fields", "IP_TTL", LINUX, bad, LINUX)
    assert result.exit_code == 2
    assert result.stdout.splitlines() == ["64", "64"]
    errors = result.stderr.splitlines()
    assert len(errors) == 1
    assert "argument 2" in errors[0] and problem in errors[0]
    assert "Traceback" not in result.output


def test_bad_stdin_line_names_its_line_number():
    result = invoke("--fields", "IP_TTL", "-", stdin=f"{LINUX}\nnot-hex\n{LINUX}\n")
    assert result.exit_code == 2
    assert result.stdout.splitlines() == ["64", "64"]
    assert "line 2" in result.stderr


def test_unknown_field_is_a_usage_error():
    result = invoke("--fields", "FINGERPRINT_NOPE", LINUX)
    assert result.exit_code == 2
    assert "unknown field" in result.stderr and result.stdout == ""


def test_list_fields_lists_the_table():
    """One line per field that docs/fields.md documents, each with its meaning from the table."""
    import re
    from pathlib import Path

    from tcpfp_cli.fields import FIELDS

    documented = re.findall(r"\| (FINGERPRINT_[A-Z_0-9]+) \|",
                            (Path(__file__).resolve().parent.parent / "docs" / "fields.md").read_text())
    result = invoke("--list-fields")
    assert result.exit_code == 0
    rows = [line.split(None, 1) for line in result.stdout.splitlines()]
    assert sorted(name for name, _ in rows) == sorted(documented) and len(documented) >= 28
    assert dict(rows) == {field.name: field.meaning for field in FIELDS}


# TCP_INFO as this x86-64 kernel lays it out: state 1, rto 204000, snd_mss 32768
# at offset 16, rtt 57 at offset 68, and 104 bytes in all (the oldest layout).
def _tcp_info_hex(length: int) -> str:
    raw = bytearray(length)
    raw[0] = 1
    raw[8:12] = (204000).to_bytes(4, "little")
    raw[16:20] = (32768).to_bytes(4, "little")
    raw[68:72] = (57).to_bytes(4, "little")
    return raw.hex()


def test_tcp_info_decodes_the_fields_the_length_holds():
    result = invoke("--tcp-info", "--json", _tcp_info_hex(104))
    assert result.exit_code == 0, result.output
    values = json.loads(result.stdout)
    assert values["state"] == 1 and values["rto"] == 204000
    assert values["snd_mss"] == 32768 and values["rtt"] == 57
    assert values["total_retrans"] == 0
    assert values["min_rtt"] is None  # offset 148: not in a 104-byte TCP_INFO
    assert values["length"] == 104


def test_tcp_info_fields_and_bad_name():
    good = invoke("--tcp-info", "--fields", "rtt,tcpi_snd_mss", _tcp_info_hex(232))
    assert good.exit_code == 0 and good.stdout == "57\t32768\n"
    bad = invoke("--tcp-info", "--fields", "nope", _tcp_info_hex(104))
    assert bad.exit_code == 2 and "unknown TCP_INFO field" in bad.stderr


def test_python_dash_m_runs_the_same_cli():
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "tcpfp_cli", "decode", "--fields", "IP_TTL", LINUX],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0 and done.stdout == "64\n"


# --- found by a review of decode's error paths ----------------------------------

def _run_module(*args: str, **kwargs):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}  # strict decoding, as under en_US.UTF-8
    return subprocess.run([sys.executable, "-m", "tcpfp_cli", "decode", *args],
                          capture_output=kwargs.pop("capture_output", True), env=env, timeout=60, **kwargs)


def test_stdin_line_that_is_not_utf8_is_one_bad_line_not_a_traceback():
    done = _run_module("--fields", "IP_TTL", input=f"{LINUX}\n\xff\xfe\n{LINUX}\n".encode("latin-1"))
    assert done.returncode == 2, done.stderr
    assert done.stdout.decode().splitlines() == ["64", "64"]
    errors = done.stderr.decode().splitlines()
    assert len(errors) == 1 and "line 2" in errors[0] and "not hex" in errors[0]


def test_closed_stdin_is_one_line():
    import os
    import subprocess

    done = _run_module("--fields", "IP_TTL", stdin=subprocess.DEVNULL, preexec_fn=lambda: os.close(0))
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == ["tcpfp: stdin is closed"]


def test_unwritable_stdout_is_one_line():
    import os
    import subprocess

    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "w") as full:
        done = _run_module("--fields", "IP_TTL", LINUX, capture_output=False, stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 2
    assert done.stderr.decode().splitlines() == ["tcpfp: decode stopped: No space left on device"]


@pytest.mark.parametrize("args", [("--fields", ","), ("--fields", " , "), ("--tcp-info", "--fields", ",")])
def test_fields_naming_no_field_is_a_usage_error(args):
    result = invoke(*args, LINUX)
    assert result.exit_code == 2
    assert "names no field" in result.stderr and result.stdout == ""


def test_bad_hex_position_counts_the_text_as_given():
    result = invoke("0x 45 00 zz")
    assert result.exit_code == 2
    assert "unexpected character 'z' at character 9" in result.stderr


def test_signature_number_too_long_for_int_is_one_line(tmp_path):
    db = tmp_path / "big.fp"
    db.write_text("classes = unix\n[tcp:request]\nlabel = s:unix:X:Y\n"
                  f"sig = *:{'9' * 5000}:0:*:*,*:mss:df:0\n")
    result = invoke("--signatures", str(db), LINUX)
    assert result.exit_code == 2
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and "line 4" in errors[0] and "outside 1..255" in errors[0]
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("args, message", [
    (["serve", "--port", "abc"], "Invalid value for '--port'"),
    (["serve", "--bogus"], "No such option: --bogus"),
    (["report", "--min-count", "many", "/dev/null"], "Invalid value for '--min-count'"),
    (["decode", "--json", "--fields"], "Option '--fields' requires an argument"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_usage_errors_are_one_line_and_exit_2(args, message):
    """A wrong option value or an unknown option is an operator's most common mistake; it gets
    the one `tcpfp: ...` line on stderr every other error gets (a service log keeps it whole),
    naming the help to read, and exit status 2, not typer's multi-line box."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tcpfp_cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("tcpfp: ") and message in line and "--help" in line


@pytest.mark.parametrize("args, code", [([], 2), (["--help"], 0), (["decode", "--help"], 0), (["--version"], 0)])
def test_help_and_version_still_print_on_stdout(args, code):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tcpfp_cli", *args], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == code and done.stderr == ""
    assert ("tcpfp " if args == ["--version"] else "Usage: ") in done.stdout


@pytest.mark.parametrize("command, usage", [("decode", "decode [OPTIONS] [HEX]..."), ("report", "report [OPTIONS] [LOG]...")])
def test_usage_line_shows_the_arguments_as_typed(command, usage):
    """The usage line is what an operator copies: `[HEX]...`, not typer's doubled `[[HEX]...]...`."""
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and usage in " ".join(result.stdout.split())
