//! Where an upstream may send the proxy: every connection the upstream's
//! client opens goes through [`GuardedConnector`], which refuses loopback,
//! link-local, private, CGNAT, unspecified and cloud-metadata addresses for
//! any host other than the configured upstream itself.
//!
//! A hostile upstream chooses its redirect targets (blob CDNs) and token
//! realms. Without this check it could point the proxy at
//! `169.254.169.254` (cloud role credentials), at services on the proxy's
//! own host, or at the private network behind it. IP literals are checked
//! before connecting; host names after resolution, so a name that resolves to
//! a metadata address is refused as well (the check and the connection use
//! the same addresses: there is no second lookup to rebind).
//!
//! Allowed besides public addresses: the address class of the upstream's own
//! IP literal (an upstream at `127.0.0.1` may redirect to `127.0.0.2`), and
//! every class but metadata and reserved when the upstream entry sets the
//! weakening switch `insecureAllowPrivateAddresses: true`.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::{GaiResolver, Name};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use crate::config::Upstream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, BoxError>> + Send>>;

/// What kind of network an address belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AddressClass {
    Public,
    Loopback,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// The instance metadata services: `169.254.169.254` (AWS, GCP, Azure,
    /// OCI, ...), `fd00:ec2::254` (AWS IPv6), `100.100.100.200` (Alibaba).
    CloudMetadata,
    /// 10/8, 172.16/12, 192.168/16, fc00::/7, fec0::/10.
    Private,
    /// 100.64.0.0/10 (carrier-grade NAT, also used inside clouds).
    SharedCgnat,
    /// 0.0.0.0/8 and `::` (Linux connects them to the local host).
    Unspecified,
    /// Multicast, broadcast, 240/4, benchmarking and documentation ranges.
    Reserved,
}

impl AddressClass {
    fn as_str(self) -> &'static str {
        match self {
            AddressClass::Public => "public",
            AddressClass::Loopback => "loopback",
            AddressClass::LinkLocal => "link-local",
            AddressClass::CloudMetadata => "cloud metadata",
            AddressClass::Private => "private",
            AddressClass::SharedCgnat => "shared (CGNAT)",
            AddressClass::Unspecified => "unspecified",
            AddressClass::Reserved => "reserved",
        }
    }
}

const METADATA_V4: [Ipv4Addr; 2] = [Ipv4Addr::new(169, 254, 169, 254), Ipv4Addr::new(100, 100, 100, 200)];
const METADATA_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254);

/// The class of `ip`. IPv6 forms that embed an IPv4 address (mapped
/// `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4
/// `2002::/16`) are judged by the IPv4 address they reach.
pub(super) fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, _, _] = ip.octets();
    if METADATA_V4.contains(&ip) {
        AddressClass::CloudMetadata
    } else if a == 0 {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if ip.is_private() {
        AddressClass::Private
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else if ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a >= 240
        || (a == 198 && (b & 0xfe) == 18)
        || (a == 192 && b == 0 && ip.octets()[2] == 0)
    {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if ip == METADATA_V6 {
        return AddressClass::CloudMetadata;
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if first & 0xff00 == 0xff00 || (first == 0x2001 && ip.segments()[1] == 0x0db8) {
        AddressClass::Reserved
    } else {
        AddressClass::Public
    }
}

/// The IPv4 address an IPv6 address stands for, when it embeds one.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    let nat64 = s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0];
    // `::a.b.c.d` (deprecated "compatible" form), but not `::` and `::1`.
    let compatible = s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1);
    if nat64 || compatible {
        return Some(low);
    }
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
}

/// Whether a destination of class `dest` may be contacted, given the class
/// of the upstream's own IP literal (if it is one) and the weakening switch.
/// Metadata and reserved addresses are never allowed: no registry lives
/// there, and a redirect to them is only ever an attack on the proxy.
pub(super) fn permits(dest: AddressClass, origin: Option<AddressClass>, allow_private: bool) -> bool {
    match dest {
        AddressClass::Public => true,
        AddressClass::CloudMetadata | AddressClass::Reserved => false,
        class if origin == Some(class) => true,
        _ => allow_private,
    }
}

/// A connection the guard refused (carried as the connector's error, and
/// recognised again in `client::classify`).
#[derive(Debug)]
pub(super) struct DestinationRefused {
    host: String,
    ip: IpAddr,
    class: AddressClass,
}

impl fmt::Display for DestinationRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is a {} address ({}); only the upstream itself may be there \
             (`insecureAllowPrivateAddresses: true` allows private ones)",
            self.host,
            self.class.as_str(),
            self.ip
        )
    }
}

impl std::error::Error for DestinationRefused {}

