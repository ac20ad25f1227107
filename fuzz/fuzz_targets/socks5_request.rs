//! The SOCKS5 request reader (RFC 1928 §4) and the target it yields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyd_fuzz::check_target;
use proxyd_policy::{Host, Target};
use proxyd_socks5::fuzzing::read_request;

fuzz_target!(|data: &[u8]| {
    let Ok((command, target)) = read_request(data) else { return };
    assert!(matches!(command, 1 | 3), "{data:?}: command {command} accepted");
    // The shortest request is an empty domain name: 4 + 1 + 0 + 2 bytes.
    assert!(data.len() >= 7 && data[..3] == [5, command, 0], "{data:?}: framing accepted");
    // The address bytes mean what the request's address type says; bytes after the port are
    // not the reader's.
    let addr_len = match data[3] {
        1 => 4,
        4 => 16,
        3 => 1 + usize::from(data[4]),
        atyp => panic!("{data:?}: address type {atyp} accepted"),
    };
    let port_at = 4 + addr_len;
    assert!(data.len() >= port_at + 2, "{data:?}: truncated request accepted");
    let Ok(target) = target else { return };
    let port = u16::from_be_bytes([data[port_at], data[port_at + 1]]);
    let addr = &data[4..port_at];
    let expected = match data[3] {
        1 => Target::from_host(Host::Ip(<[u8; 4]>::try_from(addr).unwrap().into()), port),
        4 => Target::from_host(Host::Ip(<[u8; 16]>::try_from(addr).unwrap().into()), port),
        _ => Target::from_socks_domain(&addr[1..], port),
    };
    assert_eq!(expected.as_ref(), Ok(&target), "{data:?}");
    let shown = match data[3] {
        3 => String::from_utf8_lossy(&data[5..5 + usize::from(data[4])]).into_owned(),
        _ => target.host.to_string(),
    };
    check_target(&shown, &target);
});
