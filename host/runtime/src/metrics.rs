use std::time::Instant;

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The server's Prometheus metrics. Gauges are set when scraped; counters as things happen.
pub struct Metrics {
    pub registry: Registry,
    pub started: Instant,
    pub up: IntGauge,
    pub uptime: IntGauge,
    /// Bytes free where the data dir is.
    pub data_dir_free: IntGauge,
    pub active_sessions: IntGauge,
    pub active_sandboxes: IntGauge,
    pub pool: IntGaugeVec,
    pub max_capacity: IntGauge,
    pub sandbox_start: Histogram,
    pub turns: IntCounterVec,
    pub resumes: IntCounterVec,
    pub limit_hits: IntCounterVec,
    /// Workspace snapshots sent to the snapshot store, and brought back from it, by outcome.
    pub snapshot_uploads: IntCounterVec,
    pub snapshot_restores: IntCounterVec,
    pub prewarm_hits: IntCounter,
    pub auth_failures: IntCounter,
    /// Tool calls by tool and outcome, and their time.
    pub tool_calls: IntCounterVec,
    pub tool_seconds: prometheus::HistogramVec,
    pub plugin_transform: Histogram,
    pub plugin_auth: Histogram,
    /// Agent messages withheld because a transformer failed under the `drop` policy.
    pub plugin_withheld: IntCounter,
    /// Per plugin: calls and failures (copied from the plugin host when scraped), quarantine.
    pub plugin_calls: IntGaugeVec,
    pub plugin_failures: IntGaugeVec,
    pub plugin_quarantined: IntGaugeVec,
    pub plugin_dropped: IntGaugeVec,
    /// Per runner of a cluster (set on a coordinator when scraped): its capacity, its
    /// sandboxes, and milliseconds since its last heartbeat by the database's clock.
    pub runner_capacity: IntGaugeVec,
    pub runner_sandboxes: IntGaugeVec,
    pub runner_heartbeat_age: IntGaugeVec,
}

impl Metrics {
    /// Counts a turn by how it ended (`ash_turns_total{outcome}`).
    pub fn turn_ended(&self, outcome: ash_core::TurnOutcome) {
        self.turns.with_label_values(&[outcome.as_str()]).inc();
    }

