//! The PROXY protocol v2 header a target group with `proxy_protocol_v2.enabled` gets in front of
//! each connection, as NLB sends it: the client's address and port, the address and port it
//! connected to, and on TLS listeners the client's SNI as a `PP2_TYPE_AUTHORITY` TLV (the spec's
//! TLV for "the host name value passed by the client", which HAProxy reads as
//! `fc_pp_authority`). Encoded by the `ppp` crate's builder (small, its one dependency
//! `thiserror`; an encoder and parser of both versions with their own tests) rather than by
//! hand: the layout is easy to get wrong by one byte, and the test below reads it back with the
//! crate's parser and HAProxy reads it in `tests/tests/nlb_proxy_protocol.rs`.

use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use ppp::v2::{Builder, Command, Protocol, Type, Version};

/// The header for a connection from `client` to `local` (the listener's address as the client
/// reached it), with the TLS server name `sni` if there was one.
pub fn header(client: SocketAddr, local: SocketAddr, sni: Option<&str>) -> io::Result<Vec<u8>> {
    // A dual-stack socket gives IPv4 clients as mapped IPv6 addresses: both ends in one family.
    let (client, local) = match (v4(client), v4(local)) {
        (Some(c), Some(l)) => (c, l),
        _ => (v6(client), v6(local)),
    };
    let mut b = Builder::with_addresses(
        Version::Two | Command::Proxy,
        Protocol::Stream,
        (client, local),
    );
    if let Some(name) = sni {
        b = b.write_tlv(Type::Authority, name.as_bytes())?;
    }
    b.build()
}

/// `a` as IPv4, if it is one (mapped ones included).
fn v4(a: SocketAddr) -> Option<SocketAddr> {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4,
        IpAddr::V6(v6) => v6.to_ipv4_mapped()?,
    };
    Some(SocketAddr::new(ip.into(), a.port()))
}

/// `a` as IPv6 (IPv4 as mapped).
fn v6(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    SocketAddr::new(ip.into(), a.port())
}

#[cfg(test)]
mod tests {
    use ppp::v2::{Addresses, Header};

    use super::*;

    #[test]
    fn the_header_names_both_ends_and_the_server_name() {
        let client: SocketAddr = "127.0.0.7:40000".parse().unwrap();
        let local: SocketAddr = "[::ffff:127.0.0.1]:8443".parse().unwrap();
        let bytes = header(client, local, Some("api.example.com")).unwrap();
        // The spec's signature, then version 2 / PROXY, then TCP over IPv4.
        assert_eq!(&bytes[..12], b"\r\n\r\n\0\r\nQUIT\n");
        assert_eq!(bytes[12..14], [0x21, 0x11]);
        let parsed = Header::try_from(&bytes[..]).unwrap();
        let Addresses::IPv4(a) = parsed.addresses else {
            panic!("{:?}", parsed.addresses)
        };
        assert_eq!(
            (a.source_address.to_string(), a.source_port),
            ("127.0.0.7".into(), 40000)
        );
        assert_eq!(
            (a.destination_address.to_string(), a.destination_port),
            ("127.0.0.1".into(), 8443)
        );
        let tlvs: Vec<_> = parsed.tlvs().collect::<Result<_, _>>().unwrap();
        assert_eq!(tlvs.len(), 1);
        assert_eq!(tlvs[0].kind, u8::from(Type::Authority));
        assert_eq!(&tlvs[0].value[..], b"api.example.com");
        // Without SNI, no TLV; IPv6 stays IPv6.
        let v6 = header(
            "[2001:db8::1]:1".parse().unwrap(),
            "[::1]:2".parse().unwrap(),
            None,
        );
        let v6 = v6.unwrap();
        let parsed = Header::try_from(&v6[..]).unwrap();
        assert!(matches!(parsed.addresses, Addresses::IPv6(_)));
        assert_eq!(parsed.tlvs().count(), 0);
    }
}
