//! SPEC §5.1: the classifier, with the boundary addresses of every range.

use std::net::IpAddr;

use crate::local::is_local;

#[track_caller]
fn check(addr: &str, local: bool) {
    let ip: IpAddr = addr.parse().expect("test address parses");
    assert_eq!(is_local(ip), local, "{addr}");
}

#[test]
fn ipv4_ranges_and_their_edges() {
    check("0.0.0.0", true);
    check("0.255.255.255", true);
    check("1.0.0.0", false);
    check("9.255.255.255", false);
    check("10.0.0.0", true);
    check("10.255.255.255", true);
    check("11.0.0.0", false);
    check("100.63.255.255", false);
    check("100.64.0.0", true);
    check("100.127.255.255", true);
    check("100.128.0.0", false);
    check("126.255.255.255", false);
    check("127.0.0.1", true);
    check("127.255.255.254", true);
    check("128.0.0.0", false);
    check("169.253.255.255", false);
    check("169.254.0.0", true);
    check("169.254.169.254", true);
    check("169.255.0.0", false);
    check("172.15.255.255", false);
    check("172.16.0.0", true);
    check("172.31.255.255", true);
    check("172.32.0.0", false);
    check("191.255.255.255", false);
    check("192.0.0.0", true);
    check("192.0.0.255", true);
    check("192.0.1.0", false);
    check("192.0.2.0", true);
    check("192.0.2.255", true);
    check("192.0.3.0", false);
    check("192.88.98.255", false);
    check("192.88.99.0", true);
    check("192.88.100.0", false);
    check("192.167.255.255", false);
    check("192.168.0.0", true);
    check("192.168.255.255", true);
    check("192.169.0.0", false);
    check("198.17.255.255", false);
    check("198.18.0.0", true);
    check("198.19.255.255", true);
    check("198.20.0.0", false);
    check("198.51.99.255", false);
    check("198.51.100.0", true);
    check("198.51.101.0", false);
    check("203.0.112.255", false);
    check("203.0.113.0", true);
    check("203.0.114.0", false);
    check("223.255.255.255", false);
    check("224.0.0.0", true);
    check("239.255.255.255", true);
    check("240.0.0.0", true);
    check("255.255.255.255", true);
    check("8.8.8.8", false);
    check("1.1.1.1", false);
    check("93.184.216.34", false);
}

#[test]
fn cloud_metadata() {
    check("169.254.169.254", true);
    check("168.63.129.16", true);
    check("168.63.129.15", false);
    check("168.63.129.17", false);
    check("fd00:ec2::254", true);
    check("100.100.100.200", true);
}

#[test]
fn ipv6_ranges_and_their_edges() {
    check("::", true);
    check("::1", true);
    check("::2", true); // IPv4-compatible ::0.0.0.2, inside 0.0.0.0/8
    check("100::", true);
    check("100::ffff:ffff:ffff:ffff", true);
    check("100:0:0:1::", false);
    check("2001:db8::", true);
    check("2001:db8:ffff:ffff::1", true);
    check("2001:db9::1", false);
    check("fbff:ffff::1", false);
    check("fc00::", true);
    check("fdff:ffff::1", true);
    check("fe00::1", false);
    check("fe7f:ffff::1", false);
    check("fe80::", true);
    check("febf:ffff::1", true);
    check("fec0::1", true);
    check("feff:ffff::1", true);
    check("ff00::", true);
    check("ff02::1", true);
    check("2606:4700:4700::1111", false);
    check("2a00:1450:4001:81c::200e", false);
}

