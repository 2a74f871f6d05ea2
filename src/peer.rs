//! The connection a request came on: the calling workload's identity and the addresses, as
//! Envoy's connection properties give them. The filter reads each one only when a rule asks
//! (each read is a host call); everything derived from them is here, tested natively.

use std::cell::OnceCell;
use std::net::IpAddr;

/// What the host knows about the connection. `None`: the host has no such value (no peer
/// certificate, no SNI, a property the host does not offer).
pub trait Peer {
    /// `connection.uri_san_peer_certificate`: the first URI SAN of the peer certificate.
    fn uri_san(&self) -> Option<&str>;
    /// `source.address`: Envoy's remote address, after its `x-forwarded-for` handling.
    fn source_address(&self) -> Option<&str>;
    /// `destination.address`: the local address the connection came in on.
    fn destination_address(&self) -> Option<&str>;
    /// `connection.requested_server_name`.
    fn sni(&self) -> Option<&str>;
    /// `connection.sha256_peer_certificate_digest`: the client certificate's SHA-256, hex.
    fn certificate_digest(&self) -> Option<&str>;
}

/// A request with nothing known about its connection (and for requests whose configuration
/// never asks).
pub struct NoPeer;

impl Peer for NoPeer {
    fn uri_san(&self) -> Option<&str> {
        None
    }
    fn source_address(&self) -> Option<&str> {
        None
    }
    fn destination_address(&self) -> Option<&str> {
        None
    }
    fn sni(&self) -> Option<&str> {
        None
    }
    fn certificate_digest(&self) -> Option<&str> {
        None
    }
}

/// Values given up front: `explain`, tests.
#[derive(Debug, Clone, Default)]
pub struct FixedPeer {
    pub uri_san: Option<String>,
    pub source_address: Option<String>,
    pub destination_address: Option<String>,
    pub sni: Option<String>,
    pub certificate_digest: Option<String>,
}

impl Peer for FixedPeer {
    fn uri_san(&self) -> Option<&str> {
        self.uri_san.as_deref()
    }
    fn source_address(&self) -> Option<&str> {
        self.source_address.as_deref()
    }
    fn destination_address(&self) -> Option<&str> {
        self.destination_address.as_deref()
    }
    fn sni(&self) -> Option<&str> {
        self.sni.as_deref()
    }
    fn certificate_digest(&self) -> Option<&str> {
        self.certificate_digest.as_deref()
    }
}

/// The connection's properties, each read through `read` (a property path) on first use
/// only: a configuration whose rules never ask about the connection reads nothing.
pub struct LazyPeer<F: Fn([&str; 2]) -> Option<String>> {
    read: F,
    uri_san: OnceCell<Option<String>>,
    source_address: OnceCell<Option<String>>,
    destination_address: OnceCell<Option<String>>,
    sni: OnceCell<Option<String>>,
    certificate_digest: OnceCell<Option<String>>,
}

impl<F: Fn([&str; 2]) -> Option<String>> LazyPeer<F> {
    pub fn new(read: F) -> Self {
        LazyPeer {
            read,
            uri_san: OnceCell::new(),
            source_address: OnceCell::new(),
            destination_address: OnceCell::new(),
            sni: OnceCell::new(),
            certificate_digest: OnceCell::new(),
        }
    }

    fn get<'a>(&self, cell: &'a OnceCell<Option<String>>, path: [&str; 2]) -> Option<&'a str> {
        cell.get_or_init(|| (self.read)(path)).as_deref()
    }
}

impl<F: Fn([&str; 2]) -> Option<String>> Peer for LazyPeer<F> {
    fn uri_san(&self) -> Option<&str> {
        self.get(&self.uri_san, ["connection", "uri_san_peer_certificate"])
    }
    fn source_address(&self) -> Option<&str> {
        self.get(&self.source_address, ["source", "address"])
    }
    fn destination_address(&self) -> Option<&str> {
        self.get(&self.destination_address, ["destination", "address"])
    }
    fn sni(&self) -> Option<&str> {
        self.get(&self.sni, ["connection", "requested_server_name"])
    }
    fn certificate_digest(&self) -> Option<&str> {
        self.get(
            &self.certificate_digest,
            ["connection", "sha256_peer_certificate_digest"],
        )
    }
}

/// The workload identity in Istio's form, `cluster.local/ns/NS/sa/SA`: the SPIFFE URI SAN
/// without its scheme. A certificate without a SPIFFE ID names no principal.
pub fn principal(uri_san: &str) -> Option<&str> {
    uri_san
        .strip_prefix("spiffe://")
        .filter(|rest| !rest.is_empty())
}

/// The namespace segment of an Istio principal (`…/ns/NS/…`).
pub fn namespace(principal: &str) -> Option<&str> {
    let mut segments = principal.split('/');
    while let Some(segment) = segments.next() {
        if segment == "ns" {
            return segments.next().filter(|ns| !ns.is_empty());
        }
    }
    None
}

/// An address property (`10.0.0.1:80`, `[::1]:80`, or an address without a port) split into
/// the IP and the port.
pub fn parse_address(address: &str) -> Option<(IpAddr, Option<u16>)> {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        return Some((socket.ip(), Some(socket.port())));
    }
    address.parse::<IpAddr>().ok().map(|ip| (ip, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lazy_peer_reads_each_property_once_and_only_when_asked() {
        let reads = std::cell::RefCell::new(Vec::new());
        let peer = LazyPeer::new(|path: [&str; 2]| {
            reads.borrow_mut().push(path.join("."));
            (path[0] == "source").then(|| "10.0.0.1:5000".to_string())
        });
        assert_eq!(peer.source_address(), Some("10.0.0.1:5000"));
        assert_eq!(peer.source_address(), Some("10.0.0.1:5000"));
        assert_eq!(peer.sni(), None);
        assert_eq!(peer.sni(), None);
        assert_eq!(
            *reads.borrow(),
            ["source.address", "connection.requested_server_name"]
        );
    }

    #[test]
    fn principal_is_the_spiffe_id_without_its_scheme() {
        assert_eq!(
            principal("spiffe://cluster.local/ns/foo/sa/bar"),
            Some("cluster.local/ns/foo/sa/bar")
        );
        assert_eq!(principal("https://example.com/ns/foo"), None);
        assert_eq!(principal("spiffe://"), None);
    }

    #[test]
    fn namespace_is_the_segment_after_ns() {
        assert_eq!(namespace("cluster.local/ns/foo/sa/bar"), Some("foo"));
        assert_eq!(namespace("td/ns/foo"), Some("foo"));
        assert_eq!(namespace("td/ns//sa/bar"), None);
        assert_eq!(namespace("td/sa/bar"), None);
        // A service account named "ns" does not make a namespace out of what follows it.
        assert_eq!(namespace("td/ns/a/sa/ns"), Some("a"));
    }

    #[test]
    fn addresses_with_and_without_ports() {
        assert_eq!(
            parse_address("10.1.2.3:8080"),
            Some(("10.1.2.3".parse().unwrap(), Some(8080)))
        );
        assert_eq!(
            parse_address("[2001:db8::1]:443"),
            Some(("2001:db8::1".parse().unwrap(), Some(443)))
        );
        assert_eq!(
            parse_address("2001:db8::1"),
            Some(("2001:db8::1".parse().unwrap(), None))
        );
        assert_eq!(parse_address("envoy://internal"), None);
    }
}
