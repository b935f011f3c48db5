//! Group commit to Redis, per partition.
//!
//! Concurrent requests whose SKUs share a partition join that partition's
//! lane: a bounded pending list (`redis.batch_pending_max`; past it the
//! request is shed with `RedisError::Overloaded`) drained by one task. The
//! task takes whatever is waiting, up to `redis.batch_size_max`, and sends
//! it as one EVALSHA of the batch script, which applies the requests one
//! after another exactly as single calls would. While that batch is in
//! flight the next one forms; a lone request goes at once, with no linger.
//! Every partition's batch touches one slot, so Redis Cluster needs nothing
//! more.
//!
//! A request whose caller stopped waiting (its HTTP deadline passed) before
//! its batch was sent is dropped, not applied. One already sent may still
//! be applied after its caller gave up: its hold expires unless the client
//! retries with the same `Idempotency-Key` (see DESIGN.md).
//!
//! Lanes are created on first use; each task lives as long as its sender,
//! which the `Lanes` owns: dropping the `Redis` handle ends them all.

use std::sync::{Arc, OnceLock};

use fred::error::{Error as FredError, ErrorKind};
use metrics::Histogram;
use tokio::sync::{mpsc, oneshot};

use super::{Core, RedisError, ScriptName, reply::ScriptReply};
use crate::{events::Event, inventory::Partition, metrics as names};

/// One kind of batched call: its script, its request and reply types, and
/// how a batch becomes KEYS and ARGV.
pub trait BatchKind: Send + Sync + 'static {
    type Request: Send + Sync + 'static;
    type Reply: ScriptReply;
    const SCRIPT: ScriptName;

    /// The KEYS and ARGV of one call applying `batch` in order.
    fn call(core: &Core, p: Partition, batch: &[&Self::Request]) -> (Vec<String>, Vec<String>);

    /// Replicas that must have `request`'s writes before it is answered
    /// (`WAIT` after the batch); 0: none.
    fn replicas(_core: &Core, _request: &Self::Request) -> u32 {
        0
    }

    /// Whether `reply` says the request wrote something a replica must have.
    fn wrote(_reply: &Self::Reply) -> bool {
        true
    }
}

/// One request's reply and the events its script run appended for it.
#[derive(Debug)]
pub struct Applied<T> {
    pub reply: T,
    pub events: Vec<Event>,
}

type Outcome<T> = Result<Applied<T>, RedisError>;

struct Pending<K: BatchKind> {
    request: K::Request,
    /// The outcome, and the request handed back to its caller.
    reply: oneshot::Sender<(Outcome<K::Reply>, K::Request)>,
}

impl<K: BatchKind> Pending<K> {
    fn answer(self, outcome: Outcome<K::Reply>) {
        // A caller that stopped waiting meanwhile loses nothing: the
        // events of what was applied are in the stream for the reconciler.
        let _ = self.reply.send((outcome, self.request));
    }
}

/// Every partition's lane for one kind of call.
pub struct Lanes<K: BatchKind> {
    core: Arc<Core>,
    lanes: Vec<OnceLock<mpsc::Sender<Pending<K>>>>,
    sizes: Histogram,
}

impl<K: BatchKind> Lanes<K> {
    pub fn new(core: Arc<Core>) -> Self {
        let partitions = core.keys().partitions() as usize;
        let sizes = metrics::histogram!(names::REDIS_BATCH_REQUESTS, "script" => K::SCRIPT.stem());
        Self {
            core,
            lanes: (0..partitions).map(|_| OnceLock::new()).collect(),
            sizes,
        }
    }

    /// Applies `request` in partition `p`'s next batch.
    pub async fn submit(&self, p: Partition, request: K::Request) -> Outcome<K::Reply> {
        self.submit_returning(p, request).await.0
    }

