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

use crate::federation::{FedError, Federation};
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

fn check_binding(
    fed: &Federation,
    node: &NodeId,
    tenant_field: &str,
    node_field: &str,
) -> Result<(), Status> {
    if tenant_field != fed.tenant().as_str() || node_field != node.as_str() {
        return Err(Status::permission_denied(format!(
            "request is bound to {tenant_field}/{node_field} but the certificate names {}/{node}",
            fed.tenant()
        )));
    }
    Ok(())
}

/// The one mapping from federation errors to gRPC status codes. Internal
/// details (store errors) are logged, not sent.
pub fn to_status(e: FedError) -> Status {
    match e {
        FedError::NoOpenRound { .. }
        | FedError::WrongRound { .. }
        | FedError::StaleVersion { .. }
        | FedError::NotSelected { .. }
        | FedError::Phase(_) => Status::failed_precondition(e.to_string()),
        FedError::Duplicate { .. } => Status::already_exists(e.to_string()),
        FedError::Invalid(_) => Status::invalid_argument(e.to_string()),
        FedError::UnknownVersion(_) | FedError::Pruned { .. } => Status::not_found(e.to_string()),
        FedError::Store(_) | FedError::Aggregate(_) | FedError::Corrupt(_) => {
            warn!(error = %e, "internal error");
            Status::internal("internal error")
        }
    }
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
