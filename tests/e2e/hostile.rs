//! The project's own hostile client.
//!
//! Nothing here uses the project's request types: every request is protobuf
//! written byte by byte from the field numbers of `federation.proto`, sent
//! over real mTLS through a raw gRPC codec, and every answer is read with a
//! minimal protobuf reader. A hostile node (a valid certificate of tenant
//! `acme`) sends every class of bad request the coordinator must refuse;
//! each refusal is counted by class and checked for its exact status code
//! and a bounded message (≤ 1 KiB). A node whose certificate is revoked
//! while it is connected (its identity was valid a moment ago) must be cut
//! off below gRPC on its old connection and every new one. Afterwards the
//! coordinator must still serve, a legitimate round must commit and the
//! audit chain must verify.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use fedmesh_coordinator::transport::HandshakeRefusal;

use super::protocol::{Mesh, WAIT, raw_channel, tenant};

/// Longest refusal text a client may receive.
const MAX_STATUS_TEXT: usize = 1024;

// ------------------------------------------------------------ protobuf by hand

/// A protobuf message written field by field (wire format, no schema).
#[derive(Debug, Clone, Default)]
struct Pb(Vec<u8>);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

impl Pb {
    fn key(&mut self, field: u32, wire: u8) {
        put_varint(&mut self.0, (u64::from(field) << 3) | u64::from(wire));
    }
    fn varint(mut self, field: u32, v: u64) -> Self {
        self.key(field, 0);
        put_varint(&mut self.0, v);
        self
    }
    fn bytes(mut self, field: u32, b: &[u8]) -> Self {
        self.key(field, 2);
        put_varint(&mut self.0, b.len() as u64);
        self.0.extend_from_slice(b);
        self
    }
    fn str(self, field: u32, s: &str) -> Self {
        self.bytes(field, s.as_bytes())
    }
    fn msg(self, field: u32, m: &Pb) -> Self {
        self.bytes(field, &m.0)
    }
    fn float(mut self, field: u32, x: f32) -> Self {
        self.key(field, 5);
        self.0.extend_from_slice(&x.to_le_bytes());
        self
    }
    fn packed_u64(self, field: u32, vs: &[u64]) -> Self {
        let mut body = Vec::new();
        for &v in vs {
            put_varint(&mut body, v);
        }
        self.bytes(field, &body)
    }
    fn packed_f64(self, field: u32, vs: &[f64]) -> Self {
        let body: Vec<u8> = vs.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.bytes(field, &body)
    }
    fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// One field of a decoded message.
#[derive(Debug, Clone)]
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn get_varint(buf: &[u8], at: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at).ok_or_else(|| anyhow!("truncated varint"))?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    bail!("varint too long")
}

/// The fields of one message, in wire order.
fn fields(buf: &[u8]) -> Result<Vec<(u32, Field<'_>)>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        let key = get_varint(buf, &mut at)?;
        let field = u32::try_from(key >> 3)?;
        let value = match key & 7 {
            0 => Field::Varint(get_varint(buf, &mut at)?),
            1 | 5 => {
                let n = if key & 7 == 1 { 8 } else { 4 };
                buf.get(at..at + n).ok_or_else(|| anyhow!("truncated"))?;
                at += n;
                Field::Fixed
            }
            2 => {
                let n = usize::try_from(get_varint(buf, &mut at)?)?;
                let b = buf
                    .get(at..at.checked_add(n).ok_or_else(|| anyhow!("length"))?)
                    .ok_or_else(|| anyhow!("truncated bytes"))?;
                at += n;
                Field::Bytes(b)
            }
            w => bail!("wire type {w}"),
        };
        out.push((field, value));
    }
    Ok(out)
}

fn varint_of(buf: &[u8], field: u32) -> Result<u64> {
    Ok(fields(buf)?
        .into_iter()
        .find_map(|(f, v)| match (f == field, v) {
            (true, Field::Varint(x)) => Some(x),
            _ => None,
        })
        .unwrap_or(0))
}

fn bytes_of(buf: &[u8], field: u32) -> Result<Option<&[u8]>> {
    Ok(fields(buf)?
        .into_iter()
        .find_map(|(f, v)| match (f == field, v) {
            (true, Field::Bytes(b)) => Some(b),
            _ => None,
        }))
}

// ------------------------------------------------------------ raw gRPC client

/// A gRPC codec that sends and receives raw bytes (also used by
/// `protocol::malformed_protobuf_is_invalid_argument`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct BytesCodec;

pub(crate) struct BytesEncoder;
pub(crate) struct BytesDecoder;

impl tonic::codec::Encoder for BytesEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for BytesDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl tonic::codec::Codec for BytesCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = BytesEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

/// A gRPC client that sends and receives raw bytes.
#[derive(Clone)]
struct Raw {
    grpc: tonic::client::Grpc<Channel>,
}

fn path(method: &str) -> Result<PathAndQuery> {
    Ok(PathAndQuery::try_from(format!(
        "/fedmesh.v1.Federation/{method}"
    ))?)
}

impl Raw {
    async fn connect(mesh: &Mesh, tenant: &str, node: &str, max_bytes: usize) -> Result<Self> {
        Self::open(mesh.addr(), mesh.node_tls(tenant, node)?, max_bytes)
            .await
            .map_err(anyhow::Error::from)
    }

    async fn open(
        addr: std::net::SocketAddr,
        tls: rustls::ClientConfig,
        max_bytes: usize,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = raw_channel(addr, tls).await?;
        let grpc = tonic::client::Grpc::new(channel)
            .max_decoding_message_size(max_bytes)
            .max_encoding_message_size(max_bytes);
        Ok(Self { grpc })
    }

