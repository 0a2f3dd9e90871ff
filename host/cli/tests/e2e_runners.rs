//! Coordinators and runners of the real binary as separate processes on one Postgres and one
//! S3-compatible store (moto's server, a stand-in for object storage, never AWS). As root,
//! each runner lives in a network namespace of its own, joined to the host by a veth link:
//! coordinators reach it at its own address, and it reaches the database and the object store
//! through a forwarder on its link that a test can cut. Without root, runners share loopback.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use ash_store::conformance::TestSchema;
use common::{open_gate_at, s3_env, FakeS3, Server, ASH, BRIDGE, COMMAND_TOML, GATED_AGENT};
use serde_json::{json, Value};

const TOKEN: &str = "the-test-cluster-token-of-at-least-32-bytes";
const KEY: &str = "the-api-key-of-the-test-cluster";
/// A runner not heard from for this long is dead.
const TTL_MS: &str = "1500";

/// A TCP forwarder that can be cut: its connections dropped and new ones refused, as when
/// one machine loses its way to the database while the others keep it. It can also stall a
/// connection half-way: past a number of bytes sent on it, nothing more goes through.
struct Forward {
    addr: SocketAddr,
    open: Arc<tokio::sync::watch::Sender<bool>>,
    stall: Arc<tokio::sync::watch::Sender<Option<u64>>>,
    /// Told when a connection stalls.
    stalled: Arc<tokio::sync::Notify>,
}

