//! The `fedmesh.v1.Federation` gRPC service: identity from the verified
//! certificate, request bindings checked against it, one mapping from
//! [`FedError`] to `tonic::Status`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use fedmesh_crypto::{Identity, NodeId, TenantId};
use fedmesh_proto::v1::{self, federation_server::Federation as FederationRpc};
use futures::Stream;
use prost::Message;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span, warn};

use crate::bounds::{MAX_REFUSAL_TEXT, truncate_text};
use crate::error::FedError;
use crate::federation::Federation;
use crate::transport::PeerInfo;

/// The service object.
#[derive(Clone)]
pub struct FederationService {
    feds: Arc<BTreeMap<TenantId, Arc<Federation>>>,
}

impl FederationService {
    /// Serves the given federations.
    pub fn new(feds: BTreeMap<TenantId, Arc<Federation>>) -> Self {
        Self {
            feds: Arc::new(feds),
        }
    }

    fn caller<T>(&self, req: &Request<T>) -> Result<(Arc<Federation>, NodeId), Status> {
        let info = req
            .extensions()
            .get::<PeerInfo>()
            .ok_or_else(|| Status::unauthenticated("no verified client certificate"))?;
        let Identity::Node { tenant, node } = &info.identity else {
            return Err(Status::permission_denied(
                "only node identities may call the federation service",
            ));
        };
        let fed = self.feds.get(tenant).ok_or_else(|| {
            Status::permission_denied(format!(
                "tenant {tenant} has no federation on this coordinator"
            ))
        })?;
        Ok((fed.clone(), node.clone()))
    }
}

/// Longest tenant or node name echoed back from a request (longer ones
/// are cut: valid names are far shorter).
const MAX_ECHOED_NAME: usize = 64;

fn check_binding(
    fed: &Federation,
    node: &NodeId,
    tenant_field: &str,
    node_field: &str,
) -> Result<(), Status> {
    if tenant_field != fed.tenant().as_str() || node_field != node.as_str() {
        return Err(bounded_status(
            tonic::Code::PermissionDenied,
            &format!(
                "request is bound to {}/{} but the certificate names {}/{node}",
                truncate_text(tenant_field, MAX_ECHOED_NAME),
                truncate_text(node_field, MAX_ECHOED_NAME),
                fed.tenant()
            ),
        ));
    }
    Ok(())
}

/// A status whose message is at most [`MAX_REFUSAL_TEXT`] bytes (+ `…`),
/// cut at a character boundary: defence in depth behind the bounded
/// messages of [`FedError`], so no refusal grows with the request.
pub fn bounded_status(code: tonic::Code, message: &str) -> Status {
    Status::new(code, truncate_text(message, MAX_REFUSAL_TEXT).into_owned())
}