    /// Sends one request (for `WatchRounds`, reads the first event too) and
    /// reports how it ended, without giving up on a transport failure.
    async fn attempt(&mut self, method: &str, body: Vec<u8>) -> Result<Outcome> {
        match tokio::time::timeout(WAIT, self.grpc.ready()).await {
            Err(_) => bail!("{method}: the channel was not ready in time"),
            Ok(Err(e)) => return Ok(Outcome::of_transport(&e)),
            Ok(Ok(())) => {}
        }
        let path = path(method)?;
        let call = async {
            if method == "WatchRounds" {
                let mut stream = self
                    .grpc
                    .server_streaming(tonic::Request::new(body), path, BytesCodec)
                    .await?
                    .into_inner();
                stream.message().await.map(|_| ())
            } else {
                self.grpc
                    .unary(tonic::Request::new(body), path, BytesCodec)
                    .await
                    .map(|_| ())
            }
        };
        match tokio::time::timeout(WAIT, call).await {
            Err(_) => bail!("{method} did not end in time"),
            Ok(Ok(())) => Ok(Outcome::Served),
            Ok(Err(status)) => Ok(Outcome::of_status(status)),
        }
    }

    async fn unary(&mut self, method: &str, body: Vec<u8>) -> Result<Result<Vec<u8>, Status>> {
        tokio::time::timeout(WAIT, self.grpc.ready()).await??;
        let r = tokio::time::timeout(
            WAIT,
            self.grpc
                .unary(tonic::Request::new(body), path(method)?, BytesCodec),
        )
        .await
        .with_context(|| format!("{method} did not answer in time"))?;
        Ok(r.map(tonic::Response::into_inner))
    }

    async fn watch(&mut self) -> Result<Streaming<Vec<u8>>> {
        tokio::time::timeout(WAIT, self.grpc.ready()).await??;
        let body = Pb::default().varint(1, 0).into_bytes();
        let r = tokio::time::timeout(
            WAIT,
            self.grpc
                .server_streaming(tonic::Request::new(body), path("WatchRounds")?, BytesCodec),
        )
        .await??;
        Ok(r.into_inner())
    }
}

/// A round event, read by field number.
#[derive(Debug)]
enum Event {
    Open {
        round: u64,
        base: u64,
        selected: bool,
    },
    Committed {
        round: u64,
        version: u64,
    },
    Aborted,
    Idle,
}

async fn next_event(s: &mut Streaming<Vec<u8>>) -> Result<Event> {
    let msg = tokio::time::timeout(WAIT, s.message())
        .await
        .context("no round event in time")??
        .ok_or_else(|| anyhow!("round stream ended"))?;
    for (f, v) in fields(&msg)? {
        if let Field::Bytes(b) = v {
            return Ok(match f {
                1 => Event::Open {
                    round: varint_of(b, 1)?,
                    base: varint_of(b, 2)?,
                    selected: varint_of(b, 3)? != 0,
                },
                2 => Event::Committed {
                    round: varint_of(b, 1)?,
                    version: varint_of(b, 2)?,
                },
                3 => Event::Aborted,
                _ => Event::Idle,
            });
        }
    }
    bail!("empty round event")
}

async fn wait_open(s: &mut Streaming<Vec<u8>>) -> Result<(u64, u64)> {
    tokio::time::timeout(WAIT * 2, async {
        loop {
            if let Event::Open {
                round,
                base,
                selected: true,
            } = next_event(s).await?
            {
                return Ok((round, base));
            }
        }
    })
    .await
    .context("round did not open in time")?
}

async fn wait_committed(s: &mut Streaming<Vec<u8>>) -> Result<(u64, u64)> {
    tokio::time::timeout(WAIT * 4, async {
        loop {
            match next_event(s).await? {
                Event::Committed { round, version } => return Ok((round, version)),
                Event::Aborted => bail!("round aborted"),
                _ => {}
            }
        }
    })
    .await
    .context("round did not commit in time")?
}

// ------------------------------------------------------------ requests

fn feature_schema() -> Vec<u8> {
    hex::decode(fedmesh_proto::model::FEATURE_SCHEMA_V1_DIGEST).unwrap_or_default()
}

fn join(tenant: &str, node: &str) -> Pb {
    Pb::default()
        .str(1, tenant)
        .str(2, node)
        .bytes(3, &feature_schema())
        .str(4, "hostile-suite")
}

fn tensor(values: &[f32], shape: &[u64], dtype: u64) -> Pb {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    Pb::default()
        .varint(1, dtype)
        .packed_u64(2, shape)
        .bytes(3, &data)
}

/// The facts of the open round an update must bind to.
#[derive(Debug, Clone)]
struct Ctx {
    node: String,
    round: u64,
    base: u64,
    schema_hash: Vec<u8>,
    params: usize,
    input_dim: usize,
}

/// The parts of an update request; `encode` writes them in field order.
#[derive(Debug, Clone)]
struct Update {
    tenant: String,
    node: String,
    round: u64,
    base: u64,
    delta: Option<Pb>,
    num_samples: u64,
    scaler: Option<Pb>,
    loss: f32,
    schema_hash: Vec<u8>,
}

impl Update {
    fn valid(c: &Ctx, value: f32) -> Self {
        Self {
            tenant: "acme".into(),
            node: c.node.clone(),
            round: c.round,
            base: c.base,
            delta: Some(tensor(&vec![value; c.params], &[c.params as u64], 1)),
            num_samples: 50,
            scaler: Some(scaler(
                1000,
                &vec![0.5; c.input_dim],
                &vec![0.5; c.input_dim],
            )),
            loss: 0.25,
            schema_hash: c.schema_hash.clone(),
        }
    }
    fn encode(&self) -> Vec<u8> {
        let mut m = Pb::default()
            .str(1, &self.tenant)
            .str(2, &self.node)
            .varint(3, self.round)
            .varint(4, self.base);
        if let Some(d) = &self.delta {
            m = m.msg(5, d);
        }
        m = m.varint(6, self.num_samples);
        if let Some(s) = &self.scaler {
            m = m.msg(7, s);
        }
        m.float(8, self.loss)
            .bytes(9, &self.schema_hash)
            .into_bytes()
    }
}

