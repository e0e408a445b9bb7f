//! What is placed on each hypervisor, as the API's answers about room need
//! it (a resize's check, the operators' view of hypervisors). Counting it
//! means listing every server and subscription, so one listing serves all
//! requests for a short while: a thousand resizes asked at once cost one
//! listing, not a thousand. It only ever answers early; the controller
//! decides under its placement lock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stratus_core::ids::HypervisorName;
use stratus_core::resources::{StorageSubscription, VirtualServer};
use stratus_core::scheduling::{self, Placed};
use stratus_store::Resources;

use crate::error::ApiError;

/// How long one listing is used.
const FRESH_FOR: Duration = Duration::from_secs(2);

/// Each hypervisor's placed load.
pub type PlacedLoad = Arc<HashMap<HypervisorName, Placed>>;

#[derive(Clone, Default)]
pub struct PlacedCache {
    listed: Arc<tokio::sync::Mutex<Option<(Instant, PlacedLoad)>>>,
}

impl PlacedCache {
    /// What is placed on each hypervisor, listed at most [`FRESH_FOR`] ago.
    /// Callers that come while it is being listed wait for that listing.
    pub async fn load(
        &self,
        servers: &Resources<VirtualServer>,
        storage: &Resources<StorageSubscription>,
    ) -> Result<PlacedLoad, ApiError> {
        let mut listed = self.listed.lock().await;
        if let Some((at, load)) = listed.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return Ok(load.clone());
        }
        let all_servers = servers.list(None).await?.items;
        let mut placed = scheduling::placed_load(scheduling::placements_of(&all_servers));
        let subscriptions = storage.list(None).await?.items;
        scheduling::add_storage_load(&mut placed, &subscriptions);
        let placed = Arc::new(placed);
        *listed = Some((Instant::now(), placed.clone()));
        Ok(placed)
    }
}
