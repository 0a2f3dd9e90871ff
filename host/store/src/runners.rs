//! The runner registry of a cluster, on Postgres: which runners exist, where a coordinator
//! reaches each, its capacity and load, and how long ago it was last heard from. Every age is
//! measured by the database's clock (`now()` on the database both when a heartbeat is written
//! and when it is judged), so liveness never depends on the machines' clocks agreeing.
//!
//! A registration is a new generation of its id: a heartbeat from an older generation (a
//! process that was replaced, or two processes claiming one id) is told so, and so is one from
//! a runner already declared dead; neither is taken. Placing a session claims a sandbox on the
//! least-loaded live runner with room, in one statement, so two coordinators placing at once
//! cannot both take a runner's last place.

use std::time::Duration;

use sqlx::PgPool;

use crate::sql::{db, retrying};
use crate::StoreError;

/// Where a runner stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerState {
    /// Takes sessions (while its heartbeats come in time).
    Live,
    /// Stopping: takes no new sessions, hands back the ones it has.
    Draining,
    /// Not heard from in time: its sessions start again elsewhere.
    Dead,
}

impl RunnerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Draining => "draining",
            Self::Dead => "dead",
        }
    }

    fn parse(text: &str) -> Result<Self, StoreError> {
        match text {
            "live" => Ok(Self::Live),
            "draining" => Ok(Self::Draining),
            "dead" => Ok(Self::Dead),
            other => Err(StoreError::Corrupt(format!("runner state {other:?}"))),
        }
    }
}

/// A runner as the registry has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runner {
    pub id: String,
    /// The URL coordinators reach it at.
    pub address: String,
    pub generation: u64,
    /// The sandboxes it may hold.
    pub capacity: u64,
    /// Its sandboxes as of its last heartbeat, plus those placed on it since (a heartbeat
    /// within a second of a placement does not lower the count: the runner may have counted
    /// before that session's sandbox was there).
    pub sandboxes: u64,
    /// Its sandboxes in a turn, as of its last heartbeat.
    pub running: u64,
    pub state: RunnerState,
    /// Since its last heartbeat, by the database's clock.
    pub heartbeat_age: Duration,
}

impl Runner {
    /// It has been heard from within `ttl` and is not dead: the sessions it holds are its.
    pub fn holds_sessions(&self, ttl: Duration) -> bool {
        self.state != RunnerState::Dead && self.heartbeat_age < ttl
    }
}

/// What a heartbeat met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    Taken,
    /// No runner of that id is registered (it left, or never came).
    Unknown,
    /// The id was registered again since: this process is not that runner any more.
    Superseded,
    /// It was declared dead: its sessions are being started elsewhere.
    Dead,
}

/// What a heartbeat reports.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub sandboxes: u64,
    pub running: u64,
    /// The runner is stopping.
    pub draining: bool,
}

/// The registry. Cheap to clone.
#[derive(Clone)]
pub struct Runners {
    pub(crate) pool: PgPool,
}

type Row = (String, String, i64, i64, i64, i64, String, i64);

const COLUMNS: &str = "id, address, generation, capacity, sandboxes, running, state,
    (EXTRACT(EPOCH FROM (now() - heartbeat_at)) * 1000)::INT8";

fn runner(row: Row) -> Result<Runner, StoreError> {
    let (id, address, generation, capacity, sandboxes, running, state, age) = row;
    Ok(Runner {
        id,
        address,
        generation: generation as u64,
        capacity: capacity.max(0) as u64,
        sandboxes: sandboxes.max(0) as u64,
        running: running.max(0) as u64,
        state: RunnerState::parse(&state)?,
        heartbeat_age: Duration::from_millis(age.max(0) as u64),
    })
}

fn millis(ttl: Duration) -> i64 {
    ttl.as_millis().min(i64::MAX as u128) as i64
}

impl Runners {
    /// Registers the runner (again: a new generation, live, heard from now) and returns its
    /// generation, with the registration it replaced, if any.
    pub async fn register(
        &self,
        id: &str,
        address: &str,
        capacity: u64,
    ) -> Result<(u64, Option<Runner>), StoreError> {
        let before = self.get(id).await?;
        let generation: i64 = retrying(|| async {
            sqlx::query_scalar(
                "INSERT INTO runners (id, address, generation, capacity, sandboxes, running, state, claimed_at, registered_at, heartbeat_at)
                 VALUES ($1, $2, 1, $3, 0, 0, 'live', now(), now(), now())
                 ON CONFLICT (id) DO UPDATE SET address = excluded.address,
                     generation = runners.generation + 1, capacity = excluded.capacity,
                     sandboxes = 0, running = 0, state = 'live',
                     registered_at = now(), heartbeat_at = now()
                 RETURNING generation",
            )
            .bind(id)
            .bind(address)
            .bind(capacity.min(i64::MAX as u64) as i64)
            .fetch_one(&self.pool)
            .await
            .map_err(db)
        })
        .await?;
        Ok((generation as u64, before))
    }

