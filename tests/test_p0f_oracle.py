"""FINGERPRINT_P0F is exactly the ``raw_sig`` p0f 3 prints for the same SYN.

p0f is the reference implementation of the raw signature format, so it is the
oracle: every SYN here (hand-picked edge cases, then random ones from
hypothesis) is written to one raw-IP pcap, read back with ``p0f -r``, and
each ``mod=syn`` line's ``raw_sig`` must equal ``parse_syn(bytes).p0f`` for
the SYN with that source address and port.  p0f must also report every SYN:
a packet it silently ignored would otherwise hide a mismatch.
"""

from __future__ import annotations

import ipaddress
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from scapy.utils import wrpcap

from conftest import need_tool
from synbuild import (
    CWR, ECE, EOL, NOP, NS, PSH, SOK, SYN, URG,
    Syn, build_syn, freebsd_layout, linux_layout, macos_layout, mss, opt, pad4, syn_specs, ts,
    windows_layout, ws,
)
from tcpfp_cli.syn import parse_syn

LINKTYPE_RAW = 101
HTTP_GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

# (name, build_syn keyword arguments).  Each becomes one SYN with its own
# source address and port.
CASES: list[tuple[str, dict]] = [
    # --- real stacks -------------------------------------------------------
    ("linux", dict(ttl=64, ip_id=0x1234, window=64240, options=linux_layout(1460, 7, 123456))),
    ("linux-loopback", dict(ttl=64, ip_id=1, window=65495, options=linux_layout(65495, 7, 99))),
    ("windows", dict(ttl=128, ip_id=0x4321, window=64240, options=pad4(windows_layout(1460, 8, 0)))),
    ("macos", dict(ttl=64, ip_id=0, window=65535, options=macos_layout(1460, 6, 77))),
    ("freebsd", dict(ttl=64, ip_id=9, window=65535, options=pad4(freebsd_layout(1460, 6, 5)))),
    ("mozi-1406", dict(ttl=50, ip_id=7, window=28800, options=linux_layout(1406, 4, 1000))),
    ("mozi-1452", dict(ttl=49, ip_id=7, window=29040, options=linux_layout(1452, 5, 1000))),
    ("mozi-1452-small", dict(ttl=45, ip_id=7, window=5808, options=linux_layout(1452, 1, 1000))),
    ("no-options", dict(ttl=64, window=8192)),
    ("mss-only", dict(ttl=255, window=4128, options=mss(536))),
    # --- TTL buckets and distances ----------------------------------------
    *[(f"ttl-{t}", dict(ttl=t, ip_id=5, window=29200, options=linux_layout(1460, 7, 1)))
      for t in (0, 1, 28, 32, 33, 63, 64, 65, 92, 93, 99, 127, 128, 129, 219, 220, 254, 255)],
    # --- DF, IP ID, reserved bit, IP options -----------------------------------
    ("no-df-id0", dict(df=False, ip_id=0, options=mss(1460))),
    ("no-df-id", dict(df=False, ip_id=4242, options=mss(1460))),
    ("df-id0", dict(df=True, ip_id=0, options=mss(1460))),
    ("reserved-bit", dict(reserved_bit=True, ip_id=3, options=mss(1460))),
    ("ip-options-4", dict(ip_options=b"\x01\x01\x01\x00", window=14600, options=mss(1460))),
    ("ip-options-8", dict(ip_options=bytes.fromhex("0707040000000000"), options=linux_layout(1460, 7, 1))),
    ("ip-options-40", dict(ip_options=b"\x01" * 39 + b"\x00", window=29200, options=mss(1460))),
    # --- window as a multiple -------------------------------------------------
    ("win-mss-multiple", dict(window=1460 * 44, options=mss(1460))),
    ("win-not-multiple", dict(window=65535, options=mss(1460))),
    ("win-mss-12-with-ts", dict(window=1388 * 10, options=linux_layout(1400, 7, 5))),
    ("win-mss-12-ts0", dict(window=1388 * 10, options=linux_layout(1400, 7, 0))),
    ("win-mss-12-no-ts", dict(window=1388 * 10, options=pad4(mss(1400) + NOP + ws(7)))),
    ("win-1460-multiple", dict(window=1460 * 10, options=mss(1400))),
    ("win-1448-multiple", dict(window=1448 * 10, options=mss(1400))),
    ("win-1440-v4", dict(window=1440 * 10, options=mss(1000))),
    ("win-mtu-mss+40", dict(window=1040 * 10, options=mss(1000))),
    ("win-mtu-actual", dict(window=1060 * 10, options=pad4(mss(1000) + NOP + ws(7) + SOK + ts(1, 0)))),
    ("win-mtu-1500", dict(window=1500 * 7, options=mss(1234))),
    ("win-mss-99", dict(window=99 * 10, options=mss(99))),
    ("win-mss-100", dict(window=100 * 10, options=mss(100))),
    ("win-mss-0", dict(window=1460, options=mss(0))),
    ("win-0", dict(window=0, options=mss(1460))),
    ("win-no-mss", dict(window=1460 * 4)),
    # --- option layouts, EOL padding, unknown kinds -------------------------------
    ("eol-padding", dict(options=mss(1460) + EOL + EOL + EOL + EOL)),
    ("eol-nonzero-after", dict(options=mss(1460) + bytes.fromhex("00010101"))),
    ("eol-nonzero-middle", dict(options=mss(1460) + bytes.fromhex("00000100"))),
    ("eol-nonzero-last", dict(options=mss(1460) + bytes.fromhex("00000001"))),
    ("eol-first", dict(options=bytes.fromhex("0002040101"[:8]) + mss(1460))),
    ("unknown-mptcp", dict(options=pad4(mss(1460) + opt(30, b"\x00\x81") + SOK, NOP))),
    ("unknown-tfo-request", dict(options=pad4(mss(1460) + opt(34) + NOP + NOP))),
    ("unknown-experiment", dict(options=pad4(opt(253, b"\xf9\x89") + mss(1460)))),
    ("unknown-kind-99", dict(options=pad4(mss(1460) + opt(99)))),
    ("sack-block", dict(options=pad4(mss(1460) + NOP + NOP + opt(5, bytes(8))))),
    # --- ECN, flags, urgent pointer, sequence and ack -------------------------
    *[(f"ip-ecn-{e}", dict(tos=e, options=mss(1460))) for e in (1, 2, 3)],
    ("ip-dscp-only", dict(tos=0xB8, options=mss(1460))),
    ("tcp-ece-cwr", dict(flags=SYN | ECE | CWR, options=mss(1460))),
    ("tcp-ece", dict(flags=SYN | ECE, options=mss(1460))),
    ("tcp-cwr", dict(flags=SYN | CWR, options=mss(1460))),
    ("tcp-ns", dict(flags=SYN | NS, options=mss(1460))),
    ("tcp-reserved-bits", dict(reserved=0b111, options=mss(1460))),
    ("urg", dict(flags=SYN | URG, urgptr=5, options=mss(1460))),
    ("urg-ptr0", dict(flags=SYN | URG, urgptr=0, options=mss(1460))),
    ("uptr-without-urg", dict(urgptr=7, options=mss(1460))),
    ("psh", dict(flags=SYN | PSH, options=mss(1460))),
    ("seq-0", dict(seq=0, options=mss(1460))),
    ("ack-bit24", dict(ack=1 << 24, options=mss(1460))),
    ("ack-1", dict(ack=1, options=mss(1460))),
    ("ack-all-ones", dict(ack=0xFFFFFFFF, options=mss(1460))),
    ("ack-low-bits", dict(ack=0x00FFFFFF, options=mss(1460))),
    # --- timestamps and window scale ------------------------------------------
    ("tsval-0", dict(options=linux_layout(1460, 7, 0))),
    ("tsecr-nonzero", dict(options=pad4(mss(1460) + SOK + ts(5, 6) + NOP + ws(7)))),
    ("ws-14", dict(options=linux_layout(1460, 14, 1))),
    ("ws-15", dict(options=linux_layout(1460, 15, 1))),
    ("ws-255", dict(options=linux_layout(1460, 255, 1))),
    # --- repeated options: p0f takes each occurrence's quirks, the last one's value
    ("mss-twice", dict(window=14600, options=mss(1460) + mss(1000))),
    ("ws-15-then-7", dict(options=pad4(mss(1460) + ws(15) + ws(7)))),
    ("ws-7-then-15", dict(options=pad4(mss(1460) + ws(7) + ws(15)))),
    ("ts-val0-then-val1", dict(options=pad4(ts(0, 0) + ts(1, 0)))),
    ("ts-val1-then-val0", dict(options=pad4(ts(1, 0) + ts(0, 0)))),
    ("ts-ecr1-then-ecr0", dict(options=pad4(ts(3, 5) + ts(1, 0)))),
    # --- malformed options --------------------------------------------------------
    ("mss-len-5", dict(options=bytes.fromhex("020505b4") + bytes.fromhex("01010101"))),
    ("mss-len-3", dict(options=bytes.fromhex("020305b4"))),
    ("mss-len-6", dict(options=bytes.fromhex("020605b4000001010101" + "0101"))),
    ("ws-len-4", dict(options=bytes.fromhex("03040701") + mss(1460))),
    ("sok-len-3", dict(options=bytes.fromhex("04030001") + mss(1460))),
    ("ts-len-12", dict(options=bytes.fromhex("080c") + bytes(10) + mss(1460))),
    ("ts-past-end", dict(options=mss(1460) + bytes.fromhex("080a0000"))),
    ("mss-past-end", dict(options=bytes.fromhex("01010102"))),
    ("ws-at-last-byte", dict(options=mss(1460) + bytes.fromhex("01010103"))),
    ("sack-odd-length", dict(options=pad4(mss(1460) + opt(5, bytes(9)), NOP))),
    ("sack-too-short", dict(options=pad4(mss(1460) + opt(5, bytes(1)), NOP))),
    ("sack-too-long", dict(options=pad4(opt(5, bytes(33)), NOP))),
    ("unknown-len-1", dict(options=mss(1460) + bytes.fromhex("1e010101"))),
    ("unknown-len-0", dict(options=mss(1460) + bytes.fromhex("1e000101"))),
    ("unknown-past-end", dict(options=mss(1460) + bytes.fromhex("1e080101"))),
    ("nops-24", dict(options=NOP * 24 + mss(1460))),
    ("nops-25", dict(options=NOP * 25 + mss(1460) + NOP * 3)),
    ("nops-36", dict(options=NOP * 36 + mss(1460))),
    # --- SYNs with data (TCP Fast Open) ---------------------------------------
    ("payload", dict(options=linux_layout(1460, 7, 1), payload=HTTP_GET)),
    ("payload-tfo-cookie", dict(options=pad4(mss(1460) + opt(34, bytes(8)) + NOP + NOP), payload=HTTP_GET)),
    # --- IPv6 without extension headers ------------------------------------------
    ("v6-linux", dict(version=6, ttl=64, window=64800, options=linux_layout(1440, 7, 9))),
    ("v6-flow", dict(version=6, flow=0xABCDE, window=64800, options=linux_layout(1440, 7, 9))),
    ("v6-flow-1", dict(version=6, flow=1, options=mss(1440))),
    *[(f"v6-tc-{tc:#x}", dict(version=6, tos=tc, options=mss(1440))) for tc in (1, 2, 3, 0xB8, 0xB9, 0xFF)],
    *[(f"v6-hlim-{h}", dict(version=6, ttl=h, options=mss(1440))) for h in (1, 32, 64, 65, 128, 255)],
    ("v6-win-1440", dict(version=6, window=1440 * 20, options=mss(1400))),
    ("v6-win-1428", dict(version=6, window=1428 * 20, options=mss(1400))),
    ("v6-win-mtu-60", dict(version=6, window=1060 * 9, options=pad4(mss(1000) + NOP + ws(7) + SOK + ts(1, 0)))),
    ("v6-win-mtu-actual", dict(version=6, window=1080 * 9, options=pad4(mss(1000) + NOP + ws(7) + SOK + ts(1, 0)))),
    ("v6-windows", dict(version=6, ttl=128, window=64800, options=pad4(windows_layout(1440, 8, 0)))),
    ("v6-macos", dict(version=6, window=65535, options=macos_layout(1440, 6, 5))),
    ("v6-ecn-setup", dict(version=6, flags=SYN | ECE | CWR, options=linux_layout(1440, 7, 9))),
    ("v6-payload", dict(version=6, options=linux_layout(1440, 7, 9), payload=HTTP_GET)),
    ("v6-malformed", dict(version=6, options=bytes.fromhex("020505a0") + bytes.fromhex("00000001"))),
]


