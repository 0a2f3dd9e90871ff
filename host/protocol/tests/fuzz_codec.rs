//! Property tests of the NDJSON codec: arbitrary bytes never panic it, every line is
//! accounted for, and valid messages survive any split into reads.

use ash_protocol::{encode, Command, Event, LineReader, ProtocolError, QueryOptions};
use proptest::prelude::*;
use serde_json::Value;

fn read_all<T: serde::de::DeserializeOwned>(
    input: &[u8],
    max: usize,
    chunk: usize,
) -> Vec<Result<T, String>> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    runtime.block_on(async {
        let reader = tokio::io::BufReader::with_capacity(chunk.max(1), input);
        let mut lines = LineReader::new(reader, max);
        let mut out = Vec::new();
        while let Some(item) = lines.next::<T>().await {
            out.push(item.map_err(|e| match e {
                ProtocolError::Io(e) => panic!("in-memory reads cannot fail: {e}"),
                other => other.to_string(),
            }));
        }
        out
    })
}

fn event() -> impl Strategy<Value = Event> {
    let text = ".{0,40}";
    prop_oneof![
        (text, text).prop_map(|(id, error)| Event::error(id, error)),
        (text, text, any::<u16>(), text).prop_map(|(id, error, status, hint)| Event::Error {
            id,
            error,
            status: Some(status),
            hint: Some(hint),
        }),
        text.prop_map(|id| Event::Done { id }),
        (text, text).prop_map(|(id, s)| Event::Message {
            id,
            data: Value::String(s)
        }),
        (text, text).prop_map(|(level, text)| Event::Log { level, text }),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic_and_never_yield_more_items_than_lines(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        max in 1usize..256,
        chunk in 1usize..64,
    ) {
        let items = read_all::<Command>(&bytes, max, chunk);
        let lines = bytes.split(|b| *b == b'\n').count();
        prop_assert!(items.len() <= lines);
    }

    #[test]
    fn valid_events_round_trip_through_any_read_size(events in proptest::collection::vec(event(), 0..20), chunk in 1usize..32) {
        let input: Vec<u8> = events.iter().flat_map(encode).collect();
        let read: Vec<Event> = read_all::<Event>(&input, 1 << 20, chunk).into_iter().map(Result::unwrap).collect();
        prop_assert_eq!(read, events);
    }

    #[test]
    fn an_oversized_line_costs_only_itself(before in event(), after in event(), junk in 65usize..400) {
        let mut input = encode(&before);
        input.extend(std::iter::repeat_n(b'x', junk));
        input.push(b'\n');
        input.extend(encode(&after));
        let max = encode(&before).len().max(encode(&after).len()).max(64);
        let junk_fits = junk <= max;
        let read = read_all::<Event>(&input, max, 7);
        prop_assert_eq!(read.len(), 3);
        prop_assert_eq!(&read[0], &Ok(before));
        prop_assert!(read[1].is_err() || junk_fits);
        prop_assert_eq!(&read[2], &Ok(after));
    }

    #[test]
    fn queries_with_any_prompt_round_trip(prompt in ".{0,200}", id in "[0-9a-f]{1,12}") {
        let query = Command::Query { id, prompt: Value::String(prompt), session_id: "s".into(), options: QueryOptions::default() };
        let read = read_all::<Command>(&encode(&query), 1 << 20, 5);
        prop_assert_eq!(read, vec![Ok(query)]);
    }
}
