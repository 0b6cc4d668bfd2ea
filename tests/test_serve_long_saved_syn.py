"""A saved SYN longer than 512 bytes (IPv6 with a long hop-by-hop header) is logged whole.

CPython's ``getsockopt`` refuses a buffer above 1024 bytes, so a retry with a
larger Python buffer can never succeed; the SYN fields must still be there.
"""

from __future__ import annotations

import os
import sys

import pytest
from scapy.layers.inet6 import HBHOptUnknown, IPv6ExtHdrHopByHop

from conftest import need, need_root
from fakehost import Conversation, Namespace, build_syn, replay, wait_for_port

PORT = 8080
FORMAT = '"%r" %{FINGERPRINT_IP_OLEN}g %{FINGERPRINT_TCP_OPTIONS}g %{FINGERPRINT_SAVED_SYN}g'


def _hop_by_hop(option_count: int) -> IPv6ExtHdrHopByHop:
    """Unknown skippable options (type 0x1e) of 200 bytes each; 3 or 7 of them fill a whole
    number of 8-byte units, so no padding is needed (Linux drops more than 7 pad bytes in a row)."""
    assert (2 + 202 * option_count) % 8 == 0
    return IPv6ExtHdrHopByHop(options=[HBHOptUnknown(otype=0x1E, optdata=b"\0" * 200)
                                       for _ in range(option_count)])


@pytest.mark.parametrize("option_count", [3, 7], ids=["saved-syn-688-bytes", "saved-syn-1496-bytes"])
def test_a_long_saved_syn_is_logged_whole(tmp_path, option_count):
    need_root()
    need(os.path.exists("/dev/net/tun"), "needs /dev/net/tun")
    syn = build_syn(PORT, version=6, ext_headers=[_hop_by_hop(option_count)],
                    options=[("MSS", 1440), ("SAckOK", b""), ("Timestamp", (7, 0)), ("NOP", None),
                             ("WScale", 7)])
    assert len(syn) > 512
    log = tmp_path / "access.log"
    with Namespace() as ns:
        server = ns.popen([sys.executable, "-m", "tcpfp_cli", "serve", "--port", str(PORT),
                           "--log", str(log), "--log-format", FORMAT])
        wait_for_port(ns, PORT, timeout=15)
        [result] = replay(ns, [Conversation(syn)], port=PORT)
        ns.stop(server)
    assert result.ok, result.error
    [line] = log.read_text().splitlines()
    _, olen, options, saved = line.rsplit(" ", 3)
    assert saved == syn.hex()
    assert olen == str(len(syn) - 40 - 40)
    assert options == "2,4,8,1,3"
