//! Cost of plugin hooks and of instantiation, against DESIGN §6 (observe/transform hook,
//! small event, p50 ≤ 5 µs; instantiate from `InstancePre`, p99 ≤ 100 µs). Loads the real
//! first-party components; build them first with `scripts/build-plugins.sh`.
//! Run: `cargo bench -p ash-plugin-host`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ash_plugin_host::{AuthRequest, Event, OnFailure, PluginConfig, Plugins};

const CALLS: usize = 20_000;

fn load(name: &str, config: &[(&str, &str)]) -> Plugins {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/plugins")
        .join(name);
    Plugins::load(
        &[PluginConfig {
            path: dir,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            on_failure: (name == "transform-redact").then_some(OnFailure::Drop),
            data_dir: (name == "observe-audit")
                .then(|| std::env::temp_dir().join("ash-bench-audit")),
            ..PluginConfig::default()
        }],
        None,
    )
    .expect("run scripts/build-plugins.sh first")
}

/// Times `calls` runs of `f` after 1,000 warm-up runs and prints p50/p95/p99.
fn measure(what: &str, calls: usize, mut f: impl FnMut()) {
    for _ in 0..1_000 {
        f();
    }
    let mut times: Vec<Duration> = (0..calls)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    println!(
        "{what}: p50 {:.2} µs, p95 {:.2} µs, p99 {:.2} µs ({calls} runs)",
        at(0.50).as_secs_f64() * 1e6,
        at(0.95).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
    );
}

fn main() {
    let event = |text: &str| Event {
        hook: "message-out".into(),
        session_id: "00000000-0000-4000-8000-000000000000".into(),
        agent: "bench".into(),
        name: "message".into(),
        data: serde_json::json!({"type": "assistant", "message": {"role": "assistant",
            "content": [{"type": "text", "text": text}]}})
        .to_string(),
        at_ms: 0,
    };

    let redact = load("transform-redact", &[]);
    for (what, event) in [
        (
            "small event, nothing to mask (keep)",
            event("Echo: hello there"),
        ),
        (
            "small event with a key (replace)",
            event("Echo: sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345"),
        ),
    ] {
        measure(&format!("transform-redact, {what}"), CALLS, || {
            black_box(redact.transform(black_box(event.clone())));
        });
    }
    // Each run makes a new instance from the InstancePre (store, WASI context, limits,
    // instantiation); the pool is full, so the new instance is dropped again.
    measure(
        "transform-redact, instantiate from InstancePre",
        5_000,
        || {
            redact.prewarm().unwrap();
        },
    );

    let secret = "bench-secret-bench-secret";
    let jwt = load("auth-jwt", &[("hs256_secret", secret)]);
    let token = hs256_token(secret);
    let request = |authorization: String| AuthRequest {
        method: "GET".into(),
        path: "/api/sessions".into(),
        headers: vec![("authorization".into(), authorization)],
    };
    let valid = request(format!("Bearer {token}"));
    let other = request("Bearer ash_not-a-jwt".into());
    measure("auth-jwt, valid HS256 token (allow)", CALLS, || {
        black_box(jwt.authenticate(black_box(&valid)).unwrap());
    });
    measure("auth-jwt, not a JWT (abstain)", CALLS, || {
        black_box(jwt.authenticate(black_box(&other)).unwrap());
    });
    measure("auth-jwt, instantiate from InstancePre", 5_000, || {
        jwt.prewarm().unwrap();
    });

    // What the request path pays for an observer: cloning the event into its queue. The
    // queue holds 4,096; runs past what the observer thread keeps up with are dropped and
    // counted, which is the same cost.
    let audit = load("observe-audit", &[]);
    let small = event("Echo: hello there");
    measure("observe-audit, queue one small event", CALLS, || {
        audit.observe(black_box(&small));
    });
    audit.flush();
    let dropped = audit.status()[0].dropped;
    println!(
        "observe-audit: {dropped} of {} events dropped (queue full)",
        CALLS + 1_000
    );
    // How fast the observer drains: bursts that fit the queue, each waited for.
    let (bursts, burst) = (20, 4_000);
    let started = Instant::now();
    for _ in 0..bursts {
        for _ in 0..burst {
            audit.observe(&small);
        }
        audit.flush();
    }
    let per_second = f64::from(bursts * burst) / started.elapsed().as_secs_f64();
    let dropped_now = audit.status()[0].dropped - dropped;
    println!(
        "observe-audit, drained (appended to its file): {per_second:.0} events/s, {dropped_now} dropped"
    );
}

/// A JWT signed with HS256, made here so the benchmark needs no fixture.
fn hs256_token(secret: &str) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use hmac::Mac;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = URL_SAFE_NO_PAD.encode(br#"{"sub":"bench","exp":4102444800}"#);
    let signed = format!("{header}.{claims}");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signed.as_bytes());
    format!(
        "{signed}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}
