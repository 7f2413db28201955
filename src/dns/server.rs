//! The DNS listener: UDP, one task per query. Cluster names are answered from the catalog
//! (authoritative, TTL 5 s as CoreDNS's kubernetes plugin); any other name is relayed as-is to
//! the upstream resolver and its answer returned unchanged.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::{Answer, Catalog, QueryType, resolve};

const TTL: u32 = 5;
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Large enough for any UDP DNS message (EDNS0 allows up to 64 KiB, resolvers ask for ~1.2 KiB).
const MAX_PACKET: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

pub struct DnsServer {
    socket: Arc<UdpSocket>,
    catalog: Arc<dyn Catalog>,
    domain: String,
    upstream: Option<SocketAddr>,
}

/// The first `nameserver` of a resolv.conf text, port 53.
pub fn upstream_from_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .next()
}

/// Binds the DNS socket early (so a port in use fails `vkube serve` before anything starts).
pub fn bind_std(addr: SocketAddr) -> Result<std::net::UdpSocket, DnsError> {
    let bind_err = |source| DnsError::Bind { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(bind_err)?;
    socket.set_nonblocking(true).map_err(bind_err)?;
    Ok(socket)
}

impl DnsServer {
    pub fn from_std(
        socket: std::net::UdpSocket,
        catalog: Arc<dyn Catalog>,
        domain: &str,
        upstream: Option<SocketAddr>,
    ) -> std::io::Result<Self> {
        Ok(DnsServer {
            socket: Arc::new(UdpSocket::from_std(socket)?),
            catalog,
            domain: domain.trim_matches('.').to_ascii_lowercase(),
            upstream,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) {
        let this = Arc::new(self);
        let mut buf = vec![0u8; MAX_PACKET];
        loop {
            let received = tokio::select! {
                r = this.socket.recv_from(&mut buf) => r,
                _ = shutdown.changed() => break,
            };
            let (n, peer) = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS receive failed");
                    continue;
                }
            };
            let packet = buf[..n].to_vec();
            let this = this.clone();
            tokio::spawn(async move {
                if let Some(reply) = this.answer(&packet).await
                    && let Err(e) = this.socket.send_to(&reply, peer).await
                {
                    tracing::debug!(error = %e, %peer, "DNS reply failed");
                }
            });
        }
    }

    async fn answer(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let (answer, reply) = self.answer_counted(packet).await;
        let m = &crate::metrics::get().dns;
        if let Some(answer) = answer {
            m.answers
                .get_or_create(&crate::metrics::AnswerLabel { answer })
                .inc();
        }
        reply
    }

    /// The reply, and what kind of answer it is (for the metrics).
    async fn answer_counted(&self, packet: &[u8]) -> (Option<&'static str>, Option<Vec<u8>>) {
        // Garbage is dropped, as resolvers do: there is no id to answer to.
        let Ok(request) = Message::from_vec(packet) else {
            return (None, None);
        };
        let [query] = request.queries.as_slice() else {
            return (
                Some("formerr"),
                reply(&request, ResponseCode::FormErr, vec![]),
            );
        };
        crate::metrics::get()
            .dns
            .queries
            .get_or_create(&crate::metrics::QueryLabel {
                qtype: crate::metrics::labels::dns_qtype(query.query_type()),
            })
            .inc();
        let name = query.name().to_lowercase().to_ascii();
        let name = name.trim_end_matches('.');
        let qtype = match query.query_type() {
            RecordType::A => QueryType::A,
            RecordType::AAAA => QueryType::Aaaa,
            _ => QueryType::Other,
        };
        match resolve(name, qtype, &self.domain, self.catalog.as_ref()) {
            Answer::Forward => (Some("forwarded"), self.forward(packet).await),
            Answer::NxDomain => (
                Some("nxdomain"),
                reply(&request, ResponseCode::NXDomain, vec![]),
            ),
            Answer::NoData => (
                Some("nodata"),
                reply(&request, ResponseCode::NoError, vec![]),
            ),
            Answer::Addresses(ips) => {
                let records = ips
                    .into_iter()
                    .map(|ip| Record::from_rdata(query.name().clone(), TTL, RData::from(ip)))
                    .collect();
                (
                    Some("addresses"),
                    reply(&request, ResponseCode::NoError, records),
                )
            }
            Answer::Alias(target) => {
                let Ok(target) = Name::from_ascii(format!("{}.", target.trim_end_matches('.')))
                else {
                    return (None, None);
                };
                let record =
                    Record::from_rdata(query.name().clone(), TTL, RData::CNAME(CNAME(target)));
                (
                    Some("alias"),
                    reply(&request, ResponseCode::NoError, vec![record]),
                )
            }
        }
    }

    async fn forward(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let request = Message::from_vec(packet).ok()?;
        let Some(upstream) = self.upstream else {
            return reply(&request, ResponseCode::ServFail, vec![]);
        };
        let bind: SocketAddr = if upstream.is_ipv4() {
            ([0, 0, 0, 0], 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let relayed = async {
            let socket = UdpSocket::bind(bind).await.ok()?;
            socket.connect(upstream).await.ok()?;
            socket.send(packet).await.ok()?;
            let mut buf = vec![0u8; MAX_PACKET];
            let n = socket.recv(&mut buf).await.ok()?;
            buf.truncate(n);
            Some(buf)
        };
        let started = std::time::Instant::now();
        let relayed = tokio::time::timeout(UPSTREAM_TIMEOUT, relayed).await;
        let result = match relayed {
            Ok(Some(_)) => "ok",
            Ok(None) => "error",
            Err(_) => "timeout",
        };
        crate::metrics::get()
            .dns
            .upstream_duration
            .get_or_create(&crate::metrics::ResultLabel { result })
            .observe(started.elapsed().as_secs_f64());
        match relayed {
            Ok(Some(answer)) => Some(answer),
            _ => reply(&request, ResponseCode::ServFail, vec![]),
        }
    }
}

fn reply(request: &Message, code: ResponseCode, answers: Vec<Record>) -> Option<Vec<u8>> {
    let mut msg = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    msg.metadata.recursion_desired = request.metadata.recursion_desired;
    msg.metadata.recursion_available = true;
    msg.metadata.authoritative = code != ResponseCode::ServFail;
    msg.metadata.response_code = code;
    msg.add_queries(request.queries.iter().cloned());
    msg.add_answers(answers);
    msg.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::ServiceRecord;
    use hickory_proto::op::Query;
    use std::net::IpAddr;

    struct One;
    impl Catalog for One {
        fn service(&self, namespace: &str, name: &str) -> Option<ServiceRecord> {
            (namespace == "default" && name == "web")
                .then(|| ServiceRecord::ClusterIps(vec!["10.96.0.42".parse().unwrap()]))
        }
        fn endpoint_host(&self, _: &str, _: &str, _: &str) -> Option<IpAddr> {
            None
        }
    }

    async fn ask(server: &DnsServer, name: &str, t: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.id = 4242;
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        let packet = q.to_vec().unwrap();
        Message::from_vec(&server.answer(&packet).await.unwrap()).unwrap()
    }

    #[tokio::test]
    async fn answers_cluster_names_over_the_wire_format() {
        let socket = bind_std("127.0.0.1:0".parse().unwrap()).unwrap();
        let server = DnsServer::from_std(socket, Arc::new(One), "cluster.local.", None).unwrap();
        let a = ask(&server, "WEB.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(a.metadata.id, 4242);
        assert_eq!(a.metadata.response_code, ResponseCode::NoError);
        assert!(a.metadata.authoritative);
        assert_eq!(a.answers.len(), 1);
        assert_eq!(
            a.answers[0].data,
            RData::from("10.96.0.42".parse::<IpAddr>().unwrap())
        );
        let nx = ask(&server, "db.default.svc.cluster.local.", RecordType::A).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        let nodata = ask(&server, "web.default.svc.cluster.local.", RecordType::AAAA).await;
        assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
        assert!(nodata.answers.is_empty());
        // No upstream configured: outside names fail cleanly.
        let out = ask(&server, "example.com.", RecordType::A).await;
        assert_eq!(out.metadata.response_code, ResponseCode::ServFail);
        // Garbage gets no answer (and no panic).
        assert!(server.answer(&[1, 2, 3]).await.is_none());
    }

    #[tokio::test]
    async fn queries_and_answers_are_counted_by_type() {
        let m = &crate::metrics::get().dns;
        let count = |answer| {
            m.answers
                .get_or_create(&crate::metrics::AnswerLabel { answer })
                .get()
        };
        let queries = || {
            m.queries
                .get_or_create(&crate::metrics::QueryLabel { qtype: "AAAA" })
                .get()
        };
        let (addresses, nxdomain, nodata, aaaa) = (
            count("addresses"),
            count("nxdomain"),
            count("nodata"),
            queries(),
        );
        let socket = bind_std("127.0.0.1:0".parse().unwrap()).unwrap();
        let server = DnsServer::from_std(socket, Arc::new(One), "cluster.local.", None).unwrap();
        ask(&server, "web.default.svc.cluster.local.", RecordType::A).await;
        ask(&server, "db.default.svc.cluster.local.", RecordType::A).await;
        ask(&server, "web.default.svc.cluster.local.", RecordType::AAAA).await;
        // Counters only grow (other tests in this process may add to them too).
        assert!(count("addresses") > addresses);
        assert!(count("nxdomain") > nxdomain);
        assert!(count("nodata") > nodata);
        assert!(queries() > aaaa);
    }

    #[test]
    fn upstream_is_the_first_nameserver() {
        let conf = "# generated\nsearch example.org\nnameserver 10.0.0.2\nnameserver 10.0.0.3\n";
        assert_eq!(
            upstream_from_resolv_conf(conf),
            Some("10.0.0.2:53".parse().unwrap())
        );
        assert_eq!(upstream_from_resolv_conf("search x\n"), None);
    }
}
