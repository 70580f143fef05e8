//! What a TLS listener (NLB's, in `[[listeners]]`) negotiates with its clients: the security
//! policy by its AWS name, and NLB's ALPN policy.

use serde::Deserialize;

/// A security policy by its ELB name. xlb's TLS is rustls's, so a policy sets the protocol
/// versions; the cipher suites are rustls's safe ones (AEAD only, ECDHE only) either way.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum SslPolicy {
    /// TLS 1.2 and 1.3: the default of ELB's console for NLB's TLS listeners.
    #[default]
    #[serde(rename = "ELBSecurityPolicy-TLS13-1-2-2021-06")]
    Tls13Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "ELBSecurityPolicy-TLS13-1-3-2021-06")]
    Tls13Only,
}

impl SslPolicy {
    /// Whether the policy takes TLS 1.2 (it always takes 1.3).
    pub fn tls12(self) -> bool {
        self == SslPolicy::Tls13Tls12
    }
}

/// NLB's `AlpnPolicy`: which application protocols a TLS listener offers, in its order of
/// preference. Toward a TLS target group, xlb offers the one it agreed with the client.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum AlpnPolicy {
    #[serde(rename = "HTTP1Only")]
    Http1Only,
    #[serde(rename = "HTTP2Only")]
    Http2Only,
    /// Both, HTTP/1.1 first.
    #[serde(rename = "HTTP2Optional")]
    Http2Optional,
    /// Both, HTTP/2 first.
    #[serde(rename = "HTTP2Preferred")]
    Http2Preferred,
    /// No ALPN (NLB's default).
    #[default]
    None,
}

impl AlpnPolicy {
    /// The protocols offered, the preferred first (the server's order decides).
    pub fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            AlpnPolicy::Http1Only => &[b"http/1.1"],
            AlpnPolicy::Http2Only => &[b"h2"],
            AlpnPolicy::Http2Optional => &[b"http/1.1", b"h2"],
            AlpnPolicy::Http2Preferred => &[b"h2", b"http/1.1"],
            AlpnPolicy::None => &[],
        }
    }
}