/// The destination policy of one upstream.
#[derive(Debug)]
pub(super) struct DestinationGuard {
    /// The configured upstream's host (lowercase, no brackets, no port): the
    /// operator chose it, so it is never filtered.
    origin_host: String,
    origin_class: Option<AddressClass>,
    allow_private: bool,
}

impl DestinationGuard {
    pub(super) fn for_upstream(upstream: &Upstream) -> DestinationGuard {
        let origin_host = host_without_port(upstream.url.authority.as_str());
        let origin_class = origin_host.parse::<IpAddr>().ok().map(classify);
        DestinationGuard {
            origin_host,
            origin_class,
            allow_private: upstream.insecure_allow_private_addresses,
        }
    }

    fn is_origin(&self, host: &str) -> bool {
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .eq_ignore_ascii_case(&self.origin_host)
    }

    fn check(&self, host: &str, ip: IpAddr) -> Result<(), DestinationRefused> {
        let class = classify(ip);
        if self.is_origin(host) || permits(class, self.origin_class, self.allow_private) {
            Ok(())
        } else {
            Err(DestinationRefused {
                host: host.to_owned(),
                ip,
                class,
            })
        }
    }

    /// An IP literal in `uri` (which the connector does not resolve).
    fn check_literal(&self, uri: &Uri) -> Result<(), DestinationRefused> {
        let Some(host) = uri.host() else {
            return Ok(()); // the connector refuses a URI without a host itself
        };
        match host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => self.check(host, ip),
            Err(_) => Ok(()),
        }
    }

    /// The resolved addresses of `name` the proxy may connect to; an error
    /// when none remains.
    fn filter_resolved(
        &self,
        name: &str,
        addrs: impl Iterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, DestinationRefused> {
        let mut allowed = Vec::new();
        let mut first_refusal = None;
        for addr in addrs {
            match self.check(name, addr.ip()) {
                Ok(()) => allowed.push(addr),
                Err(refused) => {
                    first_refusal.get_or_insert(refused);
                }
            }
        }
        match first_refusal {
            Some(refused) if allowed.is_empty() => Err(refused),
            _ => Ok(allowed),
        }
    }
}

/// `host[:port]` or `[v6][:port]` → the host, lowercase, without brackets.
fn host_without_port(authority: &str) -> String {
    let host = match authority.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(rest),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.to_ascii_lowercase()
}

/// DNS through `getaddrinfo`, keeping only the addresses the guard allows.
#[derive(Clone)]
pub(super) struct GuardedResolver {
    inner: GaiResolver,
    guard: Arc<DestinationGuard>,
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let guard = self.guard.clone();
        let resolving = self.inner.call(name.clone());
        Box::pin(async move {
            let addrs = resolving.await?;
            Ok(guard.filter_resolved(name.as_str(), addrs)?.into_iter())
        })
    }
}

/// The TCP connector of an upstream client: IP literals are checked before
/// connecting, names by the [`GuardedResolver`] inside.
#[derive(Clone)]
pub(super) struct GuardedConnector {
    inner: HttpConnector<GuardedResolver>,
    guard: Arc<DestinationGuard>,
}

impl GuardedConnector {
    /// Wrap an `HttpConnector` configuration (timeouts, nodelay) with the
    /// guard: `configure` receives the connector to set up.
    pub(super) fn new(guard: DestinationGuard, configure: impl FnOnce(&mut HttpConnector<GuardedResolver>)) -> Self {
        let guard = Arc::new(guard);
        let mut inner = HttpConnector::new_with_resolver(GuardedResolver {
            inner: GaiResolver::new(),
            guard: guard.clone(),
        });
        configure(&mut inner);
        GuardedConnector { inner, guard }
    }
}

