//! A Server-Sent Events reader: turns a byte stream into `(id, event, data)` frames.

use futures_util::{Stream, StreamExt};

/// Longest SSE line accepted; a longer one ends the stream with an error.
const MAX_LINE: usize = 16 * 1024 * 1024;

/// One SSE frame.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Frame {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Reads frames from a stream of byte chunks (e.g. `reqwest::Response::bytes_stream`).
pub struct Reader<S> {
    chunks: S,
    buffer: Vec<u8>,
    frame: Frame,
}

impl<S, B, E> Reader<S>
where
    S: Stream<Item = Result<B, E>> + Unpin,
    B: AsRef<[u8]>,
    E: std::fmt::Display,
{
    pub fn new(chunks: S) -> Self {
        Self {
            chunks,
            buffer: Vec::new(),
            frame: Frame::default(),
        }
    }

    /// The next frame; `None` when the stream ends. Comments (keep-alives) are skipped.
    pub async fn next(&mut self) -> Option<Result<Frame, String>> {
        loop {
            while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line[..end])
                    .trim_end_matches('\r')
                    .to_owned();
                if let Some(frame) = self.take_line(&line) {
                    return Some(Ok(frame));
                }
            }
            if self.buffer.len() > MAX_LINE {
                return Some(Err(format!("an SSE line was longer than {MAX_LINE} bytes")));
            }
            match self.chunks.next().await? {
                Ok(chunk) => self.buffer.extend_from_slice(chunk.as_ref()),
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }

    fn take_line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let frame = std::mem::take(&mut self.frame);
            return (!frame.event.is_empty() || !frame.data.is_empty()).then(|| Frame {
                event: if frame.event.is_empty() {
                    "message".into()
                } else {
                    frame.event
                },
                ..frame
            });
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => self.frame.id = Some(value.to_owned()),
            "event" => self.frame.event = value.to_owned(),
            "data" if self.frame.data.is_empty() => self.frame.data = value.to_owned(),
            "data" => {
                self.frame.data.push('\n');
                self.frame.data.push_str(value);
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn frames(chunks: Vec<&'static str>) -> Vec<Frame> {
        let stream = futures_util::stream::iter(chunks.into_iter().map(Ok::<_, String>));
        let mut reader = Reader::new(stream);
        let mut out = Vec::new();
        while let Some(frame) = reader.next().await {
            out.push(frame.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn frames_split_across_chunks_are_joined_and_comments_skipped() {
        let got = frames(vec![
            ": keep-alive\n\nid: 1\nev",
            "ent: done\ndata: {\"a\"",
            ":1}\n\n",
        ])
        .await;
        assert_eq!(
            got,
            vec![Frame {
                id: Some("1".into()),
                event: "done".into(),
                data: "{\"a\":1}".into()
            }]
        );
    }
}
