use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line either side accepts: 8 MiB, room for a large tool result.
pub const MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Why a line could not be read as a message.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("line longer than {max} bytes was skipped")]
    LineTooLong { max: usize },
    #[error("line is not a valid bridge message: {0}")]
    Malformed(String),
    #[error("bridge connection failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Serialises one message as a single line, newline included.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("protocol messages always serialise");
    line.push(b'\n');
    line
}

/// Reads newline-delimited messages with a per-line size cap.
pub struct LineReader<R> {
    inner: R,
    max: usize,
    line: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> LineReader<R> {
    /// A reader that skips (and reports) lines longer than `max` bytes.
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            max,
            line: Vec::new(),
        }
    }

    /// The next message; `None` at end of stream. Blank lines are skipped. After a
    /// `LineTooLong` or `Malformed` error the reader is positioned at the next line;
    /// after an `Io` error it should be dropped.
    pub async fn next<T: DeserializeOwned>(&mut self) -> Option<Result<T, ProtocolError>> {
        loop {
            match self.read_line().await {
                Ok(None) => return None,
                Ok(Some(false)) => return Some(Err(ProtocolError::LineTooLong { max: self.max })),
                Ok(Some(true)) if self.line.iter().all(u8::is_ascii_whitespace) => continue,
                Ok(Some(true)) => {
                    let parsed = serde_json::from_slice(&self.line);
                    return Some(parsed.map_err(|e| ProtocolError::Malformed(e.to_string())));
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// Reads one line into `self.line`; `Some(false)` when it was over the cap.
    async fn read_line(&mut self) -> std::io::Result<Option<bool>> {
        self.line.clear();
        let mut fits = true;
        let mut read_any = false;
        loop {
            let chunk = self.inner.fill_buf().await?;
            if chunk.is_empty() {
                return Ok(read_any.then_some(fits));
            }
            read_any = true;
            let newline = chunk.iter().position(|&b| b == b'\n');
            let part = &chunk[..newline.unwrap_or(chunk.len())];
            if fits && self.line.len() + part.len() <= self.max {
                self.line.extend_from_slice(part);
            } else {
                fits = false;
                self.line.clear();
            }
            let used = part.len() + usize::from(newline.is_some());
            self.inner.consume(used);
            if newline.is_some() {
                return Ok(Some(fits));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    async fn read_all(input: &[u8], max: usize) -> Vec<Result<Event, String>> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(item) = reader.next::<Event>().await {
            out.push(item.map_err(|e| e.to_string()));
        }
        out
    }

    #[tokio::test]
    async fn reads_each_line_as_one_message() {
        let input = [
            encode(&Event::Done { id: "1".into() }),
            encode(&Event::Done { id: "2".into() }),
        ]
        .concat();
        let got = read_all(&input, 100).await;
        assert_eq!(
            got,
            vec![
                Ok(Event::Done { id: "1".into() }),
                Ok(Event::Done { id: "2".into() })
            ]
        );
    }

    #[tokio::test]
    async fn oversized_line_is_skipped_and_the_next_line_still_reads() {
        let big = format!("{{\"ev\":\"done\",\"id\":\"{}\"}}\n", "x".repeat(500));
        let input = [big.as_bytes(), &encode(&Event::Done { id: "ok".into() })].concat();
        let got = read_all(&input, 100).await;
        assert_eq!(got[0], Err("line longer than 100 bytes was skipped".into()));
        assert_eq!(got[1], Ok(Event::Done { id: "ok".into() }));
    }

    #[tokio::test]
    async fn garbage_line_is_an_error_not_the_end() {
        let input = [
            b"not json\n\n".as_slice(),
            &encode(&Event::Done { id: "a".into() }),
        ]
        .concat();
        let got = read_all(&input, 100).await;
        assert!(got[0]
            .as_ref()
            .unwrap_err()
            .starts_with("line is not a valid bridge message"));
        assert_eq!(got[1], Ok(Event::Done { id: "a".into() }));
        assert_eq!(got.len(), 2);
    }

    #[tokio::test]
    async fn last_line_without_newline_is_read() {
        let got = read_all(br#"{"ev":"done","id":"z"}"#, 100).await;
        assert_eq!(got, vec![Ok(Event::Done { id: "z".into() })]);
    }

    #[tokio::test]
    async fn line_split_across_small_reads_is_reassembled() {
        let line = encode(&Event::Log {
            level: "stderr".into(),
            text: "y".repeat(300),
        });
        let reader = tokio::io::BufReader::with_capacity(16, line.as_slice());
        let mut reader = LineReader::new(reader, 1000);
        assert!(matches!(
            reader.next::<Event>().await,
            Some(Ok(Event::Log { .. }))
        ));
    }
}