impl Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        if let Err(refused) = self.guard.check_literal(&dst) {
            return Box::pin(std::future::ready(Err(refused.into())));
        }
        let connecting = self.inner.call(dst);
        Box::pin(async move { connecting.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::AddressClass::*;
    use super::*;

    fn class_of(s: &str) -> AddressClass {
        classify(s.parse().expect("ip"))
    }

    #[test]
    fn ipv4_classes() {
        for (ip, class) in [
            ("8.8.8.8", Public),
            ("104.18.0.1", Public),
            ("127.0.0.1", Loopback),
            ("127.0.0.2", Loopback),
            ("169.254.169.254", CloudMetadata),
            ("100.100.100.200", CloudMetadata),
            ("169.254.170.2", LinkLocal),
            ("10.0.0.5", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("172.32.0.1", Public),
            ("192.168.1.1", Private),
            ("100.64.0.1", SharedCgnat),
            ("100.127.255.255", SharedCgnat),
            ("100.128.0.1", Public),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("224.0.0.1", Reserved),
            ("255.255.255.255", Reserved),
            ("240.0.0.1", Reserved),
            ("198.18.0.1", Reserved),
        ] {
            assert_eq!(class_of(ip), class, "{ip}");
        }
    }

    #[test]
    fn ipv6_classes_and_embedded_ipv4() {
        for (ip, class) in [
            ("2606:4700::1", Public),
            ("::1", Loopback),
            ("::", Unspecified),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("fd00:ec2::254", CloudMetadata),
            ("fd00::1", Private),
            ("fc00::1", Private),
            ("fec0::1", Private),
            ("ff02::1", Reserved),
            ("2001:db8::1", Reserved),
            ("::ffff:169.254.169.254", CloudMetadata),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Private),
            ("::ffff:8.8.8.8", Public),
            ("::169.254.169.254", CloudMetadata),
            ("64:ff9b::a9fe:a9fe", CloudMetadata),
            ("64:ff9b::808:808", Public),
            ("2002:a9fe:a9fe::1", CloudMetadata),
            ("2002:0a00:0001::1", Private),
        ] {
            assert_eq!(class_of(ip), class, "{ip}");
        }
    }

    #[test]
    fn only_public_and_the_upstreams_own_class_are_permitted() {
        assert!(permits(Public, None, false));
        for class in [
            Loopback,
            LinkLocal,
            Private,
            SharedCgnat,
            Unspecified,
            CloudMetadata,
            Reserved,
        ] {
            assert!(!permits(class, None, false), "{class:?} refused for a public upstream");
        }
        assert!(permits(Loopback, Some(Loopback), false), "an upstream on loopback");
        assert!(!permits(Private, Some(Loopback), false));
        assert!(permits(Private, Some(Private), false));
        for class in [Loopback, LinkLocal, Private, SharedCgnat, Unspecified] {
            assert!(permits(class, None, true), "{class:?} under the weakening switch");
        }
        for origin in [None, Some(LinkLocal), Some(CloudMetadata)] {
            for allow in [false, true] {
                assert!(
                    !permits(CloudMetadata, origin, allow),
                    "metadata is never a destination"
                );
                assert!(!permits(Reserved, origin, allow));
            }
        }
    }

    fn guard(origin: &str, allow_private: bool) -> DestinationGuard {
        let origin_host = host_without_port(origin);
        DestinationGuard {
            origin_class: origin_host.parse::<IpAddr>().ok().map(classify),
            origin_host,
            allow_private,
        }
    }

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().expect("socket addr")).collect()
    }

    #[test]
    fn resolved_names_are_filtered_and_the_origin_is_exempt() {
        let public = guard("registry.example:443", false);
        // A name resolving to the metadata service: refused.
        let err = public
            .filter_resolved("evil.example", addrs(&["169.254.169.254:80"]).into_iter())
            .expect_err("metadata");
        assert_eq!(err.class, CloudMetadata);
        assert!(err.to_string().contains("evil.example"), "{err}");
        // Mixed answers keep only the allowed addresses.
        assert_eq!(
            public
                .filter_resolved("cdn.example", addrs(&["10.0.0.1:443", "93.184.216.34:443"]).into_iter())
                .expect("one public address"),
            addrs(&["93.184.216.34:443"])
        );
        // The configured upstream host itself is the operator's choice.
        assert!(
            public
                .filter_resolved("REGISTRY.example", addrs(&["10.0.0.1:443"]).into_iter())
                .is_ok()
        );
        let switched = guard("registry.example", true);
        assert!(
            switched
                .filter_resolved("minio.internal", addrs(&["10.0.0.9:9000"]).into_iter())
                .is_ok()
        );
    }

    #[test]
    fn literals_in_uris() {
        let local = guard("127.0.0.1:5000", false);
        let check = |g: &DestinationGuard, uri: &str| g.check_literal(&uri.parse().expect("uri")).map_err(|e| e.class);
        assert_eq!(check(&local, "http://127.0.0.2:9000/token"), Ok(()));
        assert_eq!(check(&local, "http://169.254.169.254/x"), Err(CloudMetadata));
        assert_eq!(check(&local, "http://[::ffff:169.254.169.254]/x"), Err(CloudMetadata));
        assert_eq!(check(&local, "http://[fe80::1]:80/x"), Err(LinkLocal));
        assert_eq!(check(&local, "http://10.0.0.5:22/"), Err(Private));
        assert_eq!(
            check(&local, "https://cdn.example/x"),
            Ok(()),
            "names go to the resolver"
        );
        let v6 = guard("[::1]:5000", false);
        assert_eq!(check(&v6, "http://[::1]:6000/"), Ok(()));
        assert_eq!(check(&v6, "http://127.0.0.1:6000/"), Ok(()), "same class");
        assert_eq!(host_without_port("[::1]:5000"), "::1");
        assert_eq!(host_without_port("Registry.Example:443"), "registry.example");
        assert_eq!(host_without_port("ghcr.io"), "ghcr.io");
    }
}
