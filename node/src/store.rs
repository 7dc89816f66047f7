//! The node's durable state in sled: the current verified global model (as
//! the signed bytes received, re-verified on load), a local bootstrap model
//! when no global model exists yet, and the calibrated threshold.

use std::path::Path;

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum NodeStoreError {
    /// sled failed.
    #[error("node store: {0}")]
    Sled(#[from] sled::Error),
    /// A record did not decode.
    #[error("node store: corrupt record {0}")]
    Corrupt(&'static str),
}

/// A local (non-federated) model, kept so detection survives restarts
/// before any global model arrived.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LocalModelRecord {
    /// Encoder widths.
    pub hidden: Vec<usize>,
    /// Flat parameters.
    pub params: Vec<f32>,
    /// Scaler mean.
    pub mean: Vec<f32>,
    /// Scaler std.
    pub std: Vec<f32>,
    /// Threshold.
    pub threshold: f32,
    /// Calibration windows behind the threshold (0 in records written
    /// before this field existed: the threshold is then not trusted).
    #[serde(default)]
    pub calibrated_on: usize,
}

/// The node store.
#[derive(Clone)]
pub struct NodeStore {
    db: sled::Db,
}

const GLOBAL: &[u8] = b"global_model";
const THRESHOLD: &[u8] = b"threshold";
const LOCAL: &[u8] = b"local_model";
const CALIBRATED_ON: &[u8] = b"calibrated_on";
const OUTBOX: &[u8] = b"alert_outbox";
const RESPONSES: &[u8] = b"responses";
const INCIDENTS: &[u8] = b"incidents";
const PARTICIPANT_LISTS: &[u8] = b"participant_lists";

impl NodeStore {
    /// Opens or creates the store.
    pub fn open(dir: &Path) -> Result<Self, NodeStoreError> {
        Ok(Self {
            db: sled::Config::new().path(dir).open()?,
        })
    }

    /// Signed bytes of the current global model.
    pub fn global_model(&self) -> Result<Option<Vec<u8>>, NodeStoreError> {
        Ok(self.db.get(GLOBAL)?.map(|v| v.to_vec()))
    }

    /// Replaces the global model, its threshold and the number of
    /// calibration windows behind it atomically, then flushes.
    pub fn put_global(
        &self,
        signed: &[u8],
        threshold: f32,
        calibrated_on: usize,
    ) -> Result<(), NodeStoreError> {
        let mut b = sled::Batch::default();
        b.insert(GLOBAL, signed);
        b.insert(THRESHOLD, &threshold.to_le_bytes());
        b.insert(CALIBRATED_ON, &(calibrated_on as u64).to_le_bytes());
        self.db.apply_batch(b)?;
        self.db.flush()?;
        Ok(())
    }

    /// Threshold calibrated for the global model.
    pub fn threshold(&self) -> Result<Option<f32>, NodeStoreError> {
        match self.db.get(THRESHOLD)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 4] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| NodeStoreError::Corrupt("threshold"))?;
                Ok(Some(f32::from_le_bytes(b)))
            }
        }
    }

    /// Calibration windows behind the global model's threshold.
    pub fn calibrated_on(&self) -> Result<Option<usize>, NodeStoreError> {
        match self.db.get(CALIBRATED_ON)? {
            None => Ok(None),
            Some(v) => {
                let b: [u8; 8] = v
                    .as_ref()
                    .try_into()
                    .map_err(|_| NodeStoreError::Corrupt("calibrated_on"))?;
                usize::try_from(u64::from_le_bytes(b))
                    .map(Some)
                    .map_err(|_| NodeStoreError::Corrupt("calibrated_on"))
            }
        }
    }

    /// The local bootstrap model.
    pub fn local_model(&self) -> Result<Option<LocalModelRecord>, NodeStoreError> {
        match self.db.get(LOCAL)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|_| NodeStoreError::Corrupt("local_model")),
        }
    }

    /// The tree of the webhook alert outbox ([`crate::alerting::webhook::Outbox`]):
    /// big-endian sequence numbers to alert JSON.
    pub fn alert_outbox(&self) -> Result<sled::Tree, NodeStoreError> {
        Ok(self.db.open_tree(OUTBOX)?)
    }

    /// The tree of the response layer's rate-limit memory
    /// ([`crate::alerting::response::ResponseMemory`]): full container id to
    /// the big-endian Unix time (ms) of the last successful action.
    pub fn responses(&self) -> Result<sled::Tree, NodeStoreError> {
        Ok(self.db.open_tree(RESPONSES)?)
    }

    /// A number larger than every one returned before, across restarts.
    pub fn next_sequence(&self) -> Result<u64, NodeStoreError> {
        Ok(self.db.generate_id()?)
    }

    /// The incident tracker's state as last stored (JSON of
    /// [`crate::detection::incident::TrackerSnapshot`]; decoded and checked
    /// by the caller).
    pub fn incidents(&self) -> Result<Option<Vec<u8>>, NodeStoreError> {
        Ok(self.db.get(INCIDENTS)?.map(|v| v.to_vec()))
    }

    /// Replaces the incident tracker's state. Not flushed here: sled's
    /// background flush makes it durable within half a second, and the next
    /// window writes it again.
    pub fn put_incidents(&self, bytes: &[u8]) -> Result<(), NodeStoreError> {
        self.db.insert(INCIDENTS, bytes)?;
        Ok(())
    }

    /// The committed participant lists the node last checked its secure
    /// buckets against (JSON, newest first; decoded by the caller).
    pub fn participant_lists(&self) -> Result<Option<Vec<u8>>, NodeStoreError> {
        Ok(self.db.get(PARTICIPANT_LISTS)?.map(|v| v.to_vec()))
    }

    /// Replaces the participant lists (see [`NodeStore::participant_lists`]).
    pub fn put_participant_lists(&self, bytes: &[u8]) -> Result<(), NodeStoreError> {
        self.db.insert(PARTICIPANT_LISTS, bytes)?;
        Ok(())
    }

    /// Forgets the incident tracker's state (it did not decode).
    pub fn remove_incidents(&self) -> Result<(), NodeStoreError> {
        self.db.remove(INCIDENTS)?;
        Ok(())
    }

    /// Stores the local bootstrap model.
    pub fn put_local(&self, rec: &LocalModelRecord) -> Result<(), NodeStoreError> {
        let bytes = serde_json::to_vec(rec).map_err(|_| NodeStoreError::Corrupt("local_model"))?;
        self.db.insert(LOCAL, bytes)?;
        self.db.flush()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_threshold_and_calibration_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = NodeStore::open(dir.path()).unwrap();
        assert_eq!(s.global_model().unwrap(), None);
        assert_eq!(s.threshold().unwrap(), None);
        assert_eq!(s.calibrated_on().unwrap(), None);
        s.put_global(b"signed", 0.25, 120).unwrap();
        assert_eq!(s.global_model().unwrap().as_deref(), Some(&b"signed"[..]));
        assert_eq!(s.threshold().unwrap(), Some(0.25));
        assert_eq!(s.calibrated_on().unwrap(), Some(120));
    }

    #[test]
    fn local_records_without_calibration_count_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = NodeStore::open(dir.path()).unwrap();
        let legacy = br#"{"hidden":[2],"params":[0.5],"mean":[0.0],"std":[1.0],"threshold":0.5}"#;
        s.db.insert(LOCAL, &legacy[..]).unwrap();
        let rec = s.local_model().unwrap().unwrap();
        assert_eq!(rec.calibrated_on, 0);
        assert_eq!(rec.threshold, 0.5);
    }
}
