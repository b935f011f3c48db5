//! What every handler shares: the inventory use cases, the journal (for
//! readiness and metrics), the token checker, the request limits, admission
//! control, and whether the gateway is draining.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::{
    auth::Auth,
    journal::JournalAccess,
    limits::Admission,
    live::{feed::Feed, webhooks::Webhooks},
    service::Inventory,
};

/// Cloned by every extractor of every request: one reference count, not
/// one per shared part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub inventory: Inventory,
    pub auth: Arc<Auth>,
    pub limits: Arc<RequestLimits>,
    pub lifecycle: Arc<Lifecycle>,
    pub journal: JournalAccess,
    pub admission: Arc<Admission>,
    /// SSE stock streams.
    pub live: Arc<Feed>,
    /// Stock webhooks' registrations and deliveries.
    pub webhooks: Arc<Webhooks>,
    /// Carts, all or nothing.
    pub carts: crate::service::carts::Carts,
    /// Signs and checks waiting-room admission tokens.
    pub room_admissions: Arc<crate::service::room::Admissions>,
}

/// Request-shape limits, from `Settings`.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub max_qty_per_request: u32,
    pub max_extend_seconds: u32,
    pub max_hold_seconds: u64,
    pub max_cart_lines: usize,
    pub import_lines_max: usize,
}

/// Set once shutdown begins, so `/readyz` turns traffic away first.
#[derive(Debug, Default)]
pub struct Lifecycle {
    draining: AtomicBool,
}

impl Lifecycle {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}
