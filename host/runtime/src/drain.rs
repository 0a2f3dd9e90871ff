//! A bounded stop. On SIGTERM the server drains instead of vanishing:
//!
//! 1. it takes no new work ([`crate::Runtime::draining`]: the HTTP edge answers 503 to all
//!    but reads and interrupts, and `/health` says `draining`, so a load balancer moves on);
//! 2. running turns get the grace period (`shutdown_grace_secs`, 10 s) to end by themselves;
//!    those still running then end in the log with `error` + `done`;
//! 3. every follower gets a `shutdown` frame — not in the log, so without an `id:` — and its
//!    stream ends, so clients reconnect (here once the server is back, or elsewhere) with
//!    `Last-Event-ID` and lose nothing;
//! 4. the frontends close, then the sandboxes stop and the observers are flushed
//!    ([`crate::Runtime::shutdown`]).

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long turns ended at the deadline may take to log their end before the stop goes on
/// regardless.
const LAST_WAIT: Duration = Duration::from_secs(5);

/// Where a stop stands; each step, once reached, stays.
#[derive(Default)]
pub(crate) struct Drain {
    /// Every turn's task, from its first frame to its end in the log.
    pub(crate) turns: TaskTracker,
    /// The stop began: no new work.
    began: CancellationToken,
    /// The grace period is over: turns still running end now.
    deadline: CancellationToken,
    /// The turns have ended: followers end now, and the listener closes.
    closing: CancellationToken,
}

impl Drain {
    pub(crate) fn began(&self) -> bool {
        self.began.is_cancelled()
    }

    /// Resolves when the stop begins.
    pub(crate) async fn began_now(&self) {
        self.began.cancelled().await
    }

    /// Resolves when running turns must end.
    pub(crate) async fn deadline(&self) {
        self.deadline.cancelled().await
    }

    /// Resolves when followers must end.
    pub(crate) async fn closing(&self) {
        self.closing.cancelled().await
    }

    pub(crate) fn closed(&self) -> tokio_util::sync::WaitForCancellationFutureOwned {
        self.closing.clone().cancelled_owned()
    }
}

/// Steps 1–3: returns once the followers have been told to go.
pub(crate) async fn drain(drain: &Drain, grace: Duration) {
    drain.began.cancel();
    drain.turns.close();
    let running = drain.turns.len();
    tracing::info!(
        running,
        "stopping: draining, {grace:?} for running turns to end"
    );
    if tokio::time::timeout(grace, drain.turns.wait())
        .await
        .is_err()
    {
        let running = drain.turns.len();
        tracing::warn!(
            running,
            "stopping: the grace period is over; ending the turns still running"
        );
    }
    drain.deadline.cancel();
    if tokio::time::timeout(LAST_WAIT, drain.turns.wait())
        .await
        .is_err()
    {
        tracing::warn!("stopping: some turns did not log their end; the next start closes them");
    }
    drain.closing.cancel();
}
