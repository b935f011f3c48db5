//! Where an outbound request goes, and whether it may be reached.
//!
//! A target is an `http` or `https` URL with a host and no user name. Where
//! the caller asks (webhook URLs, unless `webhooks.allow_private_targets`),
//! every address its host resolves
//! to must be public: loopback, link-local (cloud metadata lives there),
//! private, shared (CGNAT), multicast and unspecified addresses are refused,
//! IPv4-mapped IPv6 included. The check runs at registration, and again on
//! every delivery against the addresses actually connected to, so a name
//! that later resolves inward (DNS rebinding) is refused too.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use axum::http::Uri;

/// Longest URL accepted.
const URL_BYTES_MAX: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Which addresses deliveries may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    PublicOnly,
    /// Operators' own services (a JWKS URL), or webhook receivers inside the
    /// network with `webhooks.allow_private_targets`.
    Anywhere,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// The host as written (brackets removed from an IPv6 literal).
    pub host: String,
    pub port: u16,
    /// `host[:port]` as the `Host` header carries it.
    pub authority: String,
    pub path_and_query: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("url must be an absolute http or https URL of at most {URL_BYTES_MAX} bytes")]
    Malformed,
    #[error("url must not carry a user name or password")]
    Credentials,
    #[error("the url's host {0} does not resolve")]
    Unresolved(String),
    #[error(
        "the url's host reaches {0}, a loopback, link-local or private address \
         (allowed only with webhooks.allow_private_targets)"
    )]
    Private(IpAddr),
}

impl Target {
    pub fn parse(raw: &str) -> Result<Self, TargetError> {
        if raw.len() > URL_BYTES_MAX || raw.contains('#') {
            return Err(TargetError::Malformed);
        }
        let uri: Uri = raw.parse().map_err(|_| TargetError::Malformed)?;
        let scheme = match uri.scheme_str() {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            _ => return Err(TargetError::Malformed),
        };
        let authority = uri.authority().ok_or(TargetError::Malformed)?;
        if authority.as_str().contains('@') {
            return Err(TargetError::Credentials);
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(TargetError::Malformed);
        }
        let port = authority.port_u16().unwrap_or(match scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        });
        let path_and_query = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
            authority: authority.as_str().to_owned(),
            path_and_query: if path_and_query.is_empty() {
                "/".to_owned()
            } else {
                path_and_query
            },
        })
    }

    /// The addresses to connect to: every one the host resolves to, each
    /// allowed by `reach`; an error names the first refused.
    pub async fn resolve(&self, reach: Reach) -> Result<Vec<SocketAddr>, TargetError> {
        let addresses: Vec<SocketAddr> = match self.host.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, self.port)],
            Err(_) => tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|_| TargetError::Unresolved(self.host.clone()))?
                .collect(),
        };
        if addresses.is_empty() {
            return Err(TargetError::Unresolved(self.host.clone()));
        }
        if reach == Reach::PublicOnly
            && let Some(refused) = addresses.iter().find(|a| !is_public(a.ip()))
        {
            return Err(TargetError::Private(refused.ip()));
        }
        Ok(addresses)
    }
}

/// Whether `ip` is an address on the public internet.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => is_public_v6(v6),
        },
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    let shared = a == 100 && (64..128).contains(&b); // 100.64.0.0/10, CGNAT
    let this_network = a == 0; // 0.0.0.0/8
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_unspecified()
        || ip.is_documentation()
        || shared
        || this_network
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    let nat64_local = first == 0x0064 && ip.segments()[1] == 0xff9b && ip.segments()[2] == 1;
    let documentation = first == 0x2001 && ip.segments()[1] == 0x0db8;
    !(ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (first & 0xffc0) == 0xfec0 // site-local, deprecated but routed inward
        || nat64_local
        || documentation)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_their_parts() {
        let t = Target::parse("https://hooks.example.com/stock?team=7").unwrap();
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!((t.host.as_str(), t.port), ("hooks.example.com", 443));
        assert_eq!(t.path_and_query, "/stock?team=7");
        let t = Target::parse("http://[2001:4860::8888]:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("2001:4860::8888", 8080));
        assert_eq!(
            (t.authority.as_str(), t.path_and_query.as_str()),
            ("[2001:4860::8888]:8080", "/")
        );
    }

    #[test]
    fn other_schemes_credentials_and_fragments_are_refused() {
        for raw in [
            "ftp://example.com/",
            "example.com/hook",
            "/hook",
            "http:///x",
            "https://a.example/#f",
            "",
        ] {
            assert_eq!(Target::parse(raw), Err(TargetError::Malformed), "{raw}");
        }
        assert_eq!(
            Target::parse("https://user:pw@example.com/"),
            Err(TargetError::Credentials)
        );
        assert_eq!(
            Target::parse(&format!(
                "https://example.com/{}",
                "a".repeat(URL_BYTES_MAX)
            )),
            Err(TargetError::Malformed)
        );
    }

    #[test]
    fn inward_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "192.0.2.1",
            "::1",
            "::",
            "fe80::1",
            "fc00::1",
            "fd12::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "2001:db8::1",
            "fec0::1",
            "64:ff9b:1::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} is inward");
        }
        for ip in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[tokio::test]
    async fn a_loopback_host_is_refused_unless_reach_is_anywhere() {
        let t = Target::parse("http://127.0.0.1:9/hook").unwrap();
        assert!(matches!(
            t.resolve(Reach::PublicOnly).await,
            Err(TargetError::Private(_))
        ));
        assert_eq!(
            t.resolve(Reach::Anywhere).await.unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        let t = Target::parse("http://localhost:9/hook").unwrap();
        assert!(matches!(
            t.resolve(Reach::PublicOnly).await,
            Err(TargetError::Private(_))
        ));
    }
}