#[test]
fn ipv6_forms_that_embed_ipv4() {
    // IPv4-mapped.
    check("::ffff:127.0.0.1", true);
    check("::ffff:7f00:1", true);
    check("::ffff:10.1.2.3", true);
    check("::ffff:169.254.169.254", true);
    check("::ffff:8.8.8.8", false);
    // IPv4-compatible (deprecated).
    check("::127.0.0.1", true);
    check("::192.168.1.1", true);
    check("::8.8.8.8", false);
    // IPv4-translated (RFC 2765).
    check("::ffff:0:127.0.0.1", true);
    check("::ffff:0:8.8.8.8", false);
    // NAT64, well-known prefix and local-use prefix.
    check("64:ff9b::127.0.0.1", true);
    check("64:ff9b::10.0.0.1", true);
    check("64:ff9b::8.8.8.8", false);
    check("64:ff9b:1::8.8.8.8", true);
    check("64:ff9b:1:ffff::1", true);
    check("64:ff9b:2::8.8.8.8", false);
    // 6to4.
    check("2002:7f00:1::", true);
    check("2002:a00:1::1", true);
    check("2002:c0a8:101::1", true);
    check("2002:808:808::1", false);
    // Teredo: client is the bitwise NOT of the low 32 bits; the server sits in bits 32-63.
    check("2001:0:4136:e378:8000:63bf:80ff:fffe", true); // client 127.0.0.1
    check("2001:0:4136:e378:8000:63bf:f5ff:fffe", true); // client 10.0.0.1
    check("2001:0:4136:e378:8000:63bf:f7f7:f7f7", false); // client 8.8.8.8
    check("2001:0:7f00:1:8000:63bf:f7f7:f7f7", true); // server 127.0.0.1
    check("2001:1::1", false);
}

/// Every IPv4 address an IPv6 address embeds, one row per transition mechanism.
#[test]
fn embedded_ipv4_per_form() {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use crate::local::embedded_v4;
    #[track_caller]
    fn check(v6: &str, expected: &[&str]) {
        let ip: Ipv6Addr = v6.parse().expect("test address parses");
        let mut want: Vec<Ipv4Addr> = expected.iter().map(|a| a.parse().unwrap()).collect();
        want.sort_unstable();
        assert_eq!(embedded_v4(ip), want, "{v6}");
    }
    check("::ffff:127.0.0.2", &["127.0.0.2"]); // mapped
    check("::127.0.0.2", &["127.0.0.2"]); // compatible
    check("::ffff:0:127.0.0.2", &["127.0.0.2"]); // translated
    check("64:ff9b::127.0.0.2", &["127.0.0.2"]); // NAT64 well-known
    check("2002:7f00:2::", &["127.0.0.2"]); // 6to4
    check("2002:5db8:d822:1::5", &["93.184.216.34"]);
    // Teredo: server 65.54.227.120, client NOT(0x80ff:fffe) = 127.0.0.1.
    check("2001:0:4136:e378:8000:63bf:80ff:fffe", &["65.54.227.120", "127.0.0.1"]);
    // Local-use NAT64 /96 and /64 positions.
    let nat64 = embedded_v4("64:ff9b:1::7f00:2".parse().unwrap());
    assert!(nat64.contains(&"127.0.0.2".parse().unwrap()), "{nat64:?}");
    let nat64_64 = embedded_v4("64:ff9b:1:0:7f:0:200::".parse().unwrap());
    assert!(nat64_64.contains(&"127.0.0.2".parse().unwrap()), "{nat64_64:?}");
    // Not embeddings.
    check("::", &[]);
    check("::1", &[]);
    check("2606:4700::1111", &[]);
    check("fe80::1", &[]);
}

#[test]
fn every_embedding_of_a_local_address_is_local() {
    for v6 in [
        "::127.0.0.2",
        "::ffff:0:127.0.0.2",
        "2002:7f00:2::",
        "2002:a00:1::",
        "::ffff:0:10.0.0.1",
        "::169.254.169.254",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        "2001:0:7f00:1:0:0:1:1",
    ] {
        check(v6, true);
    }
    for v6 in ["2002:5db8:d822::", "::ffff:0:93.184.216.34", "::93.184.216.34"] {
        check(v6, false);
    }
}
