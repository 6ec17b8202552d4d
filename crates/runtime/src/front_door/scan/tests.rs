//! Each test names the rule it checks (RFC 9112 section, or the front door's own limit).

use super::*;

/// Feeds `input` whole and collects the steps until the scanner needs more or refuses:
/// the bytes passed, and the refusal if any.
fn run(input: &[u8]) -> (usize, Option<Refusal>, u64) {
    run_with(HeadLimits::default(), input)
}

fn run_with(limits: HeadLimits, input: &[u8]) -> (usize, Option<Refusal>, u64) {
    let mut s = Scanner::new(limits);
    let mut at = 0;
    loop {
        match s.scan(&input[at..]) {
            Step::Pass(n) => {
                assert!(n > 0, "a pass moves forward");
                at += n;
            }
            Step::Need => return (at, None, s.requests()),
            Step::Refuse(r) => return (at, Some(r), s.requests()),
        }
    }
}

/// Feeds `input` one byte at a time: the decisions must not depend on how the bytes
/// arrive.
fn run_bytewise(input: &[u8]) -> (usize, Option<Refusal>, u64) {
    let mut s = Scanner::new(HeadLimits::default());
    let mut buf: Vec<u8> = Vec::new();
    let mut passed = 0;
    for &b in input {
        buf.push(b);
        loop {
            match s.scan(&buf) {
                Step::Pass(n) => {
                    passed += n;
                    buf.drain(..n);
                }
                Step::Need => break,
                Step::Refuse(r) => return (passed, Some(r), s.requests()),
            }
        }
    }
    (passed, None, s.requests())
}

fn refused(input: &str) -> Refusal {
    let (_, r, _) = run(input.as_bytes());
    let r = r.unwrap_or_else(|| panic!("not refused: {input:?}"));
    let (_, r2, _) = run_bytewise(input.as_bytes());
    assert_eq!(Some(r), r2, "byte by byte: {input:?}");
    r
}

#[test]
fn a_plain_request_passes_whole() {
    let req = "GET / HTTP/1.1\r\nHost: www.foobar.com\r\n\r\n";
    assert_eq!(run(req.as_bytes()), (req.len(), None, 1));
    assert_eq!(run_bytewise(req.as_bytes()), (req.len(), None, 1));
}

#[test]
fn pipelined_requests_with_bodies_pass_and_are_counted() {
    let req = "POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
               POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
               5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n\
               GET /c HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(run(req.as_bytes()), (req.len(), None, 3));
    assert_eq!(run_bytewise(req.as_bytes()), (req.len(), None, 3));
}

#[test]
fn a_body_is_not_read_as_a_head() {
    // The body of the first request looks like a request with two Hosts: it is data.
    let body = "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";
    let req = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(run(req.as_bytes()), (req.len(), None, 1));
}

#[test]
fn rfc9112_3_2_http11_needs_exactly_one_valid_host() {
    assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), refusals::NO_HOST);
    assert_eq!(
        refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        refusals::TWO_HOSTS
    );
    for bad in [
        "a b", "a/b", "a@b", "a:", "a:99999", "a:8x", "[zz]", "[::1", "",
    ] {
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n")),
            refusals::BAD_HOST,
            "{bad:?}"
        );
    }
    for good in ["www.foobar.com", "127.0.0.1:8080", "[::1]:443", "a_b-c"] {
        let req = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
        assert_eq!(run(req.as_bytes()).1, None, "{good:?}");
    }
    // HTTP/1.0 clients may omit it.
    assert_eq!(run(b"GET / HTTP/1.0\r\n\r\n").1, None);
}

#[test]
fn rfc9112_6_3_length_and_chunked_together_are_refused_in_either_order() {
    for req in [
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
    ] {
        assert_eq!(refused(req), refusals::LENGTH_AND_CHUNKED);
    }
}

#[test]
fn rfc9112_6_3_content_length_appears_once_as_a_number() {
    for v in ["-1", "1,1", "0x10", "1 2", "+5", "", "99999999999999999999"] {
        assert_eq!(
            refused(&format!(
                "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n"
            )),
            refusals::BAD_LENGTH,
            "{v:?}"
        );
    }
    assert_eq!(
        refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
        refusals::BAD_LENGTH
    );
}

