//! The SOCKS5 UDP request header (RFC 1928 §7) as the relay reads it, and its target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use proxyd_fuzz::check_target;
use proxyd_socks5::fuzzing::read_udp_header;

fuzz_target!(|data: &[u8]| {
    let Ok(header) = read_udp_header(data) else { return };
    // The payload is what follows the header, untouched.
    assert!(data.ends_with(header.payload), "{data:?}: payload is not the datagram's tail");
    let header_len = data.len() - header.payload.len();
    let addr_len = match data.get(3) {
        Some(1) => 4,
        Some(4) => 16,
        Some(3) => 1 + usize::from(data[4]),
        atyp => panic!("{data:?}: address type {atyp:?} accepted"),
    };
    assert_eq!(header_len, 4 + addr_len + 2, "{data:?}: a {header_len}-byte header");
    assert_eq!(header.frag, data[2], "{data:?}: frag");
    let Ok(target) = &header.target else { return };
    let shown = header.domain.clone().unwrap_or_else(|| target.host.to_string());
    check_target(&shown, target);
});
