"""``sigdb.match`` names the same signature as p0f 3 for a SYN built from every SYN signature in p0f.fp.

p0f is the reference for its own database, so it is the oracle.  For every
``sig`` line of the ``[tcp:request]`` section of Debian's /etc/p0f/p0f.fp the
test reads the signature (with its own small reader, not ours), builds a SYN
that satisfies it, and variants of that SYN meant to match only fuzzily or
through the IP-version rules: the same SYN over IPv6, a few hops further
with DF cleared, with DF cleared and a zero IP ID and ECN (quirks
that appear), a TTL too far below the signature's, and a TTL above it.
All go into one raw-IP pcap, each from its own address, and through one
``p0f -r`` run with that database.  For each ``mod=syn`` line, p0f's label
(``os=``/``app=``, ``???`` for none), its ``generic``/``fuzzy`` flags and its
distance must be what ``match`` says for the same bytes with only that
database loaded, for at least 99% of the SYNs of each group; every
disagreement is printed.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest
from scapy.utils import wrpcap

from conftest import need, need_tool
from synbuild import ACK, CWR, ECE, EOL, NOP, PSH, SOK, SYN, URG, Syn, build_syn, mss, opt, ts, ws
import test_sigdb as t
from tcpfp_cli.sigdb import Databases, SignatureFileError, load_databases, match, parse_database
from tcpfp_cli.syn import parse_syn

P0F_FP = "/etc/p0f/p0f.fp"
LINKTYPE_RAW = 101
HTTP_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
MIN_AGREEMENT = 0.99


def request_sigs(path: str) -> list[tuple[int, str]]:
    """(line number, value) of each ``sig`` line in ``[tcp:request]``."""
    found, inside = [], False
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if line.startswith("["):
            inside = line == "[tcp:request]"
        elif inside and line.startswith("sig") and "=" in line:
            found.append((number, line.split("=", 1)[1].strip()))
    return found


class Built(NamedTuple):
    group: str
    line: int
    sig: str
    syn: Syn


def build_for(sig: str, index: int, variant: str) -> Syn | None:
    """A SYN meant to satisfy ``sig`` (variant "base"), or one of its variants; None if impossible."""
    ver, ttl_text, olen, mss_text, win, layout, quirk_text, pclass = sig.split(":")
    wsize, scale_text = win.split(",")
    quirks = set(quirk_text.split(",")) - {""}
    random_ttl = ttl_text.endswith("-")
    if random_ttl:
        ittl = int(ttl_text[:-1])
    else:
        base, _, dist = ttl_text.partition("+")
        ittl = int(base) + int(dist or 0)

    version = 6 if ver == "6" or "flow" in quirks or variant == "v6" else 4
    ttl = ittl - (10 if random_ttl else 3)
    df = "df" in quirks or "id+" in quirks
    if variant == "nodf":
        ttl -= 4
        df = False
    elif variant == "idecn":
        df = False
        quirks = (quirks - {"id+"}) | {"id-", "ecn"}
    elif variant == "far":
        ttl = ittl - 40
    elif variant == "above":
        ttl = ittl + 1
    if not 1 <= ttl <= 255:
        return None
    if "id+" in quirks or (not df and "id-" not in quirks):
        ip_id = 0x1000 + index
    else:
        ip_id = 0

    mss_value = (1440 if version == 6 else 1460) if mss_text == "*" else int(mss_text)
    scale = 7 if scale_text == "*" else int(scale_text)
    if wsize == "*":
        window = 5000
    elif wsize.startswith("%"):
        n = int(wsize[1:])
        window = n * 2 if n * 2 <= 65535 else n
    elif wsize.startswith("mss*"):
        window = int(wsize[4:]) * mss_value
    elif wsize.startswith("mtu*"):
        window = int(wsize[4:]) * (mss_value + 40)
    else:
        window = int(wsize)
    if window > 65535:
        return None

    area = b""
    for item in layout.split(",") if layout else ():
        if item == "mss":
            area += mss(mss_value)
        elif item == "ws":
            area += ws(scale)
        elif item == "sok":
            area += SOK
        elif item == "nop":
            area += NOP
        elif item == "ts":
            area += ts(0 if "ts1-" in quirks else 1000 + index, 77 if "ts2+" in quirks else 0)
        elif item == "sack":
            area += opt(5, bytes(8))
        elif item.startswith("?"):
            area += opt(int(item[1:]))
        elif item.startswith("eol+"):
            pad = bytearray(int(item[4:]))
            if "opt+" in quirks and len(pad) >= 2:
                pad[0] = 1
            area += EOL + bytes(pad)
    if "bad" in quirks and area[:1] == b"\x02":
        area = area[:1] + b"\x05" + area[2:]  # an MSS option whose length byte lies
    if len(area) % 4 or len(area) > 40:
        return None

    flags = SYN
    flags |= ECE | CWR if "ecn" in quirks else 0
    flags |= URG if "urgf+" in quirks else 0
    flags |= PSH if "pushf+" in quirks else 0
    flags |= ACK if "ack-" in quirks else 0
    return build_syn(
        index=index, version=version, ttl=ttl, df=df, ip_id=ip_id,
        reserved_bit="0+" in quirks and version == 4,
        flow=0x12345 if "flow" in quirks else 0,
        ip_options=(NOP * (int(olen) - 1) + EOL) if int(olen) and version == 4 else b"",
        window=window, seq=0 if "seq-" in quirks else 5000 + index,
        ack=1 << 24 if "ack+" in quirks else 0, flags=flags,
        urgptr=7 if "uptr+" in quirks else 0, options=area,
        payload=HTTP_GET if pclass == "+" else b"",
    )


GROUPS = ("base", "v6", "nodf", "idecn", "far", "above")


class P0fSays(NamedTuple):
    label: str  # "???" for no match
    params: frozenset[str]
    dist: str
    raw_sig: str


def run_p0f(p0f: str, syns: list[Syn], workdir: Path, database: str | Path = P0F_FP) -> dict[tuple, P0fSays]:
    pcap, log = workdir / "syns.pcap", workdir / "p0f.log"
    wrpcap(str(pcap), [s.raw for s in syns], linktype=LINKTYPE_RAW)
    subprocess.run([p0f, "-f", str(database), "-r", str(pcap), "-o", str(log)],
                   check=True, capture_output=True, timeout=30)
    said: dict[tuple, P0fSays] = {}
    for line in log.read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split("] ", 1)[1].split("|") if "=" in f)
        # p0f calls a SYN with its own sendsyn tool's window and MSS a "sendsyn probe".
        if fields.get("mod") not in ("syn", "sendsyn probe"):
            continue
        addr, port = fields["cli"].rsplit("/", 1)
        label = fields.get("os") or fields.get("app") or "???"
        params = frozenset(fields["params"].split()) - {"none"}
        key = (ipaddress.ip_address(addr), int(port))
        said[key] = P0fSays(label, params, fields["dist"], fields["raw_sig"])
    return said


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> tuple[list[Built], dict[tuple, P0fSays]]:
    p0f = need_tool("p0f")
    need(os.path.exists(P0F_FP), f"needs p0f's database {P0F_FP}")
    sigs = request_sigs(P0F_FP)
    built: list[Built] = []
    unbuildable = []
    for group in GROUPS:
        for line, sig in sigs:
            if group == "v6" and sig.startswith("6:"):
                continue
            syn = build_for(sig, len(built), group)
            if syn is None:
                unbuildable.append((group, line, sig))
                continue
            built.append(Built(group, line, sig, syn))
    # Every signature must have its base SYN; only TTL variants may fall off the range.
    assert not [u for u in unbuildable if u[0] not in ("far", "above")], unbuildable
    return built, run_p0f(p0f, [b.syn for b in built], tmp_path_factory.mktemp("sigdb"))


def ours(raw: bytes, databases) -> P0fSays:
    """Our answer, written the way p0f writes its answer."""
    fp = parse_syn(raw)
    m = match(fp, databases)
    if m is None:
        return P0fSays("???", frozenset(), "", fp.p0f)
    params = {"generic"} if m.generic else set()
    if m.kind == "fuzzy":
        params.add("fuzzy")
    if m.signature.random_ttl:
        params.add("random_ttl")
    dist = f"<= {m.distance}" if m.signature.random_ttl else str(m.distance)
    return P0fSays(m.display, frozenset(params), dist, fp.p0f)


def compare(built: list[Built], said: dict[tuple, P0fSays], group: str) -> tuple[int, list[str]]:
    databases = load_databases([P0F_FP])
    cases = [b for b in built if b.group == group]
    disagreements = []
    for b in cases:
        theirs = said.get((ipaddress.ip_address(b.syn.src), b.syn.sport))
        assert theirs is not None, f"p0f reported nothing for the {group} SYN of line {b.line}"
        mine = ours(b.syn.raw, databases)
        # p0f's params may also say excess_dist or tos:..., which are not about the match.
        their_params = theirs.params & {"generic", "fuzzy", "random_ttl"}
        their_dist = theirs.dist if theirs.label != "???" else ""
        if (mine.label, mine.params, mine.dist) != (theirs.label, their_params, their_dist):
            disagreements.append(
                f"{group} SYN for line {b.line} ({b.sig}), raw_sig {theirs.raw_sig}:\n"
                f"   p0f:  {theirs.label!r} {sorted(their_params)} dist={their_dist}\n"
                f"   ours: {mine.label!r} {sorted(mine.params)} dist={mine.dist}"
            )
    return len(cases), disagreements


@pytest.mark.parametrize("group", GROUPS)
def test_labels_agree_with_p0f(oracle, group):
    built, said = oracle
    total, disagreements = compare(built, said, group)
    agreement = 1 - len(disagreements) / total
    print(f"\n{group}: {total - len(disagreements)}/{total} agree ({agreement:.1%})")
    for d in disagreements:
        print(d)
    assert total > 0
    assert agreement >= MIN_AGREEMENT, "\n".join(disagreements)


def test_the_built_syns_exercise_every_kind_of_answer(oracle):
    """The SYNs are worth comparing: p0f answers with exact, generic, fuzzy and no matches."""
    built, said = oracle
    answers = [said[(ipaddress.ip_address(b.syn.src), b.syn.sport)] for b in built]
    base = [a for a, b in zip(answers, built) if b.group == "base"]
    # A SYN built for a signature matches it or an earlier one: p0f knows nearly all of them.
    assert sum(a.label != "???" for a in base) >= 0.95 * len(base)
    assert any("generic" in a.params for a in answers)
    assert any("fuzzy" in a.params for a in answers)
    assert any("random_ttl" in a.params for a in answers)
    assert any(a.label == "???" for a in answers)


# --------------------------------------------------------------------------- reading files

def p0f_loads(p0f: str, text: str, workdir: Path) -> int | None:
    """None if p0f loads the file; else the line number its error names (0 if none)."""
    fp, pcap = workdir / "test.fp", workdir / "empty.pcap"
    fp.write_text(text)
    if not pcap.exists():
        wrpcap(str(pcap), [], linktype=LINKTYPE_RAW)
    done = subprocess.run([p0f, "-f", str(fp), "-r", str(pcap)], capture_output=True, text=True, timeout=10)
    if done.returncode == 0:
        return None
    found = re.search(r"line (\d+)", done.stderr)
    return int(found[1]) if found else 0


def file_cases() -> list[tuple[str, str]]:
    cases = [(f"sig {v}", t.HEAD + f"sig = {v}\n") for v, _ in t.VALID + t.MALFORMED_SIGS]
    cases += [(f"file {reason}", text) for text, _, reason in t.MALFORMED_FILES]
    cases += [(f"overlap {why}", "classes = unix\n[tcp:request]\n" + body) for why, body in t.NOT_COVERED]
    cases += [("labels", t.LABELS_TEXT), ("sections", t.SECTIONS_TEXT), ("matching", t.DB_TEXT)]
    return cases


#: Files p0f reads differently on purpose (see the sigdb module docstring).
P0F_ONLY_ACCEPTS = {
    "sig *:64::*:*,*:::0",  # an empty IP option length, which p0f reads as 0
    # a label flavor that a log line could not hold as it is (p0f prints labels, it logs no fields)
    "file holds a quote", "file a backslash", "file that is not printable ASCII", "file not printable",
}


def test_p0f_loads_the_files_we_load_and_names_the_same_line(tmp_path):
    p0f = need_tool("p0f")
    differ = []
    for name, text in file_cases():
        try:
            parse_database(text)
            ours = None
        except SignatureFileError as err:
            ours = err.line
        theirs = p0f_loads(p0f, text, tmp_path)
        if name in P0F_ONLY_ACCEPTS:
            assert (ours is not None, theirs) == (True, None), name
        elif ours != theirs:
            differ.append(f"{name}: p0f {theirs}, ours {ours}")
    assert not differ, "\n".join(differ)


def test_p0f_prints_a_name_as_first_spelled(tmp_path):
    """Names are compared without case; the label is printed as the file first spelled it."""
    p0f = need_tool("p0f")
    fp = tmp_path / "labels.fp"
    fp.write_text(t.LABELS_TEXT)
    syn = build_syn(ttl=60, df=False, ip_id=3, options=mss(1460) + NOP + NOP + SOK)
    said = run_p0f(p0f, [syn], tmp_path, fp)
    ours = match(parse_syn(syn.raw), Databases([parse_database(t.LABELS_TEXT)]))
    assert said[(ipaddress.ip_address(syn.src), syn.sport)].label == ours.display == "Linux 2.x"