impl Forward {
    async fn start(ip: &str, target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(tokio::sync::watch::channel(true).0);
        let stall = Arc::new(tokio::sync::watch::channel(None).0);
        let stalled = Arc::new(tokio::sync::Notify::new());
        let (gate, limit, told) = (open.clone(), stall.clone(), stalled.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let mut shut = gate.subscribe();
                if !*shut.borrow() {
                    continue;
                }
                let (limit, told) = (limit.clone(), told.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut from_client, mut to_client) = inbound.into_split();
                    let (mut from_target, mut to_target) = outbound.into_split();
                    let up = async {
                        use tokio::io::{AsyncReadExt, AsyncWriteExt};
                        let (mut sent, mut buf) = (0u64, vec![0u8; 16 * 1024]);
                        loop {
                            let n = from_client.read(&mut buf).await?;
                            if n == 0 {
                                return to_target.shutdown().await;
                            }
                            let stall_at = *limit.borrow();
                            if let Some(limit) = stall_at {
                                if sent + n as u64 > limit {
                                    let part = (limit - sent.min(limit)) as usize;
                                    to_target.write_all(&buf[..part]).await?;
                                    told.notify_one();
                                    std::future::pending::<()>().await;
                                }
                            }
                            to_target.write_all(&buf[..n]).await?;
                            sent += n as u64;
                        }
                    };
                    let down = tokio::io::copy(&mut from_target, &mut to_client);
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        _ = shut.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Self {
            addr,
            open,
            stall,
            stalled,
        }
    }

    /// From now on, each connection stalls once `bytes` have gone through it to the target.
    fn stall_after(&self, bytes: u64) {
        self.stall.send_replace(Some(bytes));
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

/// Where a runner lives: a network namespace joined by a veth pair (as root), or loopback.
struct Link {
    ns: Option<String>,
    host_ip: String,
    runner_ip: String,
}

impl Link {
    fn make(index: usize) -> Self {
        let loopback = || Link {
            ns: None,
            host_ip: "127.0.0.1".into(),
            runner_ip: "127.0.0.1".into(),
        };
        if !common::is_root() {
            return loopback();
        }
        // A /30 of 10.0.0.0/8 per runner, distinct between concurrent tests (their pids).
        let n = (std::process::id() % 1_000_000) * 4 + index as u32;
        let base = 0x0A00_0000 + n * 4;
        let ip = |offset: u32| std::net::Ipv4Addr::from(base + offset).to_string();
        let (ns, host_if) = (format!("ash-t{n}"), format!("ash{n}"));
        let (host_ip, runner_ip) = (ip(1), ip(2));
        let ip_cmd = |args: &str| {
            std::process::Command::new("ip")
                .args(args.split(' '))
                .status()
                .is_ok_and(|s| s.success())
        };
        let made = ip_cmd(&format!("netns add {ns}"))
            && ip_cmd(&format!(
                "link add {host_if} type veth peer name {host_if}r"
            ))
            && ip_cmd(&format!("link set {host_if}r netns {ns}"))
            && ip_cmd(&format!("addr add {host_ip}/30 dev {host_if}"))
            && ip_cmd(&format!("link set {host_if} up"))
            && ip_cmd(&format!(
                "netns exec {ns} ip addr add {runner_ip}/30 dev {host_if}r"
            ))
            && ip_cmd(&format!("netns exec {ns} ip link set {host_if}r up"))
            && ip_cmd(&format!("netns exec {ns} ip link set lo up"));
        if !made {
            ip_cmd(&format!("link del {host_if}"));
            ip_cmd(&format!("netns del {ns}"));
            eprintln!("cannot make a network namespace here; runners share loopback");
            return loopback();
        }
        Link {
            ns: Some(ns),
            host_ip,
            runner_ip,
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(ns) = &self.ns {
            // The veth pair goes with the namespace's end of it.
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", ns])
                .status();
        }
    }
}

/// One `ash runner` process.
struct Runner {
    child: tokio::process::Child,
    id: String,
    url: String,
    database: Forward,
    data: tempfile::TempDir,
    s3: Forward,
    _link: Link,
}

impl Runner {
    fn workspace(&self, session: &str) -> std::path::PathBuf {
        common::workspace_of(self.data.path(), self.child.id().unwrap(), session)
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
    }
}

/// A cluster: coordinators (the API) and runners on one Postgres schema and one bucket.
struct Cluster {
    coordinators: Vec<Server>,
    runners: Vec<Runner>,
    schema: TestSchema,
    s3: FakeS3,
    made: usize,
    /// More settings for every process; a runner reaches `127.0.0.1` in them at its link's
    /// host address.
    env: Vec<(&'static str, String)>,
}

impl Cluster {
    async fn start(coordinators: usize, runners: usize, capacity: usize) -> Self {
        Self::start_with(coordinators, runners, capacity, Vec::new()).await
    }

    async fn start_with(
        coordinators: usize,
        runners: usize,
        capacity: usize,
        env: Vec<(&'static str, String)>,
    ) -> Self {
        let (s3, schema) = (FakeS3::start().await, TestSchema::create().await);
        let mut cluster = Self {
            coordinators: Vec::new(),
            runners: Vec::new(),
            schema,
            s3,
            made: 0,
            env,
        };
        for _ in 0..coordinators {
            let coordinator = cluster.coordinator().await;
            cluster.coordinators.push(coordinator);
        }
        for _ in 0..runners {
            let runner = cluster.runner(capacity, TOKEN, None).await;
            cluster.wait_live(&runner.id).await;
            cluster.runners.push(runner);
        }
        cluster
    }

    async fn coordinator(&self) -> Server {
        let mut env = s3_env(&self.s3.endpoint);
        env.extend([
            ("ASH_DATABASE_URL", self.schema.url()),
            ("ASH_API_KEY", KEY.into()),
            ("ASH_CLUSTER_TOKEN", TOKEN.into()),
            ("ASH_RUNNER_TTL_MS", TTL_MS.into()),
            ("ASH_HOST", "0.0.0.0".into()),
        ]);
        env.extend(self.env.iter().cloned());
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start_with_env(&env).await
    }

    fn api(&self) -> &Server {
        &self.coordinators[0]
    }

    /// Starts a runner (on `data`, when given: the same runner again), not waiting for it to
    /// join.
    async fn runner(
        &mut self,
        capacity: usize,
        token: &str,
        data: Option<tempfile::TempDir>,
    ) -> Runner {
        let link = Link::make(self.made);
        self.made += 1;
        let port = |url: &str| url.rsplit(':').next().unwrap().to_owned();
        let database = Forward::start(&link.host_ip, "127.0.0.1:5432".parse().unwrap()).await;
        let s3_target: SocketAddr = self
            .s3
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap();
        let s3 = Forward::start(&link.host_ip, s3_target).await;
        let coordinators: Vec<String> = self
            .coordinators
            .iter()
            .map(|c| format!("http://{}:{}", link.host_ip, port(&c.url)))
            .collect();
        let data = data.unwrap_or_else(|| tempfile::tempdir().unwrap());
        let mut env = s3_env(&format!("http://{}", s3.addr));
        env.extend([
            (
                "ASH_DATABASE_URL",
                self.schema
                    .url()
                    .replace("127.0.0.1:5432", &database.addr.to_string()),
            ),
            ("ASH_CLUSTER_TOKEN", token.into()),
            ("ASH_DATA_DIR", data.path().display().to_string()),
            ("ASH_BRIDGE_BIN", BRIDGE.into()),
        ]);
        env.extend(
            self.env
                .iter()
                .map(|(k, v)| (*k, v.replace("127.0.0.1", &link.host_ip))),
        );
        let capacity = capacity.to_string();
        let args = [
            "runner",
            "--host",
            &link.runner_ip,
            "--port",
            "0",
            "--max-sandboxes",
            &capacity,
            "--coordinator",
            &coordinators.join(","),
        ];
        let mut command = match &link.ns {
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns, ASH]);
                c
            }
            None => tokio::process::Command::new(ASH),
        };
        command
            .args(args)
            .envs(env)
            .env_remove("ASH_API_KEY")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let (url, _) = common::listening(&mut child).await;
        let id = std::fs::read_to_string(data.path().join("node-id"))
            .unwrap()
            .trim()
            .to_owned();
        Runner {
            child,
            id,
            url,
            database,
            data,
            s3,
            _link: link,
        }
    }

    /// The runners as the first coordinator lists them.
    async fn listed(&self) -> Vec<Value> {
        let (status, body) = self.api().get("/api/runners").await;
        assert_eq!(status, 200, "{body}");
        body["runners"].as_array().unwrap().clone()
    }

    /// Waits until runner `id` is listed in `state`.
    async fn wait_state(&self, id: &str, state: &str) -> Value {
        tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(r) = self
                    .listed()
                    .await
                    .into_iter()
                    .find(|r| r["id"] == id && r["state"] == state)
                {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("runner {id} never became {state}"))
    }

    async fn wait_live(&self, id: &str) -> Value {
        self.wait_state(id, "live").await
    }

    fn runner_of(&self, id: &str) -> &Runner {
        self.runners
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no runner {id}"))
    }

    /// The runner a session is on, by the database.
    async fn holder(&self, session: &str) -> String {
        let (_, body) = self.api().get(&format!("/api/sessions/{session}")).await;
        body["session"]["runnerId"]
            .as_str()
            .expect("a session in a cluster has a runner")
            .to_owned()
    }

    /// Calls a runner directly with `token`.
    async fn call_runner(runner: &Runner, path: &str, token: Option<&str>) -> u16 {
        let mut request = reqwest::Client::new().get(format!("{}{path}", runner.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap().status().as_u16()
    }

    /// The count of an outcome of a counter on a runner (its metrics are behind the token).
    async fn runner_counted(runner: &Runner, name: &str, outcome: &str) -> u64 {
        Self::runner_metric(runner, &format!("{name}{{outcome=\"{outcome}\"}}")).await
    }

    /// The value of a series (`name{labels}`) on a runner.
    async fn runner_metric(runner: &Runner, series: &str) -> u64 {
        let text = reqwest::Client::new()
            .get(format!("{}/metrics", runner.url))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let wanted = format!("{series} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&wanted)?.parse().ok())
            .unwrap_or(0)
    }

    /// A `hello-agent` session whose workspace got `command`'s files and whose turn after it
    /// is in the snapshot store; returns it and its runner's id.
    async fn session_with_snapshot(&self, command: &str) -> (String, String) {
        let api = self.api();
        let session = api.session("hello-agent").await;
        api.exec(&session, command).await;
        let frames = api.message(&session, "before").await;
        assert_eq!(common::events(&frames).last(), Some(&"done"));
        let first = self.holder(&session).await;
        let holder = self.runner_of(&first);
        tokio::time::timeout(Duration::from_secs(30), async {
            while Self::runner_counted(holder, "ash_snapshot_uploads_total", "ok").await == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the turn's snapshot is stored");
        (session, first)
    }

    /// SIGKILLs runner `id` and waits until a coordinator has declared it dead.
    async fn kill_runner(&mut self, id: &str) {
        let index = self.runners.iter().position(|r| r.id == id).unwrap();
        self.runners[index].child.start_kill().unwrap();
        self.runners[index].child.wait().await.unwrap();
        self.wait_state(id, "dead").await;
    }

    async fn drop_all(self) {
        let Cluster {
            coordinators,
            runners,
            schema,
            s3,
            ..
        } = self;
        drop((runners, coordinators, s3));
        schema.drop().await;
    }
}

async fn gated_session(api: &Server) -> String {
    let files = [("agent.sh", GATED_AGENT), ("ash.toml", COMMAND_TOML)];
    let (status, body) = api.deploy("gated", &files).await;
    assert!(status == 201 || status == 200, "{body}");
    api.session("gated").await
}

fn ids(frames: &[ash_cli::sse::Frame]) -> Vec<i64> {
    frames
        .iter()
        .filter_map(|f| f.id.as_deref()?.parse().ok())
        .collect()
}

fn says(frame: &ash_cli::sse::Frame, text: &str) -> bool {
    frame.event == "message" && frame.data.contains(text)
}

#[tokio::test]
async fn sessions_go_to_the_least_loaded_runner_spill_over_when_full_and_get_503_when_none_is_left()
{
    let cluster = Cluster::start(2, 3, 2).await;
    let api = cluster.api();
    let mut placed = Vec::new();
    for _ in 0..3 {
        let session = api.session("hello-agent").await;
        placed.push(cluster.holder(&session).await);
    }
    placed.sort();
    placed.dedup();
    assert_eq!(
        placed.len(),
        3,
        "three sessions on three empty runners: one each"
    );
    // Through the other coordinator: each runner has one of its two places left.
    for _ in 0..3 {
        cluster.coordinators[1].session("hello-agent").await;
    }
    let listed = cluster.listed().await;
    assert!(listed.iter().all(|r| r["sandboxes"] == 2), "{listed:?}");
    let (status, body) = api
        .post("/api/sessions", json!({"agent": "hello-agent"}))
        .await;
    assert_eq!(status, 503, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("3 full"), "{error}");
    // A session that ends frees its place.
    let (_, sessions) = api.get("/api/sessions").await;
    let first = sessions["sessions"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = api.delete(&format!("/api/sessions/{first}")).await;
    assert_eq!(status, 200);
    let runner = cluster.holder(&first).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let (status, _) = api
                .post("/api/sessions", json!({"agent": "hello-agent"}))
                .await;
            if status == 201 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the freed place is taken again once the runner's heartbeat reports it");
    let (_, all) = api.get("/api/sessions").await;
    assert_eq!(all["sessions"][0]["runnerId"], runner.as_str());
    cluster.drop_all().await;
}

#[tokio::test]
async fn with_no_runner_a_new_session_gets_503_saying_why() {
    let cluster = Cluster::start(1, 0, 2).await;
    let (status, body) = cluster
        .api()
        .post("/api/sessions", json!({"agent": "hello-agent"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no runner is registered"),
        "{body}"
    );
    let (_, health) = cluster.api().get("/health").await;
    assert_eq!(health["remoteRunners"], 0);
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_client_resumes_through_the_other_coordinator_after_one_is_killed_mid_turn() {
    let mut cluster = Cluster::start(2, 1, 4).await;
    let session = gated_session(cluster.api()).await;
    let runner = cluster.holder(&session).await;
    let mut stream = cluster
        .api()
        .open_stream(&session, json!({"content": "go"}))
        .await;
    let first = Server::read_until(&mut stream, |f| says(f, "started")).await;
    cluster.coordinators[0].kill().await;
    let last = *ids(&first).last().unwrap();
    let mut rest_stream = cluster.coordinators[1]
        .open_log_stream(&session, Some(last))
        .await;
    open_gate_at(&cluster.runner_of(&runner).workspace(&session)).await;
    let rest = Server::read_until(&mut rest_stream, |f| f.event == "done").await;
    assert!(says(&rest[0], "finished"), "{rest:?}");
    let mut all = ids(&first);
    all.extend(ids(&rest));
    let expected: Vec<i64> = (all[0]..all[0] + all.len() as i64).collect();
    assert_eq!(
        all, expected,
        "no gap and no duplicate across the coordinators"
    );
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_runner_killed_mid_turn_ends_the_turn_and_its_session_goes_on_elsewhere_with_its_files_and_conversation(
) {
    let mut cluster = Cluster::start(2, 2, 4).await;
    let session = gated_session(cluster.api()).await;
    let first = cluster.holder(&session).await;
    cluster.api().exec(&session, "echo kept > notes.txt").await;
    let holder = cluster.runner_of(&first);
    let uploaded = Cluster::runner_counted(holder, "ash_snapshot_uploads_total", "ok").await;
    let mut stream = cluster
        .api()
        .open_stream(&session, json!({"content": "remember this"}))
        .await;
    Server::read_until(&mut stream, |f| says(f, "started")).await;
    open_gate_at(&holder.workspace(&session)).await;
    Server::read_until(&mut stream, |f| f.event == "done").await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while Cluster::runner_counted(holder, "ash_snapshot_uploads_total", "ok").await <= uploaded
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the completed turn's snapshot is stored");
    // The next turn is under way when its runner dies.
    let mut stream = cluster
        .api()
        .open_stream(&session, json!({"content": "and then"}))
        .await;
    let begun = Server::read_until(&mut stream, |f| says(f, "started")).await;
    cluster.kill_runner(&first).await;
    // Declared dead, it has left the turn ended: the client reconnects after what it saw and
    // gets the turn's end.
    let last = *ids(&begun).last().unwrap();
    let mut again = cluster.coordinators[1]
        .open_log_stream(&session, Some(last))
        .await;
    let end = Server::read_until(&mut again, |f| f.event == "done").await;
    let kinds: Vec<_> = end.iter().map(|f| f.event.as_str()).collect();
    assert_eq!(kinds, ["error", "done"], "{end:?}");
    assert!(end[0].data.contains("declared dead"), "{end:?}");
    // Its next message starts it on the other runner, with its files and its conversation.
    let mut stream = cluster
        .api()
        .open_stream(&session, json!({"content": "still there?"}))
        .await;
    Server::read_until(&mut stream, |f| says(f, "started")).await;
    let now = cluster.holder(&session).await;
    assert_ne!(now, first);
    open_gate_at(&cluster.runner_of(&now).workspace(&session)).await;
    Server::read_until(&mut stream, |f| f.event == "done").await;
    let out = cluster.api().exec(&session, "cat notes.txt").await;
    assert_eq!(out["stdout"], "kept\n", "{out}");
    let (_, messages) = cluster
        .api()
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    let said = messages.to_string();
    assert!(
        said.contains("remember this") && said.contains("finished"),
        "{said}"
    );
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_runner_drains_on_sigterm_handing_its_sessions_back_with_their_files() {
    let mut cluster = Cluster::start(1, 2, 4).await;
    let session = cluster.api().session("hello-agent").await;
    let first = cluster.holder(&session).await;
    // Written with no turn after it: only the drain's own snapshot can carry it.
    cluster
        .api()
        .exec(&session, "echo handed-back > notes.txt")
        .await;
    let index = cluster.runners.iter().position(|r| r.id == first).unwrap();
    cluster.runners[index].signal("-TERM");
    let status = cluster.runners[index].child.wait().await.unwrap();
    assert!(
        status.success(),
        "the runner exits cleanly after its drain: {status}"
    );
    assert!(
        cluster
            .listed()
            .await
            .iter()
            .all(|r| r["id"] != first.as_str()),
        "it left the registry"
    );
    let frames = cluster.api().message(&session, "hello again").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"));
    assert_ne!(cluster.holder(&session).await, first);
    let out = cluster.api().exec(&session, "cat notes.txt").await;
    assert_eq!(out["stdout"], "handed-back\n", "{out}");
    cluster.drop_all().await;
}

#[tokio::test]
async fn runners_and_coordinators_refuse_each_other_without_the_cluster_token() {
    let mut cluster = Cluster::start(1, 1, 2).await;
    let good = &cluster.runners[0];
    // A runner serves coordinators only: nothing without the token, the control with it.
    assert_eq!(Cluster::call_runner(good, "/health", None).await, 401);
    assert_eq!(
        Cluster::call_runner(
            good,
            "/api/sessions",
            Some("not-the-token-but-long-enough-to-try-it")
        )
        .await,
        401
    );
    assert_eq!(
        Cluster::call_runner(good, "/health", Some(TOKEN)).await,
        200
    );
    // A coordinator refuses a runner with a wrong token: it never joins.
    let refused_before = auth_failures(cluster.api()).await;
    let stranger = cluster
        .runner(2, "a-wrong-cluster-token-that-is-long-enough", None)
        .await;
    tokio::time::timeout(Duration::from_secs(30), async {
        while auth_failures(cluster.api()).await <= refused_before {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the coordinator refused the stranger's registration");
    let listed = cluster.listed().await;
    assert!(
        listed.iter().all(|r| r["id"] != stranger.id.as_str()),
        "{listed:?}"
    );
    assert_eq!(listed.len(), 1, "the control, with the token, is there");
    drop(stranger);
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_bad_registration_or_heartbeat_gets_a_clear_error_and_the_registry_keeps_serving() {
    let cluster = Cluster::start(1, 1, 2).await;
    let url = format!("{}/internal/v1/runners", cluster.api().url);
    let client = reqwest::Client::new();
    let bodies = [
        json!({"id": "", "address": "http://10.0.0.1:1", "capacity": 1}),
        json!({"id": "a/b", "address": "http://10.0.0.1:1", "capacity": 1}),
        json!({"id": "r", "address": "ftp://10.0.0.1:1", "capacity": 1}),
        json!({"id": "r", "address": "http://10.0.0.1:1", "capacity": 0}),
        json!({"id": "r", "address": "x".repeat(600), "capacity": 1}),
    ];
    for body in bodies {
        let reply = client
            .post(&url)
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), 400, "{body}");
        let error: Value = reply.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("a runner needs"),
            "{error}"
        );
    }
    let garbage = client
        .post(&url)
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(garbage.status(), 400);
    let beat = client
        .post(format!("{url}/no-such-runner/heartbeat"))
        .bearer_auth(TOKEN)
        .json(&json!({"generation": 1, "sandboxes": 0, "running": 0, "draining": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 404, "an unknown runner is told to register");
    // The control: the registered runner is untouched and live.
    let listed = cluster.listed().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    cluster.wait_live(&cluster.runners[0].id).await;
    cluster.drop_all().await;
}

async fn auth_failures(server: &Server) -> u64 {
    let metrics = server.metrics().await;
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("ash_auth_failures_total ")?.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_runner_registering_again_under_a_live_runners_id_replaces_it_and_the_first_stops() {
    let mut cluster = Cluster::start(1, 1, 2).await;
    let (id, first_url) = (
        cluster.runners[0].id.clone(),
        cluster.runners[0].url.clone(),
    );
    let copy = tempfile::tempdir().unwrap();
    std::fs::write(copy.path().join("node-id"), &id).unwrap();
    let second = cluster.runner(2, TOKEN, Some(copy)).await;
    assert_eq!(second.id, id);
    let status = tokio::time::timeout(Duration::from_secs(30), cluster.runners[0].child.wait())
        .await
        .expect("the replaced runner stops")
        .unwrap();
    assert!(status.success(), "{status}");
    let listed = cluster.wait_live(&id).await;
    assert_eq!(listed["address"], second.url.as_str());
    assert_ne!(second.url, first_url);
    drop(second);
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_runner_declared_dead_is_refused_its_heartbeat_fences_and_joins_again() {
    let cluster = Cluster::start(1, 1, 2).await;
    let runner = &cluster.runners[0];
    let api = cluster.api();
    let session = api.session("hello-agent").await;
    let frames = api.message(&session, "before").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"));
    // Frozen past its time to live: declared dead, then it wakes and heartbeats.
    runner.signal("-STOP");
    cluster.wait_state(&runner.id, "dead").await;
    runner.signal("-CONT");
    let again = cluster.wait_live(&runner.id).await;
    assert!(again["heartbeatAgeMs"].as_u64().unwrap() < 1500, "{again}");
    // Its session goes on there, in a new sandbox over the workspace it kept.
    let frames = api.message(&session, "after").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"));
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_runner_that_loses_the_database_is_declared_dead_while_the_others_keep_serving() {
    let cluster = Cluster::start(1, 2, 4).await;
    let api = cluster.api();
    let (session, first) = cluster.session_with_snapshot("echo kept > notes.txt").await;
    let holder = cluster.runner_of(&first);
    holder.database.cut();
    cluster.wait_state(&first, "dead").await;
    let other = cluster.runners.iter().find(|r| r.id != first).unwrap();
    assert_eq!(
        cluster
            .listed()
            .await
            .iter()
            .find(|r| r["id"] == other.id.as_str())
            .unwrap()["state"],
        "live"
    );
    let frames = api.message(&session, "after").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"), "{frames:?}");
    assert_eq!(cluster.holder(&session).await, other.id);
    let out = api.exec(&session, "cat notes.txt").await;
    assert_eq!(out["stdout"], "kept\n", "{out}");
    // With the database back, it joins again.
    holder.database.restore();
    cluster.wait_live(&first).await;
    cluster.drop_all().await;
}

/// Waits until a runner's series has the value `want`.
async fn runner_shows(runner: &Runner, series: &str, want: u64) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while Cluster::runner_metric(runner, series).await != want {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("runner {} never showed {series} {want}", runner.id));
}

#[tokio::test]
async fn a_runner_on_another_machine_gets_agents_from_the_snapshot_store_and_hears_of_each_deploy_and_delete(
) {
    let cluster = Cluster::start(1, 1, 4).await;
    let (api, runner) = (cluster.api(), &cluster.runners[0]);
    let folder = &api.data.path().join("agents/carried");
    let deploy = |file: &'static str| async move {
        let files = [("ash.toml", "[pool]\nprewarm = 1\n"), (file, "x")];
        let (status, body) = api.deploy("carried", &files).await;
        assert_eq!(status, 201, "{body}");
        // The deploy wrote the folder on the coordinator's machine; the runner's is another.
        assert!(folder.is_dir());
        std::fs::remove_dir_all(folder).unwrap();
    };
    deploy("v1.txt").await;
    // The runner heard of the deploy: it warms a sandbox of it.
    runner_shows(runner, "ash_pool_sandboxes{state=\"warm\"}", 1).await;
    let first = api.session("carried").await;
    let listed = api.exec(&first, "ls").await["stdout"].to_string();
    assert!(listed.contains("v1.txt"), "{listed}");
    // A new version reaches it too, and its warm sandbox is of that version.
    deploy("v2.txt").await;
    let second = api.session("carried").await;
    let listed = api.exec(&second, "ls").await["stdout"].to_string();
    assert!(
        listed.contains("v2.txt") && !listed.contains("v1.txt"),
        "{listed}"
    );
    runner_shows(runner, "ash_pool_sandboxes{state=\"warm\"}", 1).await;
    assert_eq!(
        Cluster::runner_metric(runner, "ash_active_sandboxes").await,
        3
    );

    // Control: with its way to the snapshot store cut, the runner cannot start an agent it
    // has not fetched, and says why; once the way is back, it can.
    runner.s3.cut();
    let (status, body) = api.deploy("unfetched", &[("a.txt", "a")]).await;
    assert_eq!(status, 201, "{body}");
    std::fs::remove_dir_all(api.data.path().join("agents/unfetched")).unwrap();
    let (status, body) = api
        .post("/api/sessions", json!({"agent": "unfetched"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("snapshot store"),
        "{body}"
    );
    runner.s3.restore();
    let (status, body) = api
        .post("/api/sessions", json!({"agent": "unfetched"}))
        .await;
    assert_eq!(status, 201, "{body}");

    // Deleting the agent stops its sessions' sandboxes and its warm one on the runner.
    let before = Cluster::runner_metric(runner, "ash_active_sandboxes").await;
    let (status, body) = api.delete("/api/agents/carried").await;
    assert_eq!(status, 200, "{body}");
    runner_shows(runner, "ash_active_sandboxes", before - 3).await;
    assert!(!runner.workspace(&first).exists() && !runner.workspace(&second).exists());
    assert!(!runner.data.path().join("fetched-agents/carried").exists());
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_snapshot_upload_cut_off_half_way_leaves_the_last_good_snapshot_for_the_next_runner() {
    let mut cluster = Cluster::start(1, 2, 4).await;
    let api = cluster.api();
    let (session, first) = cluster.session_with_snapshot("echo good > notes.txt").await;
    let holder = cluster.runner_of(&first);
    // The next snapshot is 2 MB that does not compress; its upload stops at 64 KiB.
    holder.s3.stall_after(64 * 1024);
    api.exec(
        &session,
        "echo newer > notes.txt && head -c 2000000 /dev/urandom > big.bin",
    )
    .await;
    let frames = api.message(&session, "second").await;
    assert_eq!(
        common::events(&frames).last(),
        Some(&"done"),
        "a stalled upload held up the turn: {frames:?}"
    );
    tokio::time::timeout(Duration::from_secs(30), holder.s3.stalled.notified())
        .await
        .expect("the upload reached the store in part");
    cluster.kill_runner(&first).await;
    // The other runner starts the session from the last snapshot stored whole.
    let frames = cluster.api().message(&session, "third").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"), "{frames:?}");
    assert_ne!(cluster.holder(&session).await, first);
    let out = cluster
        .api()
        .exec(&session, "cat notes.txt; ls big.bin 2>&1 || true")
        .await;
    let out = out["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("good\n") && out.contains("No such file"),
        "{out}"
    );
    cluster.drop_all().await;
}

/// One span as an OTLP receiver got it.
#[derive(Debug, Clone)]
struct Received {
    role: String,
    name: String,
    trace: String,
    id: String,
    parent: String,
}

/// An OTLP/HTTP receiver (protobuf, `POST /v1/traces`) on a free port of every address.
async fn otlp_receiver() -> (u16, Arc<std::sync::Mutex<Vec<Received>>>) {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message;
    let got = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = got.clone();
    let hex = |b: &[u8]| b.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| async move {
            let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
            for batch in request.resource_spans {
                let role = batch
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|a| a.key == "ash.role")
                    .and_then(|a| match a.value.as_ref()?.value.as_ref()? {
                        Any::StringValue(role) => Some(role.clone()),
                        _ => None,
                    })
                    .unwrap_or_default();
                for span in batch.scope_spans.into_iter().flat_map(|s| s.spans) {
                    sink.lock().unwrap().push(Received {
                        role: role.clone(),
                        name: span.name,
                        trace: hex(&span.trace_id),
                        id: hex(&span.span_id),
                        parent: hex(&span.parent_span_id),
                    });
                }
            }
            (
                [("content-type", "application/x-protobuf")],
                Vec::<u8>::new(),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (port, got)
}

/// An agent whose answer is the trace context its query came with.
const TRACE_AGENT: &str = r#"#!/bin/sh
while IFS= read -r line; do
  id=$(printf '%s\n' "$line" | sed -n 's/^{"cmd":"query","id":"\([^"]*\)".*/\1/p')
  [ -n "$id" ] || continue
  tp=$(printf '%s\n' "$line" | sed -n 's/.*"traceparent":"\([^"]*\)".*/\1/p')
  printf '{"ev":"message","id":"%s","data":{"type":"assistant","message":{"role":"assistant","content":[{"type":"text","text":"trace %s"}]}}}\n' "$id" "$tp"
  printf '{"ev":"done","id":"%s"}\n' "$id"
done
"#;

#[tokio::test]
async fn one_trace_goes_from_the_coordinator_through_the_runner_to_the_bridge() {
    let (port, got) = otlp_receiver().await;
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{port}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ];
    let cluster = Cluster::start_with(1, 1, 4, env).await;
    let api = cluster.api();
    let files = [("agent.sh", TRACE_AGENT), ("ash.toml", COMMAND_TOML)];
    assert_eq!(api.deploy("traced", &files).await.0, 201);
    let session = api.session("traced").await;
    let said = common::assistant_text(&api.message(&session, "which trace?").await);
    // The bridge handed the agent the turn's context: 00-<trace>-<span>-<flags>.
    let parts: Vec<&str> = said.trim_start_matches("trace ").split('-').collect();
    assert_eq!(parts.len(), 4, "the agent got no trace context: {said:?}");
    let (trace, turn_id) = (parts[1].to_owned(), parts[2].to_owned());
    let find = |want: &dyn Fn(&Received) -> bool| -> Received {
        got.lock()
            .unwrap()
            .iter()
            .find(|s| want(s))
            .cloned()
            .unwrap()
    };
    let is_send =
        |s: &Received| s.name.starts_with("POST /api/sessions/") && s.name.ends_with("/messages");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let spans = got.lock().unwrap().clone();
            let has = |role: &str, name: &dyn Fn(&Received) -> bool| {
                spans
                    .iter()
                    .any(|s| s.role == role && s.trace == trace && name(s))
            };
            if has("server", &is_send)
                && has("runner", &is_send)
                && has("runner", &|s| s.name == "turn")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "spans of trace {trace} never arrived: {:?}",
            got.lock().unwrap()
        )
    });
    let coordinator = find(&|s| s.role == "server" && s.trace == trace && is_send(s));
    let runner = find(&|s| s.role == "runner" && s.trace == trace && is_send(s));
    let turn = find(&|s| s.role == "runner" && s.trace == trace && s.name == "turn");
    assert_eq!(
        runner.parent, coordinator.id,
        "the runner's span continues the coordinator's"
    );
    assert_eq!(turn.parent, runner.id);
    assert_eq!(turn.id, turn_id, "the bridge got the turn's own span");
    // Control: another request is another trace.
    let create = find(&|s| s.role == "server" && s.name == "POST /api/sessions");
    assert_ne!(create.trace, trace);
    cluster.drop_all().await;
}

#[tokio::test]
async fn with_the_snapshot_store_out_of_reach_a_moved_session_waits_with_503_and_then_goes_on_with_its_files(
) {
    let mut cluster = Cluster::start(1, 2, 4).await;
    let (session, first) = cluster.session_with_snapshot("echo kept > notes.txt").await;
    cluster.kill_runner(&first).await;
    // The other runner cannot reach the store that holds the session's files.
    let other = cluster.runners.iter().find(|r| r.id != first).unwrap();
    other.s3.cut();
    let (status, body) = cluster
        .api()
        .post(
            &format!("/api/sessions/{session}/messages"),
            json!({"content": "now?"}),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("snapshot store, which cannot be reached"),
        "{body}"
    );
    // Nothing was lost meanwhile: once the store is back, the session goes on with its files
    // and its whole conversation.
    other.s3.restore();
    let frames = cluster.api().message(&session, "now").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"), "{frames:?}");
    let out = cluster.api().exec(&session, "cat notes.txt").await;
    assert_eq!(out["stdout"], "kept\n", "{out}");
    let (_, messages) = cluster
        .api()
        .get(&format!("/api/sessions/{session}/messages"))
        .await;
    let said = messages.to_string();
    assert!(said.contains("before") && said.contains("now"), "{said}");
    cluster.drop_all().await;
}

#[tokio::test]
async fn a_node_without_a_shared_snapshot_store_or_with_a_short_token_refuses_to_start() {
    let schema = TestSchema::create().await;
    let data = tempfile::tempdir().unwrap();
    let base = [
        ("ASH_DATABASE_URL", schema.url()),
        ("ASH_DATA_DIR", data.path().display().to_string()),
        ("ASH_CLUSTER_TOKEN", TOKEN.to_owned()),
    ];
    for args in [
        &["start", "--port", "0"][..],
        &[
            "runner",
            "--port",
            "0",
            "--coordinator",
            "http://127.0.0.1:9",
        ],
    ] {
        let (ok, said) = common::refused(args, &base).await;
        assert!(
            !ok && said.contains("one snapshot store"),
            "{args:?}: {said}"
        );
    }
    let mut short = base.to_vec();
    short[2].1 = "too-short".into();
    short.push((
        "ASH_SNAPSHOT_STORE",
        data.path().join("store").display().to_string(),
    ));
    let (ok, said) = common::refused(&["start", "--port", "0"], &short).await;
    assert!(!ok && said.contains("32"), "{said}");
    schema.drop().await;
}

#[tokio::test]
async fn an_agent_deployed_through_one_coordinator_is_changed_through_the_other() {
    let cluster = Cluster::start(2, 1, 4).await;
    let (a, b, runner) = (
        &cluster.coordinators[0],
        &cluster.coordinators[1],
        &cluster.runners[0],
    );
    let (status, body) = a.deploy("shared", &[("v1.txt", "1")]).await;
    assert_eq!(status, 201, "{body}");
    // The other coordinator has no folder of it: what it changes comes from the store.
    assert!(!b.data.path().join("agents/shared").exists());
    let (status, body) = b
        .call(
            reqwest::Method::PATCH,
            "/api/agents/shared",
            Some(json!({"env": {"GREETING": "from-b"}, "config": {"preWarmCount": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["agent"]["version"], 2);
    // The runner heard of it from that coordinator: its pool holds the new version.
    runner_shows(runner, "ash_pool_sandboxes{state=\"warm\"}", 1).await;
    let session = b.session("shared").await;
    let out = b.exec(&session, "echo $GREETING; ls").await;
    let out = out["stdout"].as_str().unwrap();
    assert!(
        out.starts_with("from-b\n") && out.contains("v1.txt"),
        "{out}"
    );

    // Its files and named versions too: a file written through B (into the version it has
    // only in the store) is read through A, and a session started through B begins with it
    // and with the prompt of the version A activates.
    use base64::Engine;
    let content = base64::engine::general_purpose::STANDARD.encode("3");
    let (status, body) = b
        .post(
            "/api/agents/shared/files",
            json!({"files": [{"path": "v3.txt", "content": content}]}),
        )
        .await;
    assert_eq!((status, &body["version"]), (200, &json!(3)), "{body}");
    let (_, listed) = a.get("/api/agents/shared/files").await;
    assert!(listed.to_string().contains("v3.txt"), "{listed}");
    let (status, body) = a
        .post(
            "/api/agents/shared/versions",
            json!({"systemPrompt": "from a"}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    a.post("/api/agents/shared/versions/1/activate", json!({}))
        .await;
    let later = b.session("shared").await;
    assert_eq!(
        b.exec(&later, "cat v3.txt CLAUDE.md").await["stdout"],
        "3from a"
    );
    cluster.drop_all().await;
}

#[tokio::test]
async fn files_written_through_the_api_reach_the_snapshot_store_and_outlive_their_runner() {
    use base64::Engine;
    let mut cluster = Cluster::start(1, 2, 4).await;
    let (session, first) = cluster.session_with_snapshot("true").await;
    let holder = cluster.runner_of(&first);
    let stored = Cluster::runner_counted(holder, "ash_snapshot_uploads_total", "ok").await;
    let content = base64::engine::general_purpose::STANDARD.encode("from the api\n");
    let (status, body) = cluster
        .api()
        .post(
            &format!("/api/sessions/{session}/files"),
            json!({"files": [{"path": "uploaded.txt", "content": content}]}),
        )
        .await;
    assert_eq!(
        (status, &body["files"][0]["written"]),
        (200, &json!(true)),
        "{body}"
    );
    // No turn follows, yet the write goes to the store.
    tokio::time::timeout(Duration::from_secs(30), async {
        while Cluster::runner_counted(holder, "ash_snapshot_uploads_total", "ok").await <= stored {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the written file's snapshot is stored");
    cluster.kill_runner(&first).await;
    let frames = cluster.api().message(&session, "still there?").await;
    assert_eq!(common::events(&frames).last(), Some(&"done"), "{frames:?}");
    assert_ne!(cluster.holder(&session).await, first);
    let out = cluster.api().exec(&session, "cat uploaded.txt").await;
    assert_eq!(out["stdout"], "from the api\n", "{out}");
    cluster.drop_all().await;
}
