//! The last lines a sandbox printed, for `GET /api/sessions/:id/logs`: the bridge's and the
//! backend program's stderr, and what the host says of the sandbox (`system` lines), in a ring
//! of at most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes. Each line's index only grows, so a
//! reader asks for what came after the last one it saw.

use std::collections::VecDeque;
use std::sync::Mutex;

use ash_core::{LogLevel, LogLine};

/// The most lines, and bytes of text, a sandbox's ring keeps (the oldest go first).
pub const MAX_LINES: usize = 1000;
pub const MAX_BYTES: usize = 256 * 1024;
/// The longest line kept; the rest of it is dropped.
pub const MAX_LINE: usize = 4096;

#[derive(Default)]
pub struct Logs(Mutex<Ring>);

#[derive(Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    next: u64,
    bytes: usize,
}

impl Logs {
    pub(crate) fn push(&self, level: LogLevel, text: &str) {
        let text = text[..text.floor_char_boundary(MAX_LINE)].to_owned();
        let mut ring = self.0.lock().expect("lock");
        ring.bytes += text.len();
        let index = ring.next;
        ring.next += 1;
        ring.lines.push_back(LogLine {
            index,
            level,
            text,
            ts: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
        while ring.lines.len() > MAX_LINES || ring.bytes > MAX_BYTES {
            let Some(old) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= old.text.len();
        }
    }

    /// The lines kept whose index is above `after` (-1: all of them).
    pub fn after(&self, after: i64) -> Vec<LogLine> {
        let ring = self.0.lock().expect("lock");
        ring.lines
            .iter()
            .filter(|line| i64::try_from(line.index).is_ok_and(|i| i > after))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ring_keeps_the_newest_lines_within_its_caps_and_indexes_only_grow() {
        let logs = Logs::default();
        for i in 0..MAX_LINES + 5 {
            logs.push(LogLevel::Stderr, &format!("line {i}"));
        }
        let kept = logs.after(-1);
        assert_eq!(kept.len(), MAX_LINES);
        assert_eq!(kept[0].index, 5);
        assert_eq!(logs.after(MAX_LINES as i64 + 2).len(), 2);
        let long = "é".repeat(MAX_LINE);
        for _ in 0..MAX_BYTES / MAX_LINE + 2 {
            logs.push(LogLevel::System, &long);
        }
        let kept = logs.after(-1);
        assert!(kept.iter().map(|l| l.text.len()).sum::<usize>() <= MAX_BYTES);
        assert!(kept.iter().all(|l| l.text.len() <= MAX_LINE));
        assert!(kept.windows(2).all(|w| w[0].index < w[1].index));
    }
}
