//! The local/private address classifier (SPEC §5.1): one function, used for literals and for
//! every resolved address alike.
//!
//! An address is local when connecting to it could reach this machine, its private networks,
//! or infrastructure that looks public but answers only locally (cloud metadata). Addresses that
//! embed an IPv4 address ([`embedded_v4`]) are judged by every address they embed, because
//! stacks and translators on the path may deliver them to it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// IPv4 ranges that are local, as (network, prefix length).
const LOCAL_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(0, 0, 0, 0), 8),        // "this network" (RFC 791)
    (Ipv4Addr::new(10, 0, 0, 0), 8),       // private (RFC 1918)
    (Ipv4Addr::new(100, 64, 0, 0), 10),    // shared address space, CGNAT (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8),      // loopback (RFC 1122)
    (Ipv4Addr::new(169, 254, 0, 0), 16),   // link-local, cloud metadata (RFC 3927)
    (Ipv4Addr::new(172, 16, 0, 0), 12),    // private (RFC 1918)
    (Ipv4Addr::new(192, 0, 0, 0), 24),     // IETF protocol assignments (RFC 6890)
    (Ipv4Addr::new(192, 0, 2, 0), 24),     // TEST-NET-1 (RFC 5737)
    (Ipv4Addr::new(192, 88, 99, 0), 24),   // 6to4 relay anycast (RFC 7526)
    (Ipv4Addr::new(192, 168, 0, 0), 16),   // private (RFC 1918)
    (Ipv4Addr::new(198, 18, 0, 0), 15),    // benchmarking (RFC 2544)
    (Ipv4Addr::new(198, 51, 100, 0), 24),  // TEST-NET-2 (RFC 5737)
    (Ipv4Addr::new(203, 0, 113, 0), 24),   // TEST-NET-3 (RFC 5737)
    (Ipv4Addr::new(224, 0, 0, 0), 4),      // multicast (RFC 5771)
    (Ipv4Addr::new(240, 0, 0, 0), 4),      // reserved and limited broadcast (RFC 1112, 919)
    (Ipv4Addr::new(168, 63, 129, 16), 32), // Azure wire server and metadata
];

/// IPv6 ranges that are local in themselves, as (network, prefix length).
const LOCAL_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::UNSPECIFIED, 128), // unspecified (RFC 4291)
    (Ipv6Addr::LOCALHOST, 128),   // loopback (RFC 4291)
    (Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64), // discard-only (RFC 6666)
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation (RFC 3849)
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7), // unique local (RFC 4193)
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local (RFC 4291)
    (Ipv6Addr::new(0xfec0, 0, 0, 0, 0, 0, 0, 0), 10), // site-local (RFC 3879)
    (Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8), // multicast (RFC 4291)
    (Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48), // local-use NAT64 (RFC 8215)
    (Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254), 128), // AWS metadata over IPv6
];

/// Whether connecting to `ip` could reach this machine or a private network (SPEC §5.1).
pub fn is_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_local_v4(v4),
        IpAddr::V6(v6) => is_local_v6(v6),
    }
}

fn is_local_v4(ip: Ipv4Addr) -> bool {
    LOCAL_V4.iter().any(|&(net, len)| in_prefix_v4(ip, net, len))
}

fn is_local_v6(ip: Ipv6Addr) -> bool {
    LOCAL_V6.iter().any(|&(net, len)| in_prefix_v6(ip, net, len))
        || embedded_v4(ip).iter().any(|v4| is_local_v4(*v4))
}

/// Every IPv4 address an IPv6 address embeds by a transition mechanism that may deliver the
/// packet to it: the one function the local classifier, the denylist and the local-unlock rule
/// all use, so no spelling is known to one and not the others.
///
/// - IPv4-mapped `::ffff:0:0/96` (RFC 4291 §2.5.5.2), IPv4-compatible `::/96` (deprecated,
///   RFC 4291 §2.5.5.1), IPv4-translated `::ffff:0:0:0/96` (RFC 2765 §2.1) and the well-known
///   NAT64 prefix `64:ff9b::/96` (RFC 6052 §2.1): the low 32 bits;
/// - the local-use NAT64 prefix `64:ff9b:1::/48` (RFC 8215): the operator picks the prefix
///   length inside it, so every RFC 6052 §2.2 position a /48 to /96 prefix can use;
/// - 6to4 `2002::/16` (RFC 3056 §2): bits 16–47;
/// - Teredo `2001::/32` (RFC 4380 §4): the server (bits 32–63) and the client (the bitwise NOT
///   of the low 32 bits).
///
/// `::` and `::1` are not taken as compatible addresses (they are the unspecified and loopback
/// IPv6 addresses, classified as such).
pub fn embedded_v4(ip: Ipv6Addr) -> Vec<Ipv4Addr> {
    let bits = u128::from(ip);
    let seg = ip.segments();
    let pair = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    let low32 = Ipv4Addr::from(bits as u32);
    let high96 = bits >> 32;
    let mut found = Vec::new();
    if (high96 == 0 && bits > 1)
        || high96 == 0xffff
        || high96 == 0xffff_0000
        || high96 == 0x0064_ff9b_u128 << 64
    {
        found.push(low32);
    }
    if in_prefix_v6(ip, Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0), 48) {
        let b = ip.octets();
        // RFC 6052 §2.2: the u octet (bits 64–71) is skipped.
        found.push(Ipv4Addr::new(b[6], b[7], b[9], b[10])); // /48
        found.push(Ipv4Addr::new(b[7], b[9], b[10], b[11])); // /56
        found.push(Ipv4Addr::new(b[9], b[10], b[11], b[12])); // /64
        found.push(low32); // /96
    }
    if seg[0] == 0x2002 {
        found.push(pair(seg[1], seg[2]));
    }
    if seg[0] == 0x2001 && seg[1] == 0 {
        found.push(pair(seg[2], seg[3]));
        found.push(Ipv4Addr::from(!(bits as u32)));
    }
    found.sort_unstable();
    found.dedup();
    found
}

fn in_prefix_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_prefix_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}
