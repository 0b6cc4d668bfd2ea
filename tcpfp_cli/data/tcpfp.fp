;
; tcpfp.fp - tcpfp's own SYN signatures (p0f v3 format), for the stacks that
; p0f's 2016 database misses or labels poorly.
;
; tcpfp searches the user's --signatures files first, then this file, then
; p0f's database.  Matching is p0f's: the first exact specific (s) signature
; wins, else the first exact generic (g) one, else the first fuzzy one.  So
; the specific signatures below override p0f's own for the same packets,
; and the generic ones are a fallback that still comes before p0f's
; generic signatures.
;
; Every signature was written from a checked fact; the comment before each
; group says which.  None is copied from another database.  See
; docs/signatures.md for the sources in full and the rules that keep labels
; right on the real internet (NAT, TTL rewriting, MSS clamping, options
; overwritten with NOPs).
;
; Version field: "*" signatures carry the IPv4 quirks (df, id+) and the
; IPv6 "flow" quirk together; p0f ignores the IPv4 ones on IPv6 and "flow"
; on IPv4, so one line covers IPv4 and IPv6 with a flow label.  IPv6
; without a flow label needs a second line without "flow" (the same IPv4
; quirks, so that it adds nothing for IPv4).  A "6:" line with no quirks
; would not do: p0f does not compare the IP version, and such a line would
; also match IPv4 SYNs without DF.
;

classes = win,unix,other

[tcp:request]

; ---------------------------------------------------------------- Linux
;
; Source: real SYNs from this machine's kernel (Linux 6.18), read back with
; TCP_SAVE_SYN/TCP_SAVED_SYN in a private network namespace with lo at MTU
; 1500 (the test tests/test_os_labels.py repeats this).  With Debian's
; default tcp_rmem "4096 131072 6291456":
;   - options are always mss,sok,ts,nop,ws (net/ipv4/tcp_output.c writes
;     MSS, then SACK-permitted+timestamp, then NOP+window scale);
;   - the window is the largest multiple of the MSS not above 65536:
;     MSS 1460 -> 64240 (44x), 1452 -> 65340 (45x), 1400 -> 64400 (46x),
;     1360 -> 65280 (48x), IPv6 1440 -> 64800 (45x), 536 -> 65392 (122x);
;   - window scale 7 (it follows tcp_rmem[2]: 16 MiB gave 9, 32 MiB 10);
;   - IPv4: DF set and a random non-zero IP ID (quirks df,id+);
;     IPv6: a non-zero flow label (quirk flow).
; A larger tcp_rmem[1] (Android sets "524288 1048576 ..." per network type)
; gave the window 65535 with the same layout.
;
label = s:unix:Linux:4.19 or newer
sig   = *:64:0:*:mss*44,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*45,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*46,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*47,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*48,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*49,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*50,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*51,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*52,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*53,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:mss*54,*:mss,sok,ts,nop,ws:df,id+,flow:0