fn scaler(count: u64, sum: &[f64], sum_sq: &[f64]) -> Pb {
    Pb::default()
        .varint(1, count)
        .packed_f64(2, sum)
        .packed_f64(3, sum_sq)
}

// ------------------------------------------------------------ the tally

/// How a request of a revoked identity ended.
#[derive(Debug)]
enum Outcome {
    /// It failed in the client's transport: the coordinator never answered
    /// at the gRPC layer. `status` is the code the client's stack reports
    /// (`None`: no connection at all); `alert` whether the TLS alert
    /// `certificate_revoked` came back.
    CutOff { status: Option<Code>, alert: bool },
    /// A status the coordinator sent: the request reached the service.
    Status(Status),
    /// The request was served.
    Served,
}

/// Walks an error chain: whether the client's transport raised it (rather
/// than the server answering with a status), and whether the TLS alert
/// `certificate_revoked` is in it.
fn transport_failure(first: Option<&(dyn std::error::Error + 'static)>) -> (bool, bool) {
    let (mut transport, mut alert) = (false, false);
    let mut cur = first;
    while let Some(e) = cur {
        transport |= e.is::<tonic::transport::Error>();
        // The transport keeps only the text of rustls' error.
        alert |= e.is::<std::io::Error>()
            && e.to_string().contains(&format!(
                "{:?}",
                rustls::AlertDescription::CertificateRevoked
            ));
        cur = e.source();
    }
    (transport, alert)
}

impl Outcome {
    fn of_status(s: Status) -> Self {
        match transport_failure(std::error::Error::source(&s)) {
            (true, alert) => Outcome::CutOff {
                status: Some(s.code()),
                alert,
            },
            (false, _) => Outcome::Status(s),
        }
    }

    fn of_transport(e: &tonic::transport::Error) -> Self {
        Outcome::CutOff {
            status: None,
            alert: transport_failure(Some(e)).1,
        }
    }
}

/// Refusals by class: (sent, refused with the expected code).
#[derive(Debug, Default)]
struct Tally {
    by_class: BTreeMap<&'static str, (usize, usize)>,
    wrong: Vec<String>,
}

impl Tally {
    /// Records one request that must be refused with `code`.
    fn refused<T: std::fmt::Debug>(
        &mut self,
        class: &'static str,
        what: &str,
        r: Result<T, Status>,
        code: Code,
    ) {
        let e = self.by_class.entry(class).or_default();
        e.0 += 1;
        match r {
            Err(s) if s.code() == code && s.message().len() <= MAX_STATUS_TEXT => e.1 += 1,
            Err(s) => self.wrong.push(format!(
                "{class}/{what}: expected {code:?}, got {:?} with {} bytes of text: {:.200}",
                s.code(),
                s.message().len(),
                s.message()
            )),
            Ok(v) => self.wrong.push(format!(
                "{class}/{what}: expected {code:?}, accepted: {v:.200?}"
            )),
        }
    }

    /// Records one request of a revoked identity: it must never reach the
    /// service. Right: it failed in the client's transport (no connection,
    /// or one the coordinator refused at the handshake or closed); a status
    /// sent by the coordinator, even a refusal, or an answer is wrong.
    fn cut_off(&mut self, class: &'static str, what: &str, outcome: Outcome) {
        let e = self.by_class.entry(class).or_default();
        e.0 += 1;
        match outcome {
            Outcome::CutOff { status, alert } => {
                e.1 += 1;
                eprintln!(
                    "{class}/{what}: cut off ({}{})",
                    status.map_or("no connection".into(), |c| format!("client status {c:?}")),
                    if alert {
                        ", TLS alert certificate_revoked"
                    } else {
                        ""
                    }
                );
            }
            Outcome::Status(s) => self.wrong.push(format!(
                "{class}/{what}: the coordinator answered {:?}: {:.200}",
                s.code(),
                s.message()
            )),
            Outcome::Served => self.wrong.push(format!("{class}/{what}: served")),
        }
    }

    fn table(&self) -> String {
        let mut out = String::from("| class | sent | refused right |\n| --- | ---: | ---: |\n");
        for (class, (sent, ok)) in &self.by_class {
            out += &format!("| {class} | {sent} | {ok} |\n");
        }
        let sent: usize = self.by_class.values().map(|v| v.0).sum();
        let ok: usize = self.by_class.values().map(|v| v.1).sum();
        out += &format!("| **all** | {sent} | {ok} |\n");
        out
    }
}

// ------------------------------------------------------------ the suite

const LIMIT: usize = 2 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_client_is_refused_by_class_and_the_mesh_goes_on() -> Result<()> {
    let acme = tenant("acme", 3, &[4]);
    let mesh = Mesh::start(&[acme, tenant("beta", 1, &[4])], LIMIT).await?;
    let mut t = Tally::default();

    let mut h = Raw::connect(&mesh, "acme", "h", 4 * LIMIT).await?;
    let mut n1 = Raw::connect(&mesh, "acme", "n1", 4 * LIMIT).await?;
    let mut n2 = Raw::connect(&mesh, "acme", "n2", 4 * LIMIT).await?;

    // ---- Join: malformed, misbound, wrong schema, oversized.
    for (what, body) in [
        ("truncated length", vec![0x0a, 0x05, b'a']),
        ("wire type 7", vec![0x0f]),
        ("endless varint", vec![0x18, 0xff, 0xff, 0xff]),
        ("field 0", vec![0x00, 0x01]),
    ] {
        let r = h.unary("Join", body).await?;
        t.refused("malformed protobuf", what, r, Code::InvalidArgument);
    }
    for (what, body) in [
        ("tenant beta", join("beta", "h")),
        ("node n1", join("acme", "n1")),
        ("tenant with a slash", join("acme/x", "h")),
        ("100 KB node name", join("acme", &"n".repeat(100_000))),
    ] {
        let r = h.unary("Join", body.into_bytes()).await?;
        t.refused("cross-tenant or misbound", what, r, Code::PermissionDenied);
    }
    let other_schema = join("acme", "h").bytes(3, &[7; 32]);
    let r = h.unary("Join", other_schema.into_bytes()).await?;
    t.refused(
        "semantically bad",
        "feature schema",
        r,
        Code::InvalidArgument,
    );
    let huge = join("acme", "h").str(4, &"x".repeat(LIMIT + 1));
    let r = h.unary("Join", huge.into_bytes()).await?;
    t.refused("oversized", "join", r, Code::OutOfRange);

    // The honest joins.
    let j = h
        .unary("Join", join("acme", "h").into_bytes())
        .await?
        .map_err(|s| anyhow!("join refused: {s:?}"))?;
    for c in [&mut n1, &mut n2] {
        let _ = c.unary("Join", join("acme", "x").into_bytes()).await?;
    }
    n1.unary("Join", join("acme", "n1").into_bytes())
        .await?
        .map_err(|s| anyhow!("{s:?}"))?;
    n2.unary("Join", join("acme", "n2").into_bytes())
        .await?
        .map_err(|s| anyhow!("{s:?}"))?;
    let schema_hash = bytes_of(&j, 4)?.unwrap_or_default().to_vec();
    let spec = bytes_of(&j, 5)?.ok_or_else(|| anyhow!("no model spec"))?;
    let input_dim = usize::try_from(varint_of(spec, 1)?)?;
    let hidden: Vec<usize> = match bytes_of(spec, 2)? {
        Some(packed) => {
            let mut at = 0;
            let mut hs = Vec::new();
            while at < packed.len() {
                hs.push(usize::try_from(get_varint(packed, &mut at)?)?);
            }
            hs
        }
        None => vec![usize::try_from(varint_of(spec, 2)?)?],
    };
    let params = fedmesh_proto::model::param_count(input_dim, &hidden)
        .ok_or_else(|| anyhow!("model size"))?;
    assert!(params > 8 && input_dim > 0, "{input_dim} {hidden:?}");

    // ---- Before any round: an update finds no open round.
    let early = Ctx {
        node: "h".into(),
        round: 1,
        base: 0,
        schema_hash: schema_hash.clone(),
        params,
        input_dim,
    };
    let r = h
        .unary("SubmitUpdate", Update::valid(&early, 0.01).encode())
        .await?;
    t.refused(
        "stale or replayed",
        "before any round",
        r,
        Code::FailedPrecondition,
    );

    // ---- A round opens once the three nodes watch.
    let mut sh = h.watch().await?;
    let mut s1 = n1.watch().await?;
    let s2 = n2.watch().await?;
    let (round, base) = wait_open(&mut sh).await?;
    let c = Ctx {
        round,
        base,
        ..early
    };
    let good = || Update::valid(&c, 0.01);

    // ---- Malformed bytes at every RPC.
    for method in ["SubmitUpdate", "SecAgg", "GetModel"] {
        for (what, body) in [
            ("truncated length", vec![0x2a, 0x05, 0xff]),
            ("wire type 7", vec![0x0f]),
            ("endless varint", vec![0x18, 0xff, 0xff, 0xff]),
        ] {
            let r = h.unary(method, body).await?;
            t.refused("malformed protobuf", what, r, Code::InvalidArgument);
        }
    }

    // ---- Oversized.
    let big = Update {
        delta: Some(tensor(
            &vec![0.0; LIMIT / 4 + 16],
            &[(LIMIT / 4 + 16) as u64],
            1,
        )),
        ..good()
    };
    let r = h.unary("SubmitUpdate", big.encode()).await?;
    t.refused("oversized", "update", r, Code::OutOfRange);

    // ---- Non-finite values.
    let p = params;
    let with = |values: Vec<f32>, shape: Vec<u64>| Update {
        delta: Some(tensor(&values, &shape, 1)),
        ..good()
    };
    let poke = |i: usize, x: f32| {
        let mut v = vec![0.01; p];
        v[i] = x;
        with(v, vec![p as u64])
    };
    for (what, u) in [
        ("NaN delta", poke(0, f32::NAN)),
        ("+inf delta", poke(p - 1, f32::INFINITY)),
        ("-inf delta", poke(3, f32::NEG_INFINITY)),
        (
            "NaN loss",
            Update {
                loss: f32::NAN,
                ..good()
            },
        ),
        (
            "+inf loss",
            Update {
                loss: f32::INFINITY,
                ..good()
            },
        ),
        (
            "NaN scaler sum",
            Update {
                scaler: Some(scaler(
                    1000,
                    &vec![f64::NAN; c.input_dim],
                    &vec![1.0; c.input_dim],
                )),
                ..good()
            },
        ),
        (
            "inf scaler square",
            Update {
                scaler: Some(scaler(
                    1000,
                    &vec![1.0; c.input_dim],
                    &vec![f64::INFINITY; c.input_dim],
                )),
                ..good()
            },
        ),
    ] {
        let r = h.unary("SubmitUpdate", u.encode()).await?;
        t.refused("NaN or infinite", what, r, Code::InvalidArgument);
    }

    // ---- Wrong shape, dtype, schema.
    let million_dims = Update {
        delta: Some(
            Pb::default()
                .varint(1, 1)
                .packed_u64(2, &vec![1; 1_000_000])
                .bytes(3, &[0; 4]),
        ),
        ..good()
    };
    for (what, u) in [
        ("short", with(vec![0.01; p - 1], vec![p as u64 - 1])),
        ("long", with(vec![0.01; p + 1], vec![p as u64 + 1])),
        (
            "data shorter than shape",
            with(vec![0.01; p - 1], vec![p as u64]),
        ),
        ("2-d", with(vec![0.01; p], vec![1, p as u64])),
        ("empty shape", with(vec![0.01; p], vec![])),
        ("1,000,000 dims", million_dims),
        (
            "missing delta",
            Update {
                delta: None,
                ..good()
            },
        ),
        (
            "dtype unspecified",
            Update {
                delta: Some(tensor(&vec![0.01; p], &[p as u64], 0)),
                ..good()
            },
        ),
        (
            "dtype 7",
            Update {
                delta: Some(tensor(&vec![0.01; p], &[p as u64], 7)),
                ..good()
            },
        ),
        (
            "schema hash zero",
            Update {
                schema_hash: vec![0; 32],
                ..good()
            },
        ),
        (
            "schema hash empty",
            Update {
                schema_hash: vec![],
                ..good()
            },
        ),
        (
            "scaler width",
            Update {
                scaler: Some(scaler(10, &[1.0], &[1.0])),
                ..good()
            },
        ),
    ] {
        let r = h.unary("SubmitUpdate", u.encode()).await?;
        t.refused(
            "wrong shape, dtype or schema",
            what,
            r,
            Code::InvalidArgument,
        );
    }

    // ---- Finite but out of range: numbers that would bend or break the
    // merged model.
    let d = c.input_dim;
    for (what, u) in [
        ("norm above the bound", Update::valid(&c, 1.0)),
        (
            "zero samples",
            Update {
                num_samples: 0,
                ..good()
            },
        ),
        (
            "2^64-1 samples",
            Update {
                num_samples: u64::MAX,
                ..good()
            },
        ),
        (
            "negative loss",
            Update {
                loss: -1.0,
                ..good()
            },
        ),
        (
            "loss 3e38",
            Update {
                loss: 3e38,
                ..good()
            },
        ),
        (
            "scaler count 0",
            Update {
                scaler: Some(scaler(0, &vec![0.5; d], &vec![0.5; d])),
                ..good()
            },
        ),
        (
            "scaler sums overflow f32",
            Update {
                scaler: Some(scaler(1, &vec![1e300; d], &vec![1e300; d])),
                ..good()
            },
        ),
        (
            "scaler mean 1e39",
            Update {
                scaler: Some(scaler(1000, &vec![1e42; d], &vec![1e84; d])),
                ..good()
            },
        ),
        (
            "negative sum of squares",
            Update {
                scaler: Some(scaler(1000, &vec![0.5; d], &vec![-0.5; d])),
                ..good()
            },
        ),
        (
            "scaler count 2^64-1",
            Update {
                scaler: Some(scaler(u64::MAX, &vec![0.5; d], &vec![0.5; d])),
                ..good()
            },
        ),
    ] {
        let r = h.unary("SubmitUpdate", u.encode()).await?;
        t.refused("out of range", what, r, Code::InvalidArgument);
    }

    // ---- Cross-tenant and misbound updates.
    for (what, u) in [
        (
            "tenant beta",
            Update {
                tenant: "beta".into(),
                ..good()
            },
        ),
        (
            "node n1",
            Update {
                node: "n1".into(),
                ..good()
            },
        ),
        (
            "empty node",
            Update {
                node: String::new(),
                ..good()
            },
        ),
        (
            "100 KB tenant name",
            Update {
                tenant: "b".repeat(100_000),
                ..good()
            },
        ),
    ] {
        let r = h.unary("SubmitUpdate", u.encode()).await?;
        t.refused("cross-tenant or misbound", what, r, Code::PermissionDenied);
    }

    // ---- Stale rounds and versions.
    for (what, u) in [
        (
            "next round",
            Update {
                round: round + 1,
                ..good()
            },
        ),
        (
            "previous round",
            Update {
                round: round.saturating_sub(1),
                ..good()
            },
        ),
        (
            "base version + 1",
            Update {
                base: base + 1,
                ..good()
            },
        ),
        (
            "base version 2^64-1",
            Update {
                base: u64::MAX,
                ..good()
            },
        ),
    ] {
        let r = h.unary("SubmitUpdate", u.encode()).await?;
        t.refused("stale or replayed", what, r, Code::FailedPrecondition);
    }

    // ---- A secure-aggregation message in a plaintext round.
    let sec = Pb::default()
        .str(1, "acme")
        .str(2, "h")
        .varint(3, round)
        .varint(4, 0)
        .bytes(5, &[1, 2, 3])
        .into_bytes();
    let r = h.unary("SecAgg", sec).await?;
    t.refused(
        "wrong phase or mode",
        "SecAgg in a plaintext round",
        r,
        Code::FailedPrecondition,
    );

    // ---- Unknown method and unknown version.
    let r = h.unary("Nope", vec![]).await?;
    t.refused(
        "unknown method or version",
        "method Nope",
        r,
        Code::Unimplemented,
    );
    let r = h
        .unary("GetModel", Pb::default().varint(1, 1_000_000).into_bytes())
        .await?;
    t.refused(
        "unknown method or version",
        "version 10^6",
        r,
        Code::NotFound,
    );

    // ---- Nothing above was recorded: the node's valid update is its first.
    assert_eq!(mesh.fed("acme").version(), 0);
    let ack = h
        .unary("SubmitUpdate", good().encode())
        .await?
        .map_err(|s| {
            anyhow!(
                "valid update refused: {s:?}; mishandled before:\n{}",
                t.wrong.join("\n")
            )
        })?;
    assert_eq!(varint_of(&ack, 2)?, 1, "the first recorded update");

    // ---- Replays: the same bytes, and another value for the same round.
    let r = h.unary("SubmitUpdate", good().encode()).await?;
    t.refused("stale or replayed", "same bytes", r, Code::AlreadyExists);
    let r = h
        .unary("SubmitUpdate", Update::valid(&c, 0.02).encode())
        .await?;
    t.refused("stale or replayed", "second update", r, Code::AlreadyExists);

    // ---- The honest nodes complete the round.
    for (client, node) in [(&mut n1, "n1"), (&mut n2, "n2")] {
        let cn = Ctx {
            node: node.into(),
            ..c.clone()
        };
        client
            .unary("SubmitUpdate", Update::valid(&cn, 0.03).encode())
            .await?
            .map_err(|s| anyhow!("{node}'s update refused: {s:?}"))?;
    }
    let (r1, v1) = wait_committed(&mut s1).await?;
    assert_eq!((r1, v1), (round, 1));
    drop((sh, s2));

    // ---- After the commit the round is closed: a late replay is stale.
    let r = h.unary("SubmitUpdate", good().encode()).await?;
    t.refused(
        "stale or replayed",
        "after the commit",
        r,
        Code::FailedPrecondition,
    );

    // ---- Revoked identity: acme/r is served, then its certificate is
    // revoked (`ca revoke` writes the list, the coordinator installs it).
    // Its open stream ends; every later request, on its old connection
    // (which the client tries to re-establish) or on a new one, is refused
    // before the service: the handshake fails on the revoked certificate.
    let r_cert = mesh.issue_node("acme", "r")?;
    let mut r = Raw::open(mesh.addr(), mesh.tls_of(&r_cert)?, 4 * LIMIT).await?;
    r.unary("Join", join("acme", "r").into_bytes())
        .await?
        .map_err(|s| anyhow!("r's join refused before the revocation: {s:?}"))?;
    let mut rs = r.watch().await?;
    let revoked_before = mesh.metrics().handshakes_refused(HandshakeRefusal::Revoked);
    let outcome = mesh.revoke(&[&r_cert.cert_pem], 1)?;
    assert_eq!(outcome.revoked.len(), 1, "{outcome:?}");
    let ended = tokio::time::timeout(WAIT, async {
        loop {
            match rs.message().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked identity's stream stayed open");
    let rc = Ctx {
        node: "r".into(),
        ..c.clone()
    };
    let requests = || {
        [
            ("Join", join("acme", "r").into_bytes()),
            ("SubmitUpdate", Update::valid(&rc, 0.01).encode()),
            ("GetModel", Pb::default().into_bytes()),
            ("SecAgg", secagg("r", round, 0, Some((5, &[1, 2, 3])))),
            ("WatchRounds", Pb::default().varint(1, 0).into_bytes()),
        ]
    };
    let class = "revoked identity";
    for (method, body) in requests() {
        let outcome = r.attempt(method, body).await?;
        t.cut_off(class, &format!("{method} on the old connection"), outcome);
    }
    let mut fresh = 0;
    for (method, body) in requests() {
        let outcome = match Raw::open(mesh.addr(), mesh.tls_of(&r_cert)?, 4 * LIMIT).await {
            Err(e) => Outcome::of_transport(&e),
            Ok(mut c) => c.attempt(method, body).await?,
        };
        fresh += 1;
        t.cut_off(class, &format!("{method} on a new connection"), outcome);
    }
    // The coordinator saw the revoked certificate at each new handshake.
    let revoked_handshakes =
        mesh.metrics().handshakes_refused(HandshakeRefusal::Revoked) - revoked_before;
    assert!(
        revoked_handshakes >= fresh,
        "{revoked_handshakes} handshakes refused as revoked, {fresh} attempted"
    );
    // A new certificate for the same identity is served again.
    let mut again = Raw::connect(&mesh, "acme", "r", 4 * LIMIT).await?;
    again
        .unary("Join", join("acme", "r").into_bytes())
        .await?
        .map_err(|s| anyhow!("a new certificate of acme/r refused: {s:?}"))?;

    eprintln!("hostile requests by class\n{}", t.table());
    assert!(t.wrong.is_empty(), "mishandled:\n{}", t.wrong.join("\n"));
    let sent: usize = t.by_class.values().map(|v| v.0).sum();
    assert!(sent >= 60, "only {sent} hostile requests");
    assert_eq!(t.by_class.get(class), Some(&(10, 10)));

    // ---- The coordinator is alive and consistent.
    let model = h
        .unary("GetModel", Pb::default().into_bytes())
        .await?
        .map_err(|s| anyhow!("GetModel refused: {s:?}"))?;
    let body = bytes_of(&model, 1)?.ok_or_else(|| anyhow!("no body"))?;
    assert_eq!(varint_of(body, 2)?, 1, "model version");
    assert_eq!(varint_of(body, 10)?, 3, "participants");
    let audit = mesh.fed("acme").audit_log()?;
    assert_eq!(audit.len(), 2);
    assert_eq!(mesh.verify_chain("acme")?, 2);
    let _ = Arc::strong_count(&mesh.fed("acme"));
    Ok(())
}

// ------------------------------------------------------------ inside a secure round

/// A `SecAggRequest` written by hand: the bindings, then one of the four
/// payloads (field 5 advert, 6 share bundle, 7 masked input, 8 unmask
/// response), or none.
fn secagg(node: &str, round: u64, bucket: u64, payload: Option<(u32, &[u8])>) -> Vec<u8> {
    secagg_for("acme", node, round, bucket, payload)
}

fn secagg_for(
    tenant: &str,
    node: &str,
    round: u64,
    bucket: u64,
    payload: Option<(u32, &[u8])>,
) -> Vec<u8> {
    let m = Pb::default()
        .str(1, tenant)
        .str(2, node)
        .varint(3, round)
        .varint(4, bucket);
    match payload {
        Some((6, shares)) => m.msg(6, &Pb::default().bytes(1, shares)),
        Some((field, bytes)) => m.bytes(field, bytes),
        None => m,
    }
    .into_bytes()
}

fn share_bundle(shares: &[Vec<u8>]) -> Vec<u8> {
    let mut b = Pb::default();
    for s in shares {
        b = b.bytes(1, s);
    }
    b.into_bytes()
}

fn secagg_bundle(node: &str, round: u64, bucket: u64, bundle: &[u8]) -> Vec<u8> {
    Pb::default()
        .str(1, "acme")
        .str(2, node)
        .varint(3, round)
        .varint(4, bucket)
        .bytes(6, bundle)
        .into_bytes()
}

/// Six nodes in one bucket (k = 4: the two left over join it; threshold 4), quorum 4.
fn secure_six() -> String {
    "[[tenants]]\nname = \"acme\"\nmin_nodes = 6\nquorum = 4\n\
     round_timeout_ms = 4000\nround_interval_ms = 50\nmax_rounds = 1\n\
     max_update_norm = 1.0\n[tenants.model]\nhidden = [4]\n\
     [tenants.secure]\nbucket_size = 4\nclip_norm = 1.0\nphase_timeout_ms = 4000\n"
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_members_cannot_sink_a_secure_round() -> Result<()> {
    use super::secure::{bucket, extras, members};
    use fedmesh_crypto::secagg::{KeyAdvert, UnmaskResponse};
    use fedmesh_proto::v1::{SecAggPhase, sec_agg_request::Message as M};

    let mesh = Mesh::start(&[secure_six()], 64 << 20).await?;
    let mut t = Tally::default();
    // n0..n3 are honest; n4 advertises a small-order key; n5 takes part
    // correctly but tries every wrong message on the way and lies when
    // unmasking.
    let mut ms = members(&mesh, 6).await?;
    let mut r4 = Raw::connect(&mesh, "acme", "n4", 64 << 20).await?;
    let mut r5 = Raw::connect(&mesh, "acme", "n5", 64 << 20).await?;
    let (_, v0) = super::protocol::get_model(&mut ms[0].client, 0).await?;
    let genesis = super::protocol::params(&v0)?;
    let p = genesis.len();

    // ---- Advertise.
    let mut opens = Vec::new();
    for m in ms.iter_mut() {
        opens.push(m.wait_phase(SecAggPhase::Advertise).await?);
    }
    let round = opens[5].round;
    let b = u64::from(bucket(&opens[5])?.id);
    let mut adverts = Vec::new();
    for (i, o) in opens.iter().enumerate() {
        adverts.push(ms[i].start(o, &genesis, 1.0)?);
    }
    let class = "secure: bad or misbound advert";
    for (what, body, code) in [
        (
            "garbage advert",
            secagg("n5", round, b, Some((5, &[1, 2, 3]))),
            Code::InvalidArgument,
        ),
        (
            "no payload",
            secagg("n5", round, b, None),
            Code::InvalidArgument,
        ),
        (
            "n0's advert as n5's",
            secagg("n5", round, b, Some((5, &adverts[0]))),
            Code::InvalidArgument,
        ),
        (
            "bucket 99",
            secagg("n5", round, 99, Some((5, &adverts[5]))),
            Code::InvalidArgument,
        ),
        (
            "node field n0",
            secagg("n0", round, b, Some((5, &adverts[5]))),
            Code::PermissionDenied,
        ),
        (
            "tenant field beta",
            secagg_for("beta", "n5", round, b, Some((5, &adverts[5]))),
            Code::PermissionDenied,
        ),
        (
            "next round",
            secagg("n5", round + 1, b, Some((5, &adverts[5]))),
            Code::FailedPrecondition,
        ),
    ] {
        let r = r5.unary("SecAgg", body).await?;
        t.refused(class, what, r, code);
    }
    let class = "secure: wrong phase";
    for (what, body) in [
        (
            "shares",
            secagg_bundle("n5", round, b, &share_bundle(&[vec![1]])),
        ),
        ("masked input", secagg("n5", round, b, Some((7, &[1, 2])))),
        (
            "unmask response",
            secagg("n5", round, b, Some((8, &[1, 2]))),
        ),
    ] {
        let r = r5.unary("SecAgg", body).await?;
        t.refused(class, what, r, Code::FailedPrecondition);
    }
    // n4 signs an advert whose pairwise-mask key is the all-zero X25519
    // point (small order: every shared secret with it is zero).
    let mut low = KeyAdvert::decode(&adverts[4])?;
    low.mask_public = [0; 32];
    low.signature = ms[4]
        .signer
        .sign(&low.signing_bytes())
        .try_into()
        .map_err(|_| anyhow!("signature length"))?;
    let r = r4
        .unary("SecAgg", secagg("n4", round, b, Some((5, &low.encode()))))
        .await?;
    t.refused(
        "secure: small-order key",
        "all-zero mask key",
        r,
        Code::InvalidArgument,
    );
    for (i, a) in adverts.iter().enumerate().take(4) {
        ms[i].send(&opens[i], M::Advert(a.clone())).await?;
    }
    r5.unary("SecAgg", secagg("n5", round, b, Some((5, &adverts[5]))))
        .await?
        .map_err(|s| anyhow!("n5's advert refused: {s:?}"))?;

    // ---- Shares: n4 is out of the bucket; n5 tries garbage and replays.
    let mut opens = Vec::new();
    for m in ms.iter_mut().take(4) {
        opens.push(m.wait_phase(SecAggPhase::Share).await?);
    }
    let o5 = ms[5].wait_phase(SecAggPhase::Share).await?;
    assert_eq!(bucket(&o5)?.adverts.len(), 5, "n4's advert is not relayed");
    let mut bundles = Vec::new();
    for (i, o) in opens.iter().enumerate() {
        bundles.push(ms[i].shares(o)?);
    }
    let b5 = ms[5].shares(&o5)?;
    let b5_bytes = share_bundle(&b5.shares);
    let r = r4
        .unary(
            "SecAgg",
            secagg_bundle("n4", round, b, &share_bundle(&b5.shares)),
        )
        .await?;
    t.refused(
        "secure: wrong phase",
        "shares after a refused advert",
        r,
        Code::FailedPrecondition,
    );
    let r = r5
        .unary("SecAgg", secagg("n5", round, b, Some((5, &adverts[5]))))
        .await?;
    t.refused(
        "secure: wrong phase",
        "advert in the share phase",
        r,
        Code::FailedPrecondition,
    );
    let r = r5
        .unary(
            "SecAgg",
            secagg_bundle("n5", round, b, &share_bundle(&[vec![9; 40]])),
        )
        .await?;
    t.refused(
        "secure: bad shares",
        "garbage share",
        r,
        Code::InvalidArgument,
    );
    // n5 answers first, so its replay meets the open phase.
    r5.unary("SecAgg", secagg_bundle("n5", round, b, &b5_bytes))
        .await?
        .map_err(|s| anyhow!("n5's shares refused: {s:?}"))?;
    let r = r5
        .unary("SecAgg", secagg_bundle("n5", round, b, &b5_bytes))
        .await?;
    t.refused("secure: replayed", "shares again", r, Code::AlreadyExists);
    for (i, o) in opens.iter().enumerate() {
        ms[i].send(o, M::Shares(bundles[i].clone())).await?;
    }

    // ---- Masked inputs.
    let value = |i: usize| 0.001 * (i + 1) as f32;
    let mut opens = Vec::new();
    for m in ms.iter_mut().take(4) {
        opens.push(m.wait_phase(SecAggPhase::Mask).await?);
    }
    let o5 = ms[5].wait_phase(SecAggPhase::Mask).await?;
    let y5 = ms[5].masked(&o5, &vec![value(5); p], &extras(5).2)?;
    let r = r5
        .unary("SecAgg", secagg("n5", round, b, Some((7, &[0xff; 64]))))
        .await?;
    t.refused(
        "secure: bad masked input",
        "garbage",
        r,
        Code::InvalidArgument,
    );
    // Again n5 first, so its replay meets the open phase.
    r5.unary("SecAgg", secagg("n5", round, b, Some((7, &y5))))
        .await?
        .map_err(|s| anyhow!("n5's masked input refused: {s:?}"))?;
    let r = r5
        .unary("SecAgg", secagg("n5", round, b, Some((7, &y5))))
        .await?;
    t.refused(
        "secure: replayed",
        "masked input again",
        r,
        Code::AlreadyExists,
    );
    for (i, o) in opens.iter().enumerate() {
        let y = ms[i].masked(o, &vec![value(i); p], &extras(i).2)?;
        ms[i].send(o, M::Masked(y)).await?;
    }

    // ---- Unmasking: n5 signs a response whose shares are garbage.
    let violations = |node: &str| {
        mesh.fed("acme")
            .reputation()
            .get(node)
            .map_or(0, |r| r.violations)
    };
    let n5_before = violations("n5");
    let mut opens = Vec::new();
    for m in ms.iter_mut().take(4) {
        opens.push(m.wait_phase(SecAggPhase::Unmask).await?);
    }
    let o5 = ms[5].wait_phase(SecAggPhase::Unmask).await?;
    let mut lie = UnmaskResponse::decode(&ms[5].unmask(&o5)?)?;
    for (_, s) in lie.seed_shares.iter_mut().chain(lie.key_shares.iter_mut()) {
        s[0] ^= 0x5a;
        s[7] ^= 0xa5;
    }
    lie.signature = ms[5]
        .signer
        .sign(&lie.signing_bytes())
        .try_into()
        .map_err(|_| anyhow!("signature length"))?;
    let lie_ack = r5
        .unary("SecAgg", secagg("n5", round, b, Some((8, &lie.encode()))))
        .await?;
    for (i, o) in opens.iter().enumerate() {
        let r = ms[i].unmask(o)?;
        ms[i].send(o, M::UnmaskResponse(r)).await?;
    }
    // The lie may be refused at once or found when the bucket is unmasked;
    // either way the bucket's sum must come out right and the liar named.
    eprintln!(
        "n5's forged unmask response: {:?}",
        lie_ack.as_ref().map(|_| ())
    );

    let c = super::protocol::wait_committed(&mut ms[0].stream).await?;
    assert_eq!(c.version, 1);
    let (_, v1m) = super::protocol::get_model(&mut ms[1].client, 1).await?;
    // n0..n3 and n5 masked their updates; n4 never got a key in.
    let mean = [0, 1, 2, 3, 5].iter().map(|&i| value(i)).sum::<f32>() / 5.0;
    for (w, g) in super::protocol::params(&v1m)?.iter().zip(&genesis) {
        assert!((w - (g + mean)).abs() < 1e-4, "{w} vs {g} + {mean}");
    }
    assert_eq!(v1m.participants, 5);
    // The liars are named, each for its own lie; no honest node is.
    assert!(violations("n4") > 0, "n4's small-order key not blamed");
    assert!(
        violations("n5") > n5_before,
        "n5's forged unmask response not blamed: {:?}",
        mesh.fed("acme").reputation().get("n5")
    );
    for honest in ["n0", "n1", "n2", "n3"] {
        assert_eq!(violations(honest), 0, "{honest} blamed");
    }

    eprintln!("hostile secure-round messages by class\n{}", t.table());
    assert!(t.wrong.is_empty(), "mishandled:\n{}", t.wrong.join("\n"));
    assert_eq!(mesh.verify_chain("acme")?, 2);
    Ok(())
}
