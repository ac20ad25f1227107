//! SPEC §3: every accepted spelling and every rejection, one line each.

use crate::target::{Host, Scheme, Target, TargetError as E};

/// `CONNECT`-style authority with a default port of 80; `Ok` holds the canonical display.
#[track_caller]
fn check(input: &str, expected: Result<&str, E>) {
    let got = Target::parse_authority(input, Some(80)).map(|t| t.to_string());
    assert_eq!(got.as_deref().map_err(Clone::clone), expected, "authority {input:?}");
}

#[track_caller]
fn check_host(input: &str, expected: Result<&str, E>) {
    let got = Host::parse(input).map(|h| h.to_string());
    assert_eq!(got.as_deref().map_err(Clone::clone), expected, "host {input:?}");
}

#[track_caller]
fn check_url(input: &str, expected: Result<(&str, &str), E>) {
    let got = Target::parse_absolute_url(input)
        .map(|u| (format!("{}://{}", u.scheme.as_str(), u.target), u.path_and_query));
    let got = got.as_ref().map(|(a, b)| (a.as_str(), b.as_str())).map_err(Clone::clone);
    assert_eq!(got, expected, "url {input:?}");
}

#[test]
fn names_are_canonicalised() {
    check("example.com", Ok("example.com:80"));
    check("Example.COM", Ok("example.com:80"));
    check("example.com.", Ok("example.com:80"));
    check("EXAMPLE.com.:443", Ok("example.com:443"));
    check("a-b_c.example.com:8080", Ok("a-b_c.example.com:8080"));
    check("localhost", Ok("localhost:80"));
    check("LOCALHOST.", Ok("localhost:80"));
    check("x.localhost:1", Ok("x.localhost:1"));
    check("example.com:65535", Ok("example.com:65535"));
    check("example.com:0443", Ok("example.com:443"));
    check("123.example.com", Ok("123.example.com:80"));
    check("example.com1", Ok("example.com1:80"));
    check("com", Ok("com:80"));
    check(&format!("{}.com", "a".repeat(63)), Ok(&format!("{}.com:80", "a".repeat(63))));
}

#[test]
fn idna_names_are_converted() {
    check("bücher.example", Ok("xn--bcher-kva.example:80"));
    check("BÜCHER.example", Ok("xn--bcher-kva.example:80"));
    check("xn--bcher-kva.example", Ok("xn--bcher-kva.example:80"));
    check("XN--BCHER-KVA.example", Ok("xn--bcher-kva.example:80"));
    // Cyrillic "е" (U+0435) is not Latin "e": a homoglyph becomes a different name.
    check("еxample.com", Ok("xn--xample-2of.com:80"));
    // Fullwidth letters and the ideographic full stop map to their ASCII forms (UTS 46).
    check("ｅｘａｍｐｌｅ．com", Ok("example.com:80"));
    check("example。com", Ok("example.com:80"));
    check("xn--abc-.example", Err(E::InvalidIdna));
    check("xn--a.example", Err(E::InvalidIdna));
    check("xn--.example", Err(E::InvalidIdna));
}

#[test]
fn ip_literals_are_canonical() {
    check("127.0.0.1", Ok("127.0.0.1:80"));
    check("10.0.0.1:8080", Ok("10.0.0.1:8080"));
    check("[::1]", Ok("[::1]:80"));
    check("[::1]:443", Ok("[::1]:443"));
    check("[0:0:0:0:0:0:0:1]:443", Ok("[::1]:443"));
    check("[::FFFF:127.0.0.1]:80", Ok("[::ffff:127.0.0.1]:80"));
    check("[2001:DB8::1]", Ok("[2001:db8::1]:80"));
    check("[fe80::1%eth0]:80", Err(E::PercentEncoding));
    check_host("[fe80::1%25eth0]", Err(E::PercentEncoding));
    check("[::1", Err(E::InvalidIpv6));
    check("[example.com]:80", Err(E::InvalidIpv6));
    check("[::1]:80:80", Err(E::MultiplePorts));
    check("::1", Err(E::UnbracketedIpv6));
    check("::1:443", Err(E::UnbracketedIpv6));
    check("fe80::1:80", Err(E::UnbracketedIpv6));
}

#[test]
fn bare_hosts() {
    check_host("::1", Ok("::1"));
    check_host("[::1]", Ok("::1"));
    check_host("::ffff:10.0.0.1", Ok("::ffff:10.0.0.1"));
    check_host("Example.com.", Ok("example.com"));
    check_host("10.0.0.1", Ok("10.0.0.1"));
    check_host("", Err(E::EmptyHost));
    check_host(".", Err(E::EmptyHost));
    check_host("127.1", Err(E::AmbiguousNumericHost));
    check_host("example.com:80", Err(E::InvalidIpv6));
    check_host("fe80::1%eth0", Err(E::PercentEncoding));
}

/// The hostile spellings of SPEC §3 (numeric hosts, userinfo, percent-encoding, backslashes,
/// whitespace, control bytes, globs) are rows of the bypass table (`tests/bypass.rs`); these are
/// the characters a URL would read as a delimiter, so they exist only as bare authorities.
#[test]
fn delimiters_are_not_name_characters() {
    check("exa/mple.com", Err(E::InvalidCharacter('/')));
    check("exa#mple.com", Err(E::InvalidCharacter('#')));
}