/// The one mapping from federation errors to gRPC status codes. Internal
/// details (store errors) are logged, not sent. Every message is bounded
/// ([`bounded_status`]).
pub fn to_status(e: FedError) -> Status {
    use tonic::Code;
    let code = match e {
        FedError::NoOpenRound { .. }
        | FedError::WrongRound { .. }
        | FedError::StaleVersion { .. }
        | FedError::NotSelected { .. }
        | FedError::Phase(_) => Code::FailedPrecondition,
        FedError::Duplicate { .. } => Code::AlreadyExists,
        FedError::Refused(_) => Code::InvalidArgument,
        FedError::UnknownVersion(_) | FedError::Pruned { .. } => Code::NotFound,
        FedError::Store(_)
        | FedError::Aggregate(_)
        | FedError::Corrupt(_)
        | FedError::SecureSetup(_)
        | FedError::CommitRefused(_) => {
            let text = e.to_string();
            warn!(error = %truncate_text(&text, MAX_REFUSAL_TEXT), "internal error");
            return Status::internal("internal error");
        }
    };
    bounded_status(code, &e.to_string())
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::RoundEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FederationRpc for FederationService {
    async fn join(
        &self,
        req: Request<v1::JoinRequest>,
    ) -> Result<Response<v1::JoinResponse>, Status> {
        let (fed, node) = self.caller(&req)?;
        let r = req.into_inner();
        check_binding(&fed, &node, &r.tenant, &r.node)?;
        fed.join(&node, &r.feature_schema)
            .map(Response::new)
            .map_err(to_status)
    }

    async fn get_model(
        &self,
        req: Request<v1::GetModelRequest>,
    ) -> Result<Response<v1::SignedModel>, Status> {
        let (fed, _) = self.caller(&req)?;
        let bytes = fed.model(req.get_ref().version).map_err(to_status)?;
        let m = v1::SignedModel::decode(bytes.as_slice()).map_err(|e| {
            warn!(error = %e, "stored model does not decode");
            Status::internal("internal error")
        })?;
        Ok(Response::new(m))
    }

    type WatchRoundsStream = EventStream;

    async fn watch_rounds(
        &self,
        req: Request<v1::WatchRoundsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let (fed, node) = self.caller(&req)?;
        let (rx, guard) = fed.subscribe(&node);
        let span = info_span!("watch", tenant = %fed.tenant(), node = %node);
        span.in_scope(|| tracing::debug!(have = req.get_ref().have_version, "round stream opened"));
        let stream = WatchStream::new(rx).map(move |status| {
            let _keep = &guard;
            Ok(status.event_for(&node))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn submit_update(
        &self,
        req: Request<v1::UpdateRequest>,
    ) -> Result<Response<v1::SubmitAck>, Status> {
        let (fed, node) = self.caller(&req)?;
        let r = req.into_inner();
        check_binding(&fed, &node, &r.tenant, &r.node)?;
        let span = info_span!("submit", tenant = %fed.tenant(), round = r.round, node = %node);
        let wire = r.encoded_len() as u64;
        async move {
            fed.submit(&node, r, wire)
                .map(Response::new)
                .map_err(to_status)
        }
        .instrument(span)
        .await
    }

    async fn sec_agg(
        &self,
        req: Request<v1::SecAggRequest>,
    ) -> Result<Response<v1::SecAggAck>, Status> {
        let (fed, node) = self.caller(&req)?;
        let r = req.into_inner();
        check_binding(&fed, &node, &r.tenant, &r.node)?;
        let span = info_span!("secagg", tenant = %fed.tenant(), round = r.round, node = %node, bucket = r.bucket);
        let wire = r.encoded_len() as u64;
        async move {
            fed.secagg(&node, r, wire)
                .map(Response::new)
                .map_err(to_status)
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounds::InvalidReason;

    #[test]
    fn a_huge_shape_gives_a_small_status() {
        let shape = vec![7u64; 1_000_000];
        let e = FedError::Refused(InvalidReason::Shape {
            got: fedmesh_proto::ShapeSummary::of(&shape),
            expected: 10,
        });
        let st = to_status(e);
        assert_eq!(st.code(), tonic::Code::InvalidArgument);
        assert!(st.message().len() <= 1024, "{}", st.message().len());
        assert!(st.message().contains("1000000 dims"), "{}", st.message());
        let t = fedmesh_proto::v1::Tensor {
            dtype: fedmesh_proto::v1::Dtype::F32Le as i32,
            shape,
            data: vec![],
        };
        let e = fedmesh_proto::decode_f32(&t, 10).unwrap_err();
        let st = to_status(FedError::Refused(InvalidReason::Tensor(e)));
        assert!(st.message().len() <= 1024, "{}", st.message().len());
    }

    #[test]
    fn free_text_refusals_are_truncated() {
        let long = "é".repeat(1_000_000);
        for e in [
            FedError::Phase(long.clone()),
            FedError::Refused(InvalidReason::secure_protocol(
                crate::bounds::SecureViolation::Message,
                &long,
            )),
        ] {
            let st = to_status(e);
            assert!(st.message().len() <= 1024, "{}", st.message().len());
        }
        let st = bounded_status(tonic::Code::Internal, &long);
        assert!(st.message().len() <= MAX_REFUSAL_TEXT + 3);
        assert!(st.message().ends_with('…'));
    }
}