    pub fn new(max_sandboxes: usize) -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let up = gauge("ash_up", "1 while the server runs");
        let uptime = gauge("ash_uptime_seconds", "Seconds since the server started");
        let data_dir_free = gauge(
            "ash_data_dir_free_bytes",
            "Bytes free on the data dir's filesystem",
        );
        let active_sessions = gauge("ash_active_sessions", "Sessions with status active");
        let active_sandboxes = gauge("ash_active_sandboxes", "Live sandboxes on this node");
        let max_capacity = gauge(
            "ash_pool_max_capacity",
            "Most sandboxes this node runs at once",
        );
        let pool = IntGaugeVec::new(
            Opts::new("ash_pool_sandboxes", "Live sandboxes by state"),
            &["state"],
        )
        .expect("valid metric");
        let sandbox_start = Histogram::with_opts(
            HistogramOpts::new(
                "ash_sandbox_start_seconds",
                "Time to start a sandbox until its bridge is ready",
            )
            .buckets(vec![
                0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ]),
        )
        .expect("valid metric");
        let turns = IntCounterVec::new(
            Opts::new("ash_turns_total", "Agent turns by outcome"),
            &["outcome"],
        )
        .expect("valid metric");
        let resumes = IntCounterVec::new(
            Opts::new(
                "ash_resume_total",
                "Session resumes by path (warm: sandbox still up; cold: a new one)",
            ),
            &["path"],
        )
        .expect("valid metric");
        let limit_hits = IntCounterVec::new(
            Opts::new(
                "ash_limit_hits_total",
                "Sandbox resource limits hit, by kind (memory: OOM kill; pids: fork refused)",
            ),
            &["kind"],
        )
        .expect("valid metric");
        let by_outcome = |name: &str, help: &str| {
            IntCounterVec::new(Opts::new(name, help), &["outcome"]).expect("valid metric")
        };
        let snapshot_uploads = by_outcome(
            "ash_snapshot_uploads_total",
            "Workspace snapshots sent to the snapshot store after a turn, pause or stop (ok, unchanged: not sent, failed)",
        );
        let snapshot_restores = by_outcome(
            "ash_snapshot_restores_total",
            "Workspaces brought back from the snapshot store because this node had none (ok, failed)",
        );
        let prewarm_hits = IntCounter::new(
            "ash_prewarm_hits_total",
            "Sessions started on a warm sandbox",
        )
        .expect("valid metric");
        let auth_failures = IntCounter::new(
            "ash_auth_failures_total",
            "Requests refused by the auth chain (bad or missing API key, denied or failed authenticator)",
        )
        .expect("valid metric");
        let tool_calls = IntCounterVec::new(
            Opts::new(
                "ash_tool_calls_total",
                "Tool calls through the invoker, by tool and outcome (ok, error: the tool failed, invalid: refused before it ran, timeout)",
            ),
            &["tool", "outcome"],
        )
        .expect("valid metric");
        let tool_seconds = prometheus::HistogramVec::new(
            HistogramOpts::new(
                "ash_tool_call_seconds",
                "Time of tool calls through the invoker, from the call to its result",
            )
            .buckets(vec![
                0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0,
            ]),
            &["tool"],
        )
        .expect("valid metric");
        let hook = |name: &str, help: &str| {
            let buckets = vec![
                0.000_002, 0.000_005, 0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.01, 0.1,
            ];
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric")
        };
        let plugin_transform = hook(
            "ash_plugin_transform_seconds",
            "Time to run an agent event through every transformer plugin",
        );
        let plugin_auth = hook(
            "ash_plugin_auth_seconds",
            "Time to run a request through the authenticator plugins",
        );
        let plugin_withheld = IntCounter::new(
            "ash_plugin_withheld_total",
            "Agent messages withheld because a transformer failed with on_failure = drop",
        )
        .expect("valid metric");
        let per_plugin = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["plugin"]).expect("valid metric")
        };
        let plugin_calls = per_plugin("ash_plugin_calls", "Calls into each plugin since start");
        let plugin_failures = per_plugin(
            "ash_plugin_failures",
            "Failed plugin calls (trap, deadline, memory, bad result) since start",
        );
        let plugin_quarantined = per_plugin(
            "ash_plugin_quarantined",
            "1 when the plugin is quarantined after repeated failures",
        );
        let plugin_dropped = per_plugin(
            "ash_plugin_dropped",
            "Events an observer plugin never saw (queue full, failure, quarantine) since start",
        );
        let per_runner = |name: &str, help: &str| {
            IntGaugeVec::new(Opts::new(name, help), &["runner", "state"]).expect("valid metric")
        };
        let runner_capacity = per_runner("ash_runner_capacity", "Sandboxes each runner may hold");
        let runner_sandboxes = per_runner(
            "ash_runner_sandboxes",
            "Session sandboxes on each runner, as of its last heartbeat",
        );
        let runner_heartbeat_age = per_runner(
            "ash_runner_heartbeat_age_ms",
            "Milliseconds since each runner's last heartbeat, by the database's clock",
        );
        for m in [
            Box::new(pool.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(runner_capacity.clone()),
            Box::new(runner_sandboxes.clone()),
            Box::new(runner_heartbeat_age.clone()),
            Box::new(plugin_transform.clone()),
            Box::new(plugin_auth.clone()),
            Box::new(plugin_dropped.clone()),
            Box::new(plugin_withheld.clone()),
            Box::new(plugin_calls.clone()),
            Box::new(plugin_failures.clone()),
            Box::new(plugin_quarantined.clone()),
            Box::new(sandbox_start.clone()),
            Box::new(turns.clone()),
            Box::new(resumes.clone()),
            Box::new(limit_hits.clone()),
            Box::new(snapshot_uploads.clone()),
            Box::new(snapshot_restores.clone()),
            Box::new(prewarm_hits.clone()),
            Box::new(auth_failures.clone()),
            Box::new(tool_calls.clone()),
            Box::new(tool_seconds.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        up.set(1);
        max_capacity.set(max_sandboxes as i64);
        Self {
            registry,
            started: Instant::now(),
            up,
            uptime,
            data_dir_free,
            active_sessions,
            active_sandboxes,
            pool,
            max_capacity,
            sandbox_start,
            turns,
            resumes,
            limit_hits,
            snapshot_uploads,
            snapshot_restores,
            prewarm_hits,
            auth_failures,
            tool_calls,
            tool_seconds,
            plugin_transform,
            plugin_auth,
            plugin_withheld,
            plugin_calls,
            plugin_failures,
            plugin_quarantined,
            plugin_dropped,
            runner_capacity,
            runner_sandboxes,
            runner_heartbeat_age,
        }
    }
}