; Same kernel, tcp_rmem[1] = 1048576 (Android's per-network buffer sizes):
; window 65535 whatever the MSS.  Android's framework raises the buffers,
; so this window is typical of Android phones, but a tuned desktop or
; server sends it too.
label = s:unix:Linux:Android or large receive buffer
sig   = *:64:0:*:65535,*:mss,sok,ts,nop,ws:df,id+,flow:0

; Embedded Linux (routers, modems, IoT), the devices behind the Mozi and
; Boaform requests in mod_tcpfingerprint's README
; (its "Motivation/Examples" section, Mozi and Boaform): Linux options and TTL,
; a window that is a small multiple of an MSS (5808 = 4x1452,
; 29040 = 20x1452, 28800 = 20x1440 with the MSS later clamped to 1406)
; and window scale 1 to 5.  The README explains the small scale: on
; low-memory kernels the receive buffer limit, and so the scale, follows
; the memory size.  Checked here: the same kernel sends scales 1, 2, 3 and
; 5 when the receive buffer limit is 64 KiB, 128 KiB, 256 KiB and 1 MiB
; (SO_RCVBUF / TCP_WINDOW_CLAMP before connect), with the Linux layout.
; The window is left open (*): MSS clamping breaks the multiple.
label = s:unix:Linux:embedded (low memory, window scale 1-5)
sig   = *:64:0:*:*,1:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:*,2:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:*,3:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:*,4:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:*,5:mss,sok,ts,nop,ws:df,id+,flow:0

; Linux with MPTCP: this kernel with net.mptcp.enabled=1 and an
; IPPROTO_MPTCP socket appends option 30 after the window scale.
label = s:unix:Linux:MPTCP
sig   = *:64:0:*:*,*:mss,sok,ts,nop,ws,?30:df,id+,flow:0

; Middleboxes that remove an option overwrite it with NOPs in place.  The
; Linux layout stays recognisable: timestamp (10 bytes) -> 10 NOPs,
; SACK-permitted (2 bytes) -> 2 NOPs, window scale (3 bytes) -> 3 NOPs.
; These are specific so that they beat p0f's "BaiduSpider" label for the
; first layout (a crawler name, not a system).
label = s:unix:Linux:timestamps removed in transit
sig   = *:64:0:*:*,*:mss,sok,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,ws:df,id+,flow:0
label = s:unix:Linux:SACK and timestamps removed in transit
sig   = *:64:0:*:*,*:mss,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,ws:df,id+,flow:0
label = s:unix:Linux:window scale removed in transit
sig   = *:64:0:*:*,0:mss,sok,ts,nop,nop,nop,nop:df,id+,flow:0

; Any other window or scale with the Linux layout (older kernels: mss*10,
; mss*20; tuned tcp_rmem: mss*29, mss*30; scale 0 when SO_RCVBUF is small;
; scales 6-14).  Generic, so that p0f's specific version guesses for
; those windows still come first.
label = g:unix:Linux:
sig   = *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:64:0:*:*,*:mss,sok,ts,nop,ws:df,id+:0

; The same kernel with one option family switched off by sysctl:
; tcp_timestamps=0 -> mss,nop,nop,sok,nop,ws; tcp_sack=0 ->
; mss,nop,nop,ts,nop,ws; tcp_window_scaling=0 -> mss,sok,ts.  (The stack
; pads with NOPs where the missing option was paired.)  No other common
; stack uses these orders.
label = g:unix:Linux:timestamps off
sig   = *:64:0:*:*,*:mss,nop,nop,sok,nop,ws:df,id+,flow:0
sig   = *:64:0:*:*,*:mss,nop,nop,sok,nop,ws:df,id+:0
label = g:unix:Linux:SACK off
sig   = *:64:0:*:*,*:mss,nop,nop,ts,nop,ws:df,id+,flow:0
label = g:unix:Linux:window scaling off
sig   = *:64:0:*:*,0:mss,sok,ts:df,id+,flow:0

; The Linux layout arriving with a TTL above 64: the sender's initial TTL
; was raised (ip_default_ttl) or a middlebox rewrote it.  The option order
; is the stronger evidence (docs/signatures.md, "TTL rewriting").  p0f
; accepts a TTL up to 35 below a signature's, so six steps cover 65..255.
label = g:unix:Linux:TTL changed
sig   = *:99:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:134:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:169:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:204:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:239:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0
sig   = *:255:0:*:*,*:mss,sok,ts,nop,ws:df,id+,flow:0

; ---------------------------------------------------------------- Windows
;
; Source: a published Windows SYN capture dissected byte by byte
; (https://mathewkennedy.tech/blog/tcp_packet_wireshark): IP TTL 128, DF,
; non-zero IP ID, window 64240 (0xfaf0), options MSS 1460, NOP, window
; scale 8, NOP, NOP, SACK-permitted, no timestamps.  The same values
; (64240, TTL 128, DF; 65535 on some machines) are listed for Windows 10/11
; in clioon/net_radar scanner/osfingerprint_db.py.  Window scale 8 is
; what the default "normal" receive-window auto-tuning level advertises.
; 64240 is 44 x 1460; for other MSS values the window is taken as the
; largest MSS multiple below 64 KiB, like 64240 itself.
;
label = s:win:Windows:10 or 11
sig   = *:128:0:*:64240,*:mss,nop,ws,nop,nop,sok:df,id+,flow:0
sig   = *:128:0:*:mss*45,8:mss,nop,ws,nop,nop,sok:df,id+,flow:0
sig   = *:128:0:*:mss*46,8:mss,nop,ws,nop,nop,sok:df,id+,flow:0
sig   = *:128:0:*:mss*47,8:mss,nop,ws,nop,nop,sok:df,id+,flow:0
sig   = *:128:0:*:mss*48,8:mss,nop,ws,nop,nop,sok:df,id+,flow:0
label = s:win:Windows:10, 11 or Server 2016 and newer
sig   = *:128:0:*:65535,8:mss,nop,ws,nop,nop,sok:df,id+,flow:0
; Any other window or scale with this layout and TTL; the second line is
; IPv6 without a flow label (see the top of the file).
label = g:win:Windows:
sig   = *:128:0:*:*,*:mss,nop,ws,nop,nop,sok:df,id+,flow:0
sig   = *:128:0:*:*,*:mss,nop,ws,nop,nop,sok:df,id+:0

; Windows with RFC 1323 timestamps turned on (netsh ... timestamps=enabled,
; or Set-NetTCPSetting -Timestamps Enabled): the stack then writes the
; BSD-style order mss,nop,ws,sok,ts.  FreeBSD uses the same order with TTL
; 64 (below); TTL 128 tells them apart.
label = g:win:Windows:timestamps enabled
sig   = *:128:0:*:*,*:mss,nop,ws,sok,ts:df,id+,flow:0

; ---------------------------------------------------------------- Apple
;
; Source: XNU (apple-oss-distributions/xnu), bsd/netinet/tcp_output.c: a
; SYN carries MSS, then NOP+window scale as one word, then NOP,NOP,timestamp,
; then SACK-permitted "last", then EOL padding to 4 bytes:
; mss,nop,ws,nop,nop,ts,sok,eol+1 (24 bytes).  bsd/netinet/ip_output.c
; has rfc6864 = 1: a DF datagram gets IP ID 0 (quirk df without id+).
; The window scale comes from tcp_get_max_rwinscale (tcp_subr.c): the
; smallest scale at which 64 KiB << scale reaches the autotuning maximum,
; 4 MiB on macOS (measured with sysctl net.inet.tcp.autorcvbufmax, as
; reported in public notes) -> scale 6; XNU's embedded build (iOS) used
; 2 MiB -> scale 5.  An app that sets SO_RCVBUF changes the scale.  XNU
; sends ECN-setup SYNs (ECE+CWR, quirk ecn) on a share of connections
; (tcp ecn = 1, ecn_setup_percentage 50 in tcp_sysctls.h).  A public
; iOS SYN profile built from 213 samples (window 65535, scale 6, MSS 1400,
; SYN+ECE+CWR, IP ID 0, DF, TTL 64) shows that current iOS also uses
; scale 6, so scale 6 cannot tell macOS from iOS.
;
label = s:unix:macOS:11 or newer (or iOS)
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df,flow:0
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df,ecn,flow:0
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df:0
sig   = *:64:0:*:65535,6:mss,nop,ws,nop,nop,ts,sok,eol+1:df,ecn:0
label = s:unix:iOS:iPhone or iPad (or macOS with a 2 MiB buffer)
sig   = *:64:0:*:65535,5:mss,nop,ws,nop,nop,ts,sok,eol+1:df,flow:0
sig   = *:64:0:*:65535,5:mss,nop,ws,nop,nop,ts,sok,eol+1:df,ecn,flow:0
sig   = *:64:0:*:65535,5:mss,nop,ws,nop,nop,ts,sok,eol+1:df:0
sig   = *:64:0:*:65535,5:mss,nop,ws,nop,nop,ts,sok,eol+1:df,ecn:0
; Older XNU (before rfc6864) gave a random IP ID; other windows and scales
; come from apps that size their buffers.
label = g:unix:macOS:
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df,flow:0
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df,ecn,flow:0
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+,flow:0
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df,id+,ecn,flow:0
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df:0
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,ts,sok,eol+1:df,ecn:0
; The timestamp overwritten with 10 NOPs in transit.
label = g:unix:macOS:timestamps removed in transit
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,sok,eol+1:df,flow:0
sig   = *:64:0:*:*,*:mss,nop,ws,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,nop,sok,eol+1:df,ecn,flow:0

; ---------------------------------------------------------------- FreeBSD
;
; Source: freebsd/freebsd-src sys/netinet/tcp_output.c, tcp_addoptions():
; options in mask order MSS, window scale (NOPs until the offset is odd ->
; nop,ws), SACK-permitted (NOPs until even -> none), timestamp (NOPs until
; offset % 4 == 2 -> none): mss,nop,ws,sok,ts, 20 bytes.  The window is
; 65535 (net.inet.tcp.recvspace 64 KiB); tcp_connect() raises the scale
; while 65535 << scale is below sb_max (kern.ipc.maxsockbuf, 2 MiB) ->
; scale 6.  sys/netinet/ip_id.c: ip_rfc6864 = 1, so a DF datagram gets IP
; ID 0 (quirk df without id+) since FreeBSD 12.
;
label = s:unix:FreeBSD:12 or newer
sig   = *:64:0:*:65535,6:mss,nop,ws,sok,ts:df,flow:0
sig   = *:64:0:*:65535,6:mss,nop,ws,sok,ts:df:0
label = g:unix:FreeBSD:
sig   = *:64:0:*:65535,*:mss,nop,ws,sok,ts:df,flow:0
sig   = *:64:0:*:65535,*:mss,nop,ws,sok,ts:df,id+,flow:0
sig   = *:64:0:*:65535,*:mss,nop,ws,sok,ts:df:0
