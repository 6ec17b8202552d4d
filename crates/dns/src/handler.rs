//! What answers a decoded query: hickory-server's `Catalog` over the zone's
//! `InMemoryZoneHandler` (zone selection, REFUSED outside the zone, NXDOMAIN and
//! NODATA with the SOA, the AA bit, EDNS, AXFR denied), behind a [`Guard`] that
//! answers some queries itself:
//!
//! - `ANY`: REFUSED, before the catalog is consulted (no amplification);
//! - opcodes other than QUERY (UPDATE, NOTIFY…): NOTIMP, and EDNS versions above 0:
//!   BADVERS, as the catalog would, but without the warning it logs for each (a
//!   client could fill the log);
//! - `NS` at the apex: the NS records with the address of *every* nameserver in the
//!   additional section, as BIND and NSD give it. hickory 0.26 follows only the first
//!   record of the NS set for additional records, so the glue of `dns2` and later
//!   would be missing.
//!
//! [`Capture`] is the hickory `ResponseHandler` that encodes the response into bytes
//! for the socket loops of `net.rs` to send: over UDP within the client's EDNS size
//! (512 bytes without EDNS, never over [`UDP_PAYLOAD`]), the TC bit set when the
//! records do not fit, so the client retries over TCP.

use std::iter;
use std::sync::{Arc, Mutex};

use hickory_server::net::NetError;
use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{Edns, Header, HeaderCounts, Metadata, OpCode, ResponseCode};
use hickory_server::proto::rr::{DNSClass, LowerName, Record, RecordType};
use hickory_server::proto::serialize::binary::{BinEncodable, BinEncoder};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponse, MessageResponseBuilder};
use tracing::{debug, warn};

use crate::metrics::Metrics;

/// The largest UDP response sent, whatever the client's EDNS says: the DNS flag day
/// 2020 size, which avoids IP fragmentation.
pub(crate) const UDP_PAYLOAD: u16 = 1232;

/// The zone's catalog, with `ANY` refused, other opcodes and EDNS versions answered
/// quietly, and the apex's NS answered with all the glue.
pub(crate) struct Guard {
    pub(crate) catalog: Catalog,
    pub(crate) metrics: Metrics,
    /// The zone's name.
    pub(crate) apex: LowerName,
    /// The apex's NS records.
    pub(crate) ns: Vec<Record>,
    /// The nameservers' addresses.
    pub(crate) glue: Vec<Record>,
}

impl Guard {
    /// Whether `request` (a plain query: others were refused before) asks for the NS
    /// records of the apex, and only that.
    fn asks_apex_ns(&self, request: &Request) -> bool {
        let [q] = request.queries.queries() else {
            return false;
        };
        q.query_type() == RecordType::NS
            && q.query_class() == DNSClass::IN
            && *q.name() == self.apex
    }
}

/// A bare SERVFAIL header with `metadata`'s id and flags.
fn servfail(mut metadata: Metadata) -> Header {
    metadata.response_code = ResponseCode::ServFail;
    Header {
        metadata,
        counts: HeaderCounts::default(),
    }
}

/// Sends `response`; on failure, what hickory reports: SERVFAIL.
async fn send<'a, R: ResponseHandler>(
    request: &Request,
    mut response_handle: R,
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match response_handle.send_response(response).await {
        Ok(info) => info,
        Err(error) => {
            warn!(%error, "dns: cannot send an answer");
            ResponseInfo::from(servfail(Metadata::response_from_request(&request.metadata)))
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Guard {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        let mut edns = Edns::new();
        edns.set_version(0).set_max_payload(UDP_PAYLOAD);
        // Answered here rather than by the catalog, which logs a warning for each.
        let refusal = if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if request
            .queries
            .queries()
            .iter()
            .any(|q| q.query_type() == RecordType::ANY)
        {
            self.metrics.any_refused.inc();
            Some(ResponseCode::Refused)
        } else {
            None
        };
        if let Some(code) = refusal {
            debug!(client = %request.src(), op = %request.metadata.op_code, %code, "dns: query refused");
            // BADVERS needs the OPT record for its high bits; the others echo EDNS.
            let with_edns = request.edns.is_some() || code == ResponseCode::BADVERS;
            let response =
                MessageResponseBuilder::new(&request.queries, with_edns.then_some(&edns))
                    .error_msg(&request.metadata, code);
            return send(request, response_handle, response).await;
        }
        if self.asks_apex_ns(request) {
            if let Some(e) = &request.edns {
                edns.set_max_payload(e.max_payload().max(512));
            }
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.authoritative = true;
            metadata.response_code = ResponseCode::NoError;
            let response =
                MessageResponseBuilder::new(&request.queries, request.edns.as_ref().map(|_| &edns))
                    .build(
                        metadata,
                        self.ns.iter(),
                        iter::empty(),
                        iter::empty(),
                        self.glue.iter(),
                    );
            return send(request, response_handle, response).await;
        }
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}

/// An encoded response and its response code.
pub(crate) type Encoded = (Vec<u8>, ResponseCode);

/// Keeps the encoded response for the caller to send.
#[derive(Clone)]
pub(crate) struct Capture {
    /// Whether the response goes over UDP (size-limited) or TCP.
    udp: bool,
    out: Arc<Mutex<Option<Encoded>>>,
}

impl Capture {
    /// A capture for a response over UDP (`udp`) or TCP.
    pub(crate) fn new(udp: bool) -> Capture {
        Capture {
            udp,
            out: Arc::new(Mutex::new(None)),
        }
    }

    /// The response, if the handler sent one.
    pub(crate) fn take(&self) -> Option<Encoded> {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

#[async_trait::async_trait]
impl ResponseHandler for Capture {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        let max = if self.udp {
            response
                .edns()
                .map_or(512, |e| e.max_payload().clamp(512, UDP_PAYLOAD))
        } else {
            u16::MAX
        };
        let metadata = *response.metadata();
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(error) => {
                // What hickory's own handle does: a bare SERVFAIL with the query's id.
                warn!(%error, id = metadata.id, "dns: cannot encode a response; SERVFAIL");
                bytes.clear();
                let mut encoder = BinEncoder::new(&mut bytes);
                let header = servfail(Metadata::new(
                    metadata.id,
                    metadata.message_type,
                    metadata.op_code,
                ));
                header
                    .emit(&mut encoder)
                    .map_err(|e| NetError::from(e.to_string()))?;
                ResponseInfo::from(header)
            }
        };
        *self.out.lock().unwrap_or_else(|e| e.into_inner()) = Some((bytes, info.response_code));
        Ok(info)
    }
}
