//! Placement in a cluster: which runner a session goes to, decided from database facts alone
//! (the runner registry, [`ash_store::Runners`], and each session's `runnerId`), so any
//! coordinator decides alike and none keeps state of its own.
//!
//! A new session goes to the least-loaded live runner with room. A session stays on its
//! runner while that runner is heard from; once it is not (its heartbeat is older than the
//! time to live, by the database's clock), the runner is declared dead, the turns it left
//! open are ended in the log (`error` + `done`), and the session is moved to another runner —
//! moved in one checked write, so two coordinators moving it at once agree on one runner —
//! which starts it cold from the snapshot store. A session on a draining runner waits until
//! that runner has handed it back (its snapshot is stored), then moves.

use std::sync::Arc;
use std::time::Duration;

use ash_core::{SessionId, SessionStatus};
use ash_store::{Runner, RunnerState, Runners};

use crate::{Runtime, RuntimeError};

/// Attempts at placing one session while other coordinators move it too.
const ATTEMPTS: usize = 4;

/// Where a request for a session goes.
#[derive(Debug)]
pub enum Placement {
    /// To this runner, which holds the session.
    Held(Runner),
    /// To this runner, onto which the session was just moved: it must let go of anything it
    /// kept of the session from an earlier stay before it serves it.
    Moved(Runner),
    /// Nowhere: this coordinator answers it itself (no such session, or it ended).
    Here,
}

/// The registry and its time to live, as a coordinator uses them.
#[derive(Clone)]
pub struct Cluster {
    pub runners: Runners,
    /// A runner not heard from for this long is dead.
    pub ttl: Duration,
}

impl Cluster {
    /// Claims room for a new session on the least-loaded live runner not in `skip`.
    pub async fn place_new(&self, skip: &[String]) -> Result<Runner, RuntimeError> {
        match self.runners.claim(self.ttl, skip).await? {
            Some(runner) => Ok(runner),
            None => Err(self.none_left(skip).await?),
        }
    }

    /// Why no runner can take a session, as an [`RuntimeError::Unavailable`].
    async fn none_left(&self, skip: &[String]) -> Result<RuntimeError, RuntimeError> {
        let runners = self.runners.list().await?;
        if runners.is_empty() {
            return Ok(RuntimeError::Unavailable(
                "no runner is registered: start one with `ash runner` (see docs/operations.md, Running a cluster)".into(),
            ));
        }
        let count = |f: &dyn Fn(&Runner) -> bool| runners.iter().filter(|r| f(r)).count();
        let silent = |r: &Runner| r.state != RunnerState::Dead && r.heartbeat_age >= self.ttl;
        Ok(RuntimeError::Unavailable(format!(
            "no runner can take a session: of {} registered, {} dead, {} silent, {} draining, {} full, {} refused it; start a runner or end sessions",
            runners.len(),
            count(&|r| r.state == RunnerState::Dead),
            count(&silent),
            count(&|r| r.state == RunnerState::Draining && !silent(r)),
            count(&|r| r.state == RunnerState::Live && !silent(r) && r.sandboxes >= r.capacity),
            skip.len(),
        )))
    }

    /// Declares dead the runners not heard from in time and ends in the log the turns they
    /// left open.
    pub async fn sweep(&self, runtime: &Runtime) -> Result<(), RuntimeError> {
        for dead in self.runners.declare_dead(self.ttl).await? {
            tracing::warn!(runner = %dead, ttl = ?self.ttl, "runner declared dead: no heartbeat within its time to live; its sessions start on another runner at their next request");
            runtime.close_turns_of(&dead).await?;
        }
        Ok(())
    }

    /// Where a request for the session goes; moves the session off a dead or departed runner
    /// first.
    pub async fn place(&self, runtime: &Runtime, id: SessionId) -> Result<Placement, RuntimeError> {
        for _ in 0..ATTEMPTS {
            let Some(session) = runtime.store.get_session(id).await? else {
                return Ok(Placement::Here);
            };
            if session.status == SessionStatus::Ended {
                return Ok(Placement::Here);
            }
            let holder = match &session.runner_id {
                Some(runner) => self.runners.get(runner).await?,
                None => None,
            };
            match holder {
                Some(runner) if runner.holds_sessions(self.ttl) => {
                    if runner.state == RunnerState::Draining {
                        return Err(RuntimeError::Unavailable(format!(
                            "the session's runner {} is stopping and handing its sessions back; try again in a few seconds",
                            runner.id
                        )));
                    }
                    return Ok(Placement::Held(runner));
                }
                Some(runner) if runner.state != RunnerState::Dead => {
                    // Silent for longer than its time to live: dead, and its turns are ended.
                    self.sweep(runtime).await?;
                    continue;
                }
                _ => {}
            }
            let from = session.runner_id.as_deref();
            let to = self.place_new(&[]).await?;
            if runtime.store.move_session(id, from, &to.id).await? {
                tracing::info!(session = %id, from = from.unwrap_or("-"), to = %to.id, "session moved to another runner");
                return Ok(Placement::Moved(to));
            }
            self.runners.unclaim(&to.id).await?;
        }
        Err(RuntimeError::Unavailable(
            "the session is being moved between runners by several coordinators at once; try again"
                .into(),
        ))
    }

    /// Sweeps every half time to live, for as long as the coordinator runs.
    pub fn start(self, runtime: Arc<Runtime>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(self.ttl / 2);
            loop {
                ticks.tick().await;
                if let Err(e) = self.sweep(&runtime).await {
                    tracing::warn!("cannot check the runners' heartbeats: {e}");
                }
            }
        })
    }
}