def p0f_raw_sigs(p0f: str, syns: list[Syn], workdir: Path) -> dict[tuple, str]:
    """Run p0f over the SYNs; return {(address, port): raw_sig} of its ``mod=syn`` lines."""
    pcap, log = workdir / "syns.pcap", workdir / "p0f.log"
    wrpcap(str(pcap), [s.raw for s in syns], linktype=LINKTYPE_RAW)
    subprocess.run(
        [p0f, "-r", str(pcap), "-o", str(log)],
        check=True, capture_output=True, timeout=20,
    )
    sigs: dict[tuple, str] = {}
    for line in log.read_text().splitlines():
        fields = dict(f.split("=", 1) for f in line.split("] ", 1)[1].split("|") if "=" in f)
        if fields.get("mod") != "syn":
            continue
        addr, port = fields["cli"].rsplit("/", 1)
        key = (ipaddress.ip_address(addr), int(port))
        assert key not in sigs, f"p0f reported {key} twice"
        sigs[key] = fields["raw_sig"]
    return sigs


def check_against_p0f(p0f: str, syns: list[Syn], names: list[str], workdir: Path) -> None:
    keys = [(ipaddress.ip_address(s.src), s.sport) for s in syns]
    assert len(set(keys)) == len(keys), "every SYN needs its own address/port"
    sigs = p0f_raw_sigs(p0f, syns, workdir)
    missing = [name for name, key in zip(names, keys) if key not in sigs]
    mismatches = []
    for name, key, syn in zip(names, keys, syns):
        if key in sigs:
            ours = parse_syn(syn.raw).p0f
            if ours != sigs[key]:
                mismatches.append(f"{name}: {syn.raw.hex()}\n   p0f:  {sigs[key]}\n   ours: {ours}")
    assert not missing, f"p0f printed no signature for {len(missing)} SYNs: {missing}"
    assert not mismatches, f"{len(mismatches)} of {len(syns)} differ:\n" + "\n".join(mismatches)