    /// Records a heartbeat of the runner's `generation`, by the database's clock.
    pub async fn heartbeat(
        &self,
        id: &str,
        generation: u64,
        load: Load,
    ) -> Result<Beat, StoreError> {
        let taken = retrying(|| async {
            sqlx::query(
                "UPDATE runners SET heartbeat_at = now(), running = $4,
                     sandboxes = CASE WHEN claimed_at > now() - INTERVAL '1 second'
                                      THEN GREATEST(sandboxes, $3) ELSE $3 END,
                     state = CASE WHEN $5 THEN 'draining' ELSE state END
                 WHERE id = $1 AND generation = $2 AND state <> 'dead'",
            )
            .bind(id)
            .bind(generation as i64)
            .bind(load.sandboxes as i64)
            .bind(load.running as i64)
            .bind(load.draining)
            .execute(&self.pool)
            .await
            .map_err(db)
        })
        .await?
        .rows_affected();
        if taken == 1 {
            return Ok(Beat::Taken);
        }
        Ok(match self.get(id).await? {
            None => Beat::Unknown,
            Some(now) if now.generation != generation => Beat::Superseded,
            Some(_) => Beat::Dead,
        })
    }

    /// Removes the runner's registration (it has handed back its sessions and stops).
    pub async fn leave(&self, id: &str, generation: u64) -> Result<bool, StoreError> {
        let gone = sqlx::query("DELETE FROM runners WHERE id = $1 AND generation = $2")
            .bind(id)
            .bind(generation as i64)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(gone.rows_affected() == 1)
    }

    pub async fn get(&self, id: &str) -> Result<Option<Runner>, StoreError> {
        let row: Option<Row> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM runners WHERE id = $1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        row.map(runner).transpose()
    }

    /// Every registered runner, by id.
    pub async fn list(&self) -> Result<Vec<Runner>, StoreError> {
        let rows: Vec<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM runners ORDER BY id"))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.into_iter().map(runner).collect()
    }

    /// Claims a sandbox on the least-loaded runner that is live (heard from within `ttl`),
    /// has room and is not in `skip`; `None` when there is none.
    pub async fn claim(
        &self,
        ttl: Duration,
        skip: &[String],
    ) -> Result<Option<Runner>, StoreError> {
        for _ in 0..crate::records::ATTEMPTS {
            let claimed: Option<Row> = retrying(|| async {
                sqlx::query_as(&format!(
                    "UPDATE runners SET sandboxes = sandboxes + 1, claimed_at = now()
                     WHERE id = (SELECT id FROM runners
                                 WHERE state = 'live' AND sandboxes < capacity
                                   AND heartbeat_at > now() - $1 * INTERVAL '1 millisecond'
                                   AND NOT (id = ANY($2))
                                 ORDER BY sandboxes::FLOAT8 / capacity, sandboxes, id LIMIT 1)
                       AND sandboxes < capacity
                     RETURNING {COLUMNS}"
                ))
                .bind(millis(ttl))
                .bind(skip)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)
            })
            .await?;
            if let Some(row) = claimed {
                return Ok(Some(runner(row)?));
            }
            // Another coordinator took the chosen runner's last place meanwhile, or none has room.
            let open = self.list().await?.into_iter().any(|r| {
                r.state == RunnerState::Live
                    && r.sandboxes < r.capacity
                    && r.heartbeat_age < ttl
                    && !skip.contains(&r.id)
            });
            if !open {
                return Ok(None);
            }
        }
        Ok(None)
    }

    /// Gives back a claim that was not used (the runner refused the session).
    pub async fn unclaim(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE runners SET sandboxes = sandboxes - 1 WHERE id = $1 AND sandboxes > 0")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Declares dead every runner not heard from within `ttl`, and returns them.
    pub async fn declare_dead(&self, ttl: Duration) -> Result<Vec<String>, StoreError> {
        retrying(|| async {
            sqlx::query_scalar(
                "UPDATE runners SET state = 'dead'
                 WHERE state <> 'dead' AND heartbeat_at <= now() - $1 * INTERVAL '1 millisecond'
                 RETURNING id",
            )
            .bind(millis(ttl))
            .fetch_all(&self.pool)
            .await
            .map_err(db)
        })
        .await
        .map_err(Into::into)
    }
}