#[test]
fn label_and_length_rules() {
    check("a..b", Err(E::EmptyLabel));
    check(".a", Err(E::EmptyLabel));
    check("a.b..", Err(E::EmptyLabel));
    check("", Err(E::EmptyHost));
    check(":80", Err(E::EmptyHost));
    check(".", Err(E::EmptyHost));
    check(&format!("{}.com", "a".repeat(64)), Err(E::LabelTooLong));
    check(&format!("{}.com", ["abcdefghi"; 26].join(".")), Err(E::NameTooLong));
}

#[test]
fn ports() {
    check("example.com:", Err(E::InvalidPort));
    check("example.com:0", Err(E::PortOutOfRange));
    check("example.com:65536", Err(E::PortOutOfRange));
    check("example.com:99999999999999999999", Err(E::PortOutOfRange));
    check("example.com:-1", Err(E::InvalidPort));
    check("example.com:+80", Err(E::InvalidPort));
    check("example.com:8o", Err(E::InvalidPort));
    check("example.com:80:80", Err(E::MultiplePorts));
    check("example.com:80:", Err(E::MultiplePorts));
    assert_eq!(Target::parse_authority("example.com", None), Err(E::MissingPort));
    assert_eq!(Target::parse_authority("[::1]", None), Err(E::MissingPort));
    assert_eq!(Target::parse_authority("example.com:443", None).map(|t| t.port), Ok(443));
}

#[test]
fn absolute_urls() {
    check_url("http://example.com/", Ok(("http://example.com:80", "/")));
    check_url("http://example.com", Ok(("http://example.com:80", "/")));
    check_url("HTTPS://Example.com", Ok(("https://example.com:443", "/")));
    check_url("http://example.com:8080/a?b=c", Ok(("http://example.com:8080", "/a?b=c")));
    check_url("http://example.com?q", Ok(("http://example.com:80", "/?q")));
    check_url("http://example.com/a#frag", Ok(("http://example.com:80", "/a")));
    check_url("http://example.com#@evil.com/", Ok(("http://example.com:80", "/")));
    check_url("http://example.com/p%20q@x", Ok(("http://example.com:80", "/p%20q@x")));
    check_url("http://[::1]:8080/x", Ok(("http://[::1]:8080", "/x")));
    check_url("http://user@example.com/", Err(E::Userinfo));
    check_url("http://evil.com\\@example.com/", Err(E::Backslash));
    check_url("http://127.1/", Err(E::AmbiguousNumericHost));
    check_url("http://0x7f000001/", Err(E::AmbiguousNumericHost));
    check_url("http://%65xample.com/", Err(E::PercentEncoding));
    check_url("ftp://example.com/", Err(E::UnsupportedScheme));
    check_url("file:///etc/passwd", Err(E::UnsupportedScheme));
    check_url("gopher://example.com/", Err(E::UnsupportedScheme));
    check_url("example.com/", Err(E::NotAbsolute));
    check_url("/path", Err(E::NotAbsolute));
    check_url("http:///path", Err(E::EmptyHost));
    check_url("http://example.com:0/", Err(E::PortOutOfRange));
    check_url("http://example.com:80:81/", Err(E::MultiplePorts));
    check_url("http://example.com/a b", Err(E::Whitespace));
    check_url("http://example.com/\0", Err(E::ControlByte));
    check_url("http://::1/", Err(E::UnbracketedIpv6));
}

#[test]
fn socks_domains() {
    let socks = |name: &[u8], port| Target::from_socks_domain(name, port).map(|t| t.to_string());
    assert_eq!(socks(b"example.com", 80).as_deref(), Ok("example.com:80"));
    assert_eq!(socks(b"EXAMPLE.com.", 443).as_deref(), Ok("example.com:443"));
    assert_eq!(socks(b"2130706433", 80), Err(E::AmbiguousNumericHost));
    assert_eq!(socks(b"127.0.0.1", 80).as_deref(), Ok("127.0.0.1:80"));
    assert_eq!(socks(b"", 80), Err(E::EmptyHost));
    assert_eq!(socks(b"exa\0mple.com", 80), Err(E::ControlByte));
    assert_eq!(socks(b"exa mple.com", 80), Err(E::Whitespace));
    assert_eq!(socks(b"\xff\xfe", 80), Err(E::InvalidIdna));
    assert_eq!(socks(b"example.com", 0), Err(E::PortOutOfRange));
    assert_eq!(socks(&[b'a'; 256], 80), Err(E::NameTooLong));
}

#[test]
fn schemes_and_helpers() {
    assert_eq!(Scheme::parse("HtTp"), Ok(Scheme::Http));
    assert_eq!(Scheme::parse("ws"), Err(E::UnsupportedScheme));
    assert!(Host::parse("localhost").unwrap().is_localhost_name());
    assert!(Host::parse("a.b.localhost.").unwrap().is_localhost_name());
    assert!(!Host::parse("localhost.com").unwrap().is_localhost_name());
    assert!(!Host::parse("notlocalhost").unwrap().is_localhost_name());
    assert_eq!(Host::parse("localhost").unwrap().fixed_addrs().map(|a| a.len()), Some(2));
    assert_eq!(Host::parse("example.com").unwrap().fixed_addrs(), None);
}
