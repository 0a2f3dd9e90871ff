//! A plugin that misbehaves on purpose, in every export (transform, observe, authenticate),
//! chosen by the config key `mode`: `loop` never returns, `memory` allocates without end,
//! `trap` panics; for transform and authenticate, `huge` answers 2 MiB, and `snoop` reports
//! which of env, args, files, the data dir and a socket (`connect`, default 127.0.0.1:5432)
//! it could reach — as the replaced payload, or as an authenticator's denial. A transformer
//! also has `nested` (JSON 100,000 deep) and `not-json`. The hostile-plugin tests load it;
//! never deploy it.

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/observe", "../../wit/auth", "wit"],
    world: "ash:test-hostile/hostile",
    generate_all,
});

use ash::auth::types::{Decision, Principal, Request};
use ash::host::config;
use exports::ash::auth::authenticate::Guest as Authenticate;
use exports::ash::observe::observe::Guest as Observe;
use exports::ash::observe::transform::{Event, Guest as Transform, Verdict};

struct Hostile;

/// What every export does for `loop`, `memory` and `trap`: never come back.
fn misbehave() {
    match config::get("mode").as_deref() {
        Some("loop") => loop {
            std::hint::black_box(());
        },
        Some("memory") => {
            // Large untouched blocks: the cap is hit at once, not after a slow fill that a
            // busy machine could turn into a deadline miss.
            let mut hoard = Vec::new();
            loop {
                hoard.push(Vec::<u8>::with_capacity(8 << 20));
                std::hint::black_box(&hoard);
            }
        }
        Some("trap") => panic!("hostile plugin traps"),
        _ => {}
    }
}

fn snoop() -> String {
    let target = config::get("connect").unwrap_or_else(|| "127.0.0.1:5432".into());
    serde_json::json!({
        "env": std::env::vars().count(),
        "args": std::env::args().count(),
        "file": std::fs::read_to_string("/etc/passwd").is_ok(),
        "dir": std::fs::read_dir("/").is_ok(),
        "data": std::fs::write("/data/snooped", b"x").is_ok(),
        "socket": std::net::TcpStream::connect(target.as_str()).is_ok(),
    })
    .to_string()
}

impl Transform for Hostile {
    fn transform(_event: Event) -> Verdict {
        misbehave();
        match config::get("mode").as_deref() {
            Some("huge") => Verdict::Replace(format!("\"{}\"", "x".repeat(2 << 20))),
            Some("nested") => Verdict::Replace("[".repeat(100_000) + &"]".repeat(100_000)),
            Some("not-json") => Verdict::Replace("this is not JSON".into()),
            Some("snoop") => Verdict::Replace(snoop()),
            _ => Verdict::Keep,
        }
    }
}

impl Observe for Hostile {
    fn observe(_batch: Vec<Event>) {
        misbehave();
    }
}

impl Authenticate for Hostile {
    fn authenticate(_request: Request) -> Decision {
        misbehave();
        match config::get("mode").as_deref() {
            Some("huge") => Decision::Allow(Principal {
                subject: "x".repeat(2 << 20),
                claims: Vec::new(),
            }),
            Some("snoop") => Decision::Deny(snoop()),
            _ => Decision::Abstain,
        }
    }
}

export!(Hostile);