@pytest.fixture(scope="module")
def p0f() -> str:
    return need_tool("p0f")


def test_case_names_are_unique():
    names = [name for name, _ in CASES]
    assert len(names) == len(set(names))


def test_every_edge_case_matches_p0f(p0f, tmp_path):
    syns = [build_syn(index=i, **kw) for i, (_, kw) in enumerate(CASES)]
    check_against_p0f(p0f, syns, [name for name, _ in CASES], tmp_path)


def test_saved_syn_without_payload_keeps_the_signature(p0f, tmp_path):
    """The kernel saves no payload; pclass must still say ``+`` (from the IP length): the
    saved bytes give the signature p0f prints for the whole packet, payload and all."""
    payload_cases = [(n, kw) for n, kw in CASES if kw.get("payload")]
    assert payload_cases
    syns = [build_syn(index=i, **kw) for i, (_, kw) in enumerate(payload_cases)]
    sigs = p0f_raw_sigs(p0f, syns, tmp_path)
    for (name, kw), syn in zip(payload_cases, syns):
        header_end = len(syn.raw) - len(kw["payload"])
        saved = parse_syn(syn.raw[:header_end])
        assert saved.p0f == sigs[(ipaddress.ip_address(syn.src), syn.sport)], name
        assert saved.p0f.endswith(":+"), name


# 3 runs of 100 SYNs, each run through one p0f process.  (Lists much longer
# than 100 make hypothesis itself slow to generate.)
# No shrinking: every shrink step would rebuild 100 SYNs and rerun p0f, and the
# failure message already lists each differing SYN with its hex.
@settings(
    max_examples=3, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.large_base_example],  # a fixed 100-SYN list is large by design
)
@given(specs=st.lists(syn_specs(), min_size=100, max_size=100))
def test_random_syns_match_p0f(p0f, tmp_path_factory, specs):
    """Random well-formed SYNs: p0f reports each one, with our signature."""
    syns = [spec.build(i) for i, spec in enumerate(specs)]
    check_against_p0f(p0f, syns, [f"random-{i}" for i in range(len(syns))],
                      tmp_path_factory.mktemp("p0f"))