#[test]
fn rfc9112_6_1_only_a_lone_chunked_coding_in_http11() {
    assert_eq!(
        refused(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        ),
        refusals::TWO_ENCODINGS
    );
    for v in [
        "gzip",
        "gzip, chunked",
        "chunked, chunked",
        "identity",
        "xchunked",
        "chunked;q=1",
    ] {
        assert_eq!(
            refused(&format!(
                "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: {v}\r\n\r\n"
            )),
            refusals::BAD_ENCODING,
            "{v:?}"
        );
    }
    assert_eq!(
        refused("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
        refusals::BAD_ENCODING
    );
    // Case and surrounding spaces do not matter.
    let ok = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n";
    assert_eq!(run(ok.as_bytes()), (ok.len(), None, 1));
}

#[test]
fn limit_a_header_line_over_max_line_is_431_before_the_head_ends() {
    let limits = HeadLimits {
        max_line: 100,
        max_headers: 10,
    };
    let long = format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}", "x".repeat(200));
    // Refused without waiting for the end of the line.
    assert_eq!(
        run_with(limits, long.as_bytes()).1,
        Some(refusals::LINE_TOO_LONG)
    );
    let uri = format!("GET /{} HTTP/1.1\r\n", "a".repeat(200));
    assert_eq!(
        run_with(limits, uri.as_bytes()).1,
        Some(refusals::URI_TOO_LONG)
    );
    let exact = format!("GET / HTTP/1.1\r\nHost: a\r\nX: {}\r\n\r\n", "x".repeat(97));
    assert_eq!(
        run_with(limits, exact.as_bytes()).1,
        None,
        "100 bytes is allowed"
    );
}

#[test]
fn limit_too_many_header_lines_is_431() {
    let limits = HeadLimits {
        max_line: 1000,
        max_headers: 3,
    };
    let ok = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    assert_eq!(run_with(limits, ok.as_bytes()).1, None);
    let over = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    assert_eq!(
        run_with(limits, over.as_bytes()).1,
        Some(refusals::TOO_MANY_HEADERS)
    );
}

#[test]
fn limit_a_head_over_max_head_in_all_is_431_though_each_line_is_short() {
    let head = |lines: usize| {
        let fill = "x".repeat(7 * 1024);
        let fields: String = (0..lines).map(|i| format!("X-{i}: {fill}\r\n")).collect();
        format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n")
    };
    let within = head(6);
    assert!(within.len() < MAX_HEAD);
    assert_eq!(run(within.as_bytes()), (within.len(), None, 1));
    let over = head(8);
    assert!(over.len() > MAX_HEAD);
    assert_eq!(refused(&over), refusals::HEAD_TOO_LARGE);
}

#[test]
fn malformed_heads_are_refused_not_passed() {
    for req in [
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n", // space before the colon
        "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", // obsolete line folding
        "GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        "GET\r\n\r\n",
        "GET / HTTP/1.1\r\nHo\0st: a\r\n\r\n",
    ] {
        assert_eq!(refused(req), refusals::MALFORMED, "{req:?}");
    }
}

#[test]
fn rfc9112_2_2_empty_lines_before_the_request_line_are_ignored() {
    let req = "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n";
    assert_eq!(run(req.as_bytes()), (req.len(), None, 1));
}

#[test]
fn rfc9112_7_1_chunk_framing_is_checked() {
    let head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
    for body in [
        "z\r\n",                      // not hex
        "5\r\nhelloX\r\n",            // no CRLF after the data
        "5\nhello\r\n",               // bare LF
        "1234567890123456\r\n",       // size overflow
        "0\r\nnot a trailer\r\n\r\n", // trailer without a colon
    ] {
        assert_eq!(
            refused(&format!("{head}{body}")),
            refusals::BAD_CHUNK,
            "{body:?}"
        );
    }
}

#[test]
fn a_refusal_stops_at_the_bad_request_after_passing_the_good_ones() {
    let good = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let req = format!("{good}GET / HTTP/1.1\r\n\r\n");
    let (passed, r, requests) = run(req.as_bytes());
    assert_eq!(
        (passed, r, requests),
        (good.len(), Some(refusals::NO_HOST), 1)
    );
}

#[test]
fn the_scanner_waits_in_head_state_between_requests() {
    let mut s = Scanner::new(HeadLimits::default());
    assert!(s.in_head());
    let head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n";
    assert_eq!(s.scan(head), Step::Pass(head.len()));
    assert!(!s.in_head(), "in the body");
    assert_eq!(s.scan(b"hi"), Step::Pass(2));
    assert!(s.in_head());
}
