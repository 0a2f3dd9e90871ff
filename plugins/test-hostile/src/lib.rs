//! A transformer that misbehaves on purpose, chosen by the config key `mode`: `loop` never
//! returns, `memory` allocates without end, `trap` panics, `huge` returns 2 MiB, `nested`
//! returns JSON nested 100,000 deep, `not-json` returns text, and `snoop` reports which of
//! env, files and sockets it could reach. The hostile-plugin tests load it; never deploy it.

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/observe"],
    world: "ash:observe/transformer@0.1.0",
    generate_all,
});

use ash::host::config;
use exports::ash::observe::transform::{Event, Guest, Verdict};

struct Hostile;

impl Guest for Hostile {
    fn transform(_event: Event) -> Verdict {
        match config::get("mode").as_deref() {
            Some("loop") => loop {
                std::hint::black_box(());
            },
            Some("memory") => {
                let mut hoard = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("trap") => panic!("hostile plugin traps"),
            Some("huge") => Verdict::Replace(format!("\"{}\"", "x".repeat(2 << 20))),
            Some("nested") => Verdict::Replace("[".repeat(100_000) + &"]".repeat(100_000)),
            Some("not-json") => Verdict::Replace("this is not JSON".into()),
            Some("snoop") => {
                let reached = serde_json::json!({
                    "env": std::env::vars().count(),
                    "args": std::env::args().count(),
                    "file": std::fs::read_to_string("/etc/passwd").is_ok(),
                    "dir": std::fs::read_dir("/").is_ok(),
                    "socket": std::net::TcpStream::connect("127.0.0.1:5432").is_ok(),
                });
                Verdict::Replace(reached.to_string())
            }
            _ => Verdict::Keep,
        }
    }
}

export!(Hostile);
