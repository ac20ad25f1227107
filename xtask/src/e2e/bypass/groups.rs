//! The hostile cases, grouped by the config that makes them meaningful. Sources: the policy
//! crate's tests (`crates/policy/src/tests/{target,patterns,local,decide}.rs`), restricted to
//! what can be written on the wire.

use super::cases::{
    BAD, Case, DENIED, Expect, LOCAL, MISS, Ports, SELF, absolute, case, connect, raw, socks,
};

pub(super) struct Group {
    pub(super) name: &'static str,
    /// Lines of the `[network]` table.
    pub(super) config: &'static str,
    pub(super) cases: fn(&Ports) -> Vec<Case>,
}

pub(super) static GROUPS: &[Group] = &[
    Group {
        name: "numeric-loopback",
        config: r#"allowed_domains = ["127.0.0.1", "localhost"]"#,
        cases: numeric_loopback,
    },
    Group {
        name: "ipv6-embedding-ipv4",
        config: r#"allowed_domains = ["*"]"#,
        cases: ipv6_embedding_ipv4,
    },
    Group {
        name: "userinfo-encoding-chars",
        config: r#"allowed_domains = ["127.0.0.1", "localhost", "*.example.com"]"#,
        cases: userinfo_encoding_chars,
    },
    Group {
        name: "trailing-dots",
        config: r#"allowed_domains = ["*.example.com", "localhost:1", "127.0.0.1:1"]"#,
        cases: trailing_dots,
    },
    Group {
        name: "localhost-variants",
        config: r#"allowed_domains = ["*", "**.test.localhost"]"#,
        cases: localhost_variants,
    },
    Group {
        name: "name-matching",
        config: r#"allowed_domains = ["*.example.com", "example.org", "**.example.net", "api-*.example.io"]"#,
        cases: name_matching,
    },
    Group {
        name: "port-scoped",
        config: r#"allowed_domains = ["localhost:1", "127.0.0.1:1", "[::1]:1", "example.org:8443", "*.example.com:443"]"#,
        cases: port_scoped,
    },
    Group {
        name: "request-target",
        config: r#"allowed_domains = ["*.example.com", "localhost:1"]"#,
        cases: request_target,
    },
    Group { name: "private-ranges", config: r#"allowed_domains = ["*"]"#, cases: private_ranges },
    Group {
        name: "ipv6-ranges-never-unlock-ipv4",
        config: r#"allowed_domains = ["::/0", "2002::/16", "2001::/32", "64:ff9b::/32"]"#,
        cases: ipv6_ranges_never_unlock_ipv4,
    },
    Group {
        name: "self-connection",
        config: "allowed_domains = [\"*\"]\nallow_local_binding = true",
        cases: self_connection,
    },
    Group {
        name: "denylist-spellings",
        config: "allowed_domains = [\"*\"]\nallow_local_binding = true\n\
                 denied_domains = [\"127.0.0.0/8\", \"0.0.0.0/8\", \"localhost\", \"*.example.com\"]",
        cases: denylist_spellings,
    },
];

/// What resolvers silently turn into loopback (SPEC §3), with 127.0.0.1 itself allowlisted so
/// a lax parser would deliver them to the canary.
fn numeric_loopback(p: &Ports) -> Vec<Case> {
    let mut cases = vec![case("127.0.0.1", p.canary, Expect::Reaches)];
    for host in [
        "127.1",
        "127.0.1",
        "2130706433",
        "0x7f000001",
        "0x7F000001",
        "0x7f.0.0.1",
        "0x7F.1",
        "0177.0.0.1",
        "0177.1",
        "017700000001",
        "127.000.000.001",
        "127.0.0.01",
        "0127.0.0.1",
        "0",
        "0.0",
        "0x0",
        "00",
        "127.0.0.1.1",
        "1.2.3.4.5",
        "256.0.0.1",
        "example.0x10",
        "foo.123",
        "\u{ff11}\u{ff12}\u{ff17}.\u{ff11}",
    ] {
        cases.push(case(host, p.canary, BAD));
    }
    cases
}

/// IPv6 spellings of local IPv4 addresses, under `*` (which never unlocks local targets).
fn ipv6_embedding_ipv4(p: &Ports) -> Vec<Case> {
    let mut cases = Vec::new();
    for host in [
        "[::ffff:127.0.0.1]",
        "[::FFFF:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[0:0:0:0:0:ffff:7f00:1]",
        "[::127.0.0.1]",
        "[::ffff:0:127.0.0.1]",
        "[64:ff9b::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[64:ff9b:1::7f00:1]",
        "[2002:7f00:1::]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        "[::1]",
        "[0::1]",
        "[::]",
        "[::ffff:0.0.0.0]",
        "[::ffff:169.254.169.254]",
        "[::ffff:10.0.0.1]",
        "[64:ff9b::a9fe:a9fe]",
    ] {
        cases.push(case(host, p.canary, LOCAL));
    }
    let port = p.canary;
    cases.extend([
        case("[::1%25lo]", port, BAD),
        case("[fe80::1%lo]", port, BAD),
        case("[::ffff:127.0.0.1%25lo]", port, BAD),
        raw(&format!("::1:{port}"), BAD),
        raw(&format!("::ffff:127.0.0.1:{port}"), BAD),
        raw(&format!("[::1]:{port}:{port}"), BAD),
        raw(&format!("[127.0.0.1]:{port}"), BAD),
        raw(&format!("[::ffff:127.0.0.1:{port}"), BAD),
        socks("[::1]", port, LOCAL),
        socks("::1%lo", port, BAD),
    ]);
    cases
}

/// Userinfo, percent-encoding, backslashes, whitespace, control bytes and globs (SPEC §3), with
/// localhost and 127.0.0.1 allowlisted.
fn userinfo_encoding_chars(p: &Ports) -> Vec<Case> {
    let port = p.canary;
    let mut cases = vec![case("localhost", port, Expect::Reaches)];
    for host in [
        "user@127.0.0.1",
        "a.example.com@127.0.0.1",
        "127.0.0.1@a.example.com",
        "%31%32%37.0.0.1",
        "local%68ost",
        "127%2e0.0.1",
        "a.example.com%40127.0.0.1",
        "127.0.0.1\\",
        "a.example.com\\@127.0.0.1",
        "127.0.0.1\\.a.example.com",
        "local host",
        " localhost",
        "localhost\t",
        "localhost\0",
        "loc\0alhost",
        "localhost\u{7f}",
        "localhost\u{1b}",
        "localhost\u{a0}",
        "127.0.0.*",
        "*.example.com",
        "local?ost",
        "local[h]ost",
        "{localhost}",
        "local!host",
        "local,host",
        "local~host",
    ] {
        cases.push(case(host, port, BAD));
    }
    cases.extend([
        raw(&format!("user:pass@localhost:{port}"), BAD),
        raw(&format!("127.0.0.1:{port}@a.example.com"), BAD),
        raw(&format!("a.example.com:443@127.0.0.1:{port}"), BAD),
        raw(&format!("127.0.0.1:{port}\\@a.example.com"), BAD),
        raw(&format!("localhost:{port}%00"), BAD),
        socks("localhost\r\n", port, BAD),
        socks("localhost:80", port, BAD),
        socks("", port, BAD),
    ]);
    cases
}

/// One trailing dot is the same name; more, or a leading dot, is malformed; a dot never turns a
/// miss into a match.
fn trailing_dots(p: &Ports) -> Vec<Case> {
    let port = p.canary;
    let mut cases = Vec::new();
    for host in ["localhost.", "LOCALHOST.", "127.0.0.1.", "a.localhost."] {
        cases.push(case(host, port, LOCAL));
    }
    for host in ["example.com.", "evilexample.com.", "a.example.com.evil.test.", "com."] {
        cases.push(case(host, port, MISS));
    }
    for host in
        ["localhost..", "127.0.0.1..", ".localhost", ".", "..", "a.example.com..", "a..example.com"]
    {
        cases.push(case(host, port, BAD));
    }
    cases
}

/// `localhost` and `*.localhost` are loopback without DNS (RFC 6761) and wildcards never unlock
/// them; a name `/etc/hosts` maps to loopback is blocked after resolution.
fn localhost_variants(p: &Ports) -> Vec<Case> {
    let port = p.canary;
    let mut cases = Vec::new();
    for host in [
        "localhost",
        "LOCALHOST",
        "LocalHost",
        "localhost.",
        "a.localhost",
        "x.y.localhost",
        "test.localhost",
        "a.test.localhost",
        "LOCALHOST.LOCALHOST",
    ] {
        cases.push(case(host, port, LOCAL));
    }
    if let Some(name) = &p.hosts_name {
        cases.push(case(name, port, LOCAL));
        cases.push(case(&name.to_ascii_uppercase(), port, LOCAL));
        cases.push(case(&format!("{name}."), port, LOCAL));
    }
    // Unicode spellings UTS 46 maps to `localhost`: as SOCKS5 domains they must come out local,
    // never allowed by `*` and looked up.
    for host in [
        "\u{ff4c}\u{ff4f}\u{ff43}\u{ff41}\u{ff4c}\u{ff48}\u{ff4f}\u{ff53}\u{ff54}", // fullwidth
        "\u{24db}\u{24de}\u{24d2}\u{24d0}\u{24db}\u{24d7}\u{24de}\u{24e2}\u{24e3}", // circled
        "local\u{ad}host",    // soft hyphen, mapped to nothing
        "local\u{200b}host",  // zero-width space, ignored
        "localhost\u{3002}",  // ideographic full stop as the trailing dot
        "a\u{ff0e}localhost", // fullwidth full stop
        "\u{212a}.localhost", // Kelvin sign, maps to `k`
    ] {
        cases.push(case(host, port, Expect::Unicode));
    }
    cases
}

/// Suffix and in-label wildcards never match a look-alike (SPEC §4.1).
fn name_matching(_: &Ports) -> Vec<Case> {
    let mut cases = Vec::new();
    for host in [
        "evilexample.com",
        "example.com",
        "aexample.com",
        "example.com.evil.test",
        "a.example.com.evil.test",
        "example.co",
        "evilexample.org",
        "www.example.org",
        "example.org.evil.test",
        "evilexample.net",
        "example.net.evil.test",
        "api-x.y.example.io",
        "x.api-1.example.io",
        "api.example.io",
        "apix.example.io",
        "a.xn--xample-2of.com",
    ] {
        cases.push(case(host, 80, MISS));
    }
    // `a.еxample.com` with a Cyrillic `е`.
    cases.push(case("a.\u{435}xample.com", 80, Expect::Unicode));
    cases
}

/// Port-scoped entries match that port only; malformed ports are refused (SPEC §3, §4.1).
fn port_scoped(p: &Ports) -> Vec<Case> {
    let port = p.canary;
    let mut cases = vec![
        case("localhost", port, LOCAL),
        case("127.0.0.1", port, LOCAL),
        case("[::1]", port, LOCAL),
        case("[::ffff:127.0.0.1]", port, LOCAL),
        case("localhost", 2, LOCAL),
        case("127.0.0.1", 80, LOCAL),
        case("example.org", 443, MISS),
        case("example.org", 80, MISS),
        case("a.example.com", 8443, MISS),
        case("a.example.com", 80, MISS),
        socks("localhost", 0, BAD),
        socks("example.org", 0, BAD),
    ];
    for authority in [
        "localhost:0".to_owned(),
        "localhost:65536".into(),
        "127.0.0.1:99999999999999999999".into(),
        format!("localhost:1:{port}"),
        format!("localhost:{port}:1"),
        "localhost:+1".into(),
        "localhost:-1".into(),
        "localhost:".into(),
        "localhost:0x1".into(),
        "localhost:1o".into(),
        "localhost:\u{ff11}".into(),
        format!("[::1]:1:{port}"),
    ] {
        cases.push(raw(&authority, BAD));
    }
    cases
}

/// Request heads that disagree with themselves or are not absolute-form authority targets
/// (SPEC §7.2, §7.3): proxyd never routes by `Host` and never dials what it did not decide.
fn request_target(p: &Ports) -> Vec<Case> {
    let port = p.canary;
    let get = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    let local = format!("localhost:{port}");
    let url = format!("http://{local}/");
    vec![
        absolute(&get("http://a.example.com/", &local), BAD),
        absolute(&get(&url, "a.example.com"), BAD),
        // RFC 9112 §3.2: a second Host header is a 400, whatever the two say.
        absolute(
            &format!("GET {url} HTTP/1.1\r\nHost: {local}\r\nHost: a.example.com\r\n\r\n"),
            Expect::Malformed,
        ),
        absolute(
            &format!("GET {url} HTTP/1.1\r\nHost: a.example.com\r\nHost: {local}\r\n\r\n"),
            BAD,
        ),
        absolute(&get("/", &local), BAD),
        absolute(&get(&format!("//{local}/"), &local), BAD),
        absolute(&get(&format!("http:{local}/"), &local), BAD),
        absolute(&get(&format!("http:/{local}/"), &local), BAD),
        absolute(&get(&format!("http:\\\\{local}\\"), &local), BAD),
        absolute(&get(&format!("ftp://{local}/"), &local), BAD),
        absolute(&get(&format!("ws://{local}/"), &local), BAD),
        absolute(&get(&format!("http://{local}#@a.example.com/"), &local), LOCAL),
        absolute(&get(&format!("http://LOCALHOST:{port}/"), &local), LOCAL),
        absolute(&get("http://localhost/", "localhost:80"), LOCAL),
        absolute(&format!("GET {url} HTTP/1.0\r\n\r\n"), LOCAL),
        connect("CONNECT localhost HTTP/1.1\r\nHost: localhost\r\n\r\n", BAD),
        connect(&format!("CONNECT {url} HTTP/1.1\r\nHost: {local}\r\n\r\n"), BAD),
        connect(&format!("CONNECT /{local} HTTP/1.1\r\nHost: {local}\r\n\r\n"), BAD),
        connect(&format!("CONNECT {local}/ HTTP/1.1\r\nHost: {local}\r\n\r\n"), BAD),
        connect(&format!("CONNECT {local} HTTP/1.1\r\nHost: a.example.com:443\r\n\r\n"), LOCAL),
    ]
}

/// Private, link-local, documentation, multicast and metadata addresses (SPEC §5.1) under `*`.
fn private_ranges(p: &Ports) -> Vec<Case> {
    let mut cases = Vec::new();
    for host in ["0.0.0.0", "127.0.0.2", "127.255.255.254"] {
        cases.push(case(host, p.canary, LOCAL));
    }
    for host in [
        "10.0.0.1",
        "10.255.255.255",
        "172.16.0.1",
        "172.31.255.255",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "168.63.129.16",
        "100.100.100.200",
        "192.0.0.1",
        "192.0.2.1",
        "198.18.0.1",
        "198.51.100.1",
        "203.0.113.1",
        "224.0.0.1",
        "240.0.0.1",
        "255.255.255.255",
        "[fd00::1]",
        "[fc00::1]",
        "[fe80::1]",
        "[fec0::1]",
        "[ff02::1]",
        "[fd00:ec2::254]",
        "[100::1]",
        "[2001:db8::1]",
        "[2002:c0a8:101::1]",
    ] {
        cases.push(case(host, 80, LOCAL));
    }
    cases
}

/// proxyd never dials its own listeners, whatever the spelling (SPEC §7.1, §8.3), even with
/// `*` and local binding allowed; the control shows other local ports are reachable.
fn self_connection(p: &Ports) -> Vec<Case> {
    let mut cases = vec![case("127.0.0.1", p.canary, Expect::Reaches)];
    for port in [p.http, p.socks, p.admin] {
        for host in ["127.0.0.1", "localhost", "0.0.0.0", "127.0.0.2", "[::ffff:127.0.0.1]"] {
            cases.push(case(host, port, SELF));
        }
    }
    cases.push(case("[::1]", p.http, SELF));
    cases
}

/// Issue 11: with only IPv6 ranges allowed, no IPv6 spelling of a local IPv4 address is
/// explicitly allowed (IPv4-compatible, translated, mapped, 6to4, NAT64, Teredo).
fn ipv6_ranges_never_unlock_ipv4(p: &Ports) -> Vec<Case> {
    [
        "[::127.0.0.2]",
        "[::ffff:0:127.0.0.2]",
        "[::ffff:127.0.0.2]",
        "[2002:7f00:2::]",
        "[64:ff9b::127.0.0.2]",
        "[64:ff9b:1::7f00:2]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
    ]
    .into_iter()
    .map(|host| case(host, p.canary, LOCAL))
    .collect()
}

/// Denylist entries apply to every spelling of what they name, and to resolved addresses.
fn denylist_spellings(p: &Ports) -> Vec<Case> {
    let port = p.canary;
    let mut cases = Vec::new();
    for host in [
        "127.0.0.1",
        "[::ffff:127.0.0.1]",
        "[::ffff:7f00:1]",
        "[64:ff9b::127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[::127.0.0.1]",
        "[::ffff:0:127.0.0.1]",
        "[2002:7f00:1::]",
        "[64:ff9b:1::7f00:1]",
        "[2001:0:4136:e378:8000:63bf:80ff:fffe]",
        "localhost",
        "LOCALHOST.",
        "0.0.0.0",
        "127.0.0.2",
        "a.localhost",
        "a.example.com",
        "A.EXAMPLE.COM.",
        "x.a.example.com",
    ] {
        cases.push(case(host, port, DENIED));
    }
    if let Some(name) = &p.hosts_name {
        cases.push(case(name, port, DENIED));
    }
    cases
}