    /// As `submit`, handing the request back (moved, never copied) unless
    /// the lane stopped with it: for a caller that may send it again.
    pub async fn submit_returning(
        &self,
        p: Partition,
        request: K::Request,
    ) -> (Outcome<K::Reply>, Option<K::Request>) {
        let script = K::SCRIPT.stem();
        let Some(lane) = self.lanes.get(p.0 as usize) else {
            let error = RedisError::Reply {
                script,
                detail: format!("partition {} out of range", p.0),
            };
            return (Err(error), Some(request));
        };
        let sender = lane.get_or_init(|| self.start(p));
        let (reply, answer) = oneshot::channel();
        if let Err(refused) = sender.try_send(Pending { request, reply }) {
            super::count_error(script, "overloaded");
            let request = refused.into_inner().request;
            return (Err(RedisError::Overloaded { script }), Some(request));
        }
        match answer.await {
            Ok((outcome, request)) => (outcome, Some(request)),
            Err(_) => {
                let source = FredError::new(ErrorKind::Canceled, "the batch lane stopped");
                (Err(RedisError::Unavailable { script, source }), None)
            }
        }
    }

    fn start(&self, p: Partition) -> mpsc::Sender<Pending<K>> {
        let limits = self.core.limits();
        let (tx, rx) = mpsc::channel(limits.batch_pending_max.max(1));
        let lane = Lane::<K> {
            core: self.core.clone(),
            p,
            rx,
            size_max: limits.batch_size_max.max(1),
            sizes: self.sizes.clone(),
        };
        tokio::spawn(lane.run());
        tx
    }
}

struct Lane<K: BatchKind> {
    core: Arc<Core>,
    p: Partition,
    rx: mpsc::Receiver<Pending<K>>,
    size_max: usize,
    sizes: Histogram,
}

impl<K: BatchKind> Lane<K> {
    async fn run(mut self) {
        let mut batch: Vec<Pending<K>> = Vec::with_capacity(self.size_max);
        while let Some(first) = self.rx.recv().await {
            batch.push(first);
            while batch.len() < self.size_max {
                match self.rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            // Nobody waits for these any more: applying them could only
            // leave holds behind for answered requests.
            batch.retain(|pending| !pending.reply.is_closed());
            if !batch.is_empty() {
                self.send(&mut batch).await;
            }
            batch.clear();
        }
    }

    async fn send(&self, batch: &mut Vec<Pending<K>>) {
        self.sizes.record(batch.len() as f64);
        let requests: Vec<&K::Request> = batch.iter().map(|pending| &pending.request).collect();
        let (keys, args) = K::call(&self.core, self.p, &requests);
        let replicas = requests
            .iter()
            .map(|r| K::replicas(&self.core, r))
            .max()
            .unwrap_or(0);
        let result = self
            .core
            .eval_partition_replicated::<K::Reply>(K::SCRIPT, self.p, keys, args, replicas)
            .await;
        match result {
            Ok((replies, acked)) if replies.len() == batch.len() => {
                for (pending, applied) in batch.drain(..).zip(replies) {
                    let wanted = K::replicas(&self.core, &pending.request);
                    if wanted > 0 && acked.unwrap_or(0) < wanted && K::wrote(&applied.reply) {
                        // Applied on the master, not yet on enough replicas:
                        // a failover now could lose it. The retry answers the
                        // same; its events are in the stream for the
                        // reconciler.
                        super::count_error(K::SCRIPT.stem(), "unreplicated");
                        pending.answer(Err(RedisError::Unavailable {
                            script: K::SCRIPT.stem(),
                            source: fred::error::Error::new(
                                fred::error::ErrorKind::Timeout,
                                format!(
                                    "{} of {wanted} replicas acknowledged in time",
                                    acked.unwrap_or(0)
                                ),
                            ),
                        }));
                        continue;
                    }
                    pending.answer(Ok(applied));
                }
            }
            Ok((replies, _)) => {
                let error = RedisError::Reply {
                    script: K::SCRIPT.stem(),
                    detail: format!("{} replies for {} requests", replies.len(), batch.len()),
                };
                super::count_error(K::SCRIPT.stem(), error.kind());
                for pending in batch.drain(..) {
                    pending.answer(Err(error.clone()));
                }
            }
            Err(error) => {
                for pending in batch.drain(..) {
                    pending.answer(Err(error.clone()));
                }
            }
        }
    }
}
