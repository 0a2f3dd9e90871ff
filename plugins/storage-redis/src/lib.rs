//! Ash's storage port (`ash:storage`) on Redis. Each operation is one Lua script, so Redis runs
//! it atomically: a revision check and its write, or an append and its numbering, cannot
//! interleave with another client's.
//!
//! Layout, under the configured `prefix` (names carry their length, so no two collections,
//! keys or streams can spell the same Redis key):
//! - a document is a hash `d:<len>:<collection><key>` with `rev`, `data` and `idx` (the JSON
//!   list of the index sets it is in);
//! - a collection's keys are a sorted set `c:<len>:<collection>` (all scores 0, so
//!   `ZRANGEBYLEX` lists them bytewise), and each index value one more such set;
//! - a stream is a counter `s:<len>:<stream>:last` and a list `s:<len>:<stream>:log` whose
//!   position `n - 1` holds entry `n`.
//!
//! The scripts touch keys they do not declare, so this needs a standalone Redis (or one
//! primary), not Redis Cluster.

wit_bindgen::generate!({
    path: ["../../wit/host", "../../wit/storage"],
    world: "ash:storage/storage-backend@0.1.0",
    generate_all,
});

use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use ash::host::config;
use ash::storage::types::{Document, Entry, Error};
use exports::ash::storage::store::Guest;

/// The longest bulk reply read (a document is at most 16 MiB).
const MAX_BULK: usize = 64 * 1024 * 1024;

const PUT: &str = r#"
local rev = tonumber(redis.call('HGET', KEYS[1], 'rev') or '0')
if rev ~= tonumber(ARGV[1]) then return redis.error_reply('CONFLICT the document is at revision ' .. rev) end
local old = redis.call('HGET', KEYS[1], 'idx')
if old then for _, set in ipairs(cjson.decode(old)) do redis.call('ZREM', set, ARGV[3]) end end
for _, set in ipairs(cjson.decode(ARGV[4])) do redis.call('ZADD', set, 0, ARGV[3]) end
redis.call('HSET', KEYS[1], 'rev', rev + 1, 'data', ARGV[2], 'idx', ARGV[4])
redis.call('ZADD', KEYS[2], 0, ARGV[3])
return rev + 1
"#;

const DELETE: &str = r#"
local rev = redis.call('HGET', KEYS[1], 'rev')
if not rev then return 0 end
if tonumber(rev) ~= tonumber(ARGV[1]) then return redis.error_reply('CONFLICT the document is at revision ' .. rev) end
local old = redis.call('HGET', KEYS[1], 'idx')
if old then for _, set in ipairs(cjson.decode(old)) do redis.call('ZREM', set, ARGV[2]) end end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"#;

/// Keys of a sorted set after ARGV[1], at most ARGV[2], with each document (ARGV[3] + key).
const RANGE: &str = r#"
local keys = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, key in ipairs(keys) do
  local doc = redis.call('HMGET', ARGV[3] .. key, 'rev', 'data')
  if doc[1] then table.insert(out, {key, doc[1], doc[2]}) end
end
return out
"#;

const APPEND: &str = r#"
local last = redis.call('INCRBY', KEYS[1], #ARGV)
for i = 1, #ARGV do redis.call('RPUSH', KEYS[2], ARGV[i]) end
return last - #ARGV + 1
"#;

/// A Redis reply.
enum Reply {
    Nil,
    Int(i64),
    Bulk(Vec<u8>),
    Array(Vec<Reply>),
}

fn error(code: &str, message: impl Into<String>) -> Error {
    Error {
        code: code.into(),
        message: message.into(),
    }
}

fn unavailable(e: std::io::Error) -> Error {
    error("unavailable", format!("Redis: {e}"))
}

/// One connection, kept by the instance between calls.
struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    fn open() -> Result<Self, Error> {
        let address = config::get("address").unwrap_or_else(|| "127.0.0.1:6379".into());
        let stream = TcpStream::connect(address.as_str()).map_err(|e| {
            error(
                "unavailable",
                format!("cannot reach Redis at {address}: {e}"),
            )
        })?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    fn command(&mut self, args: &[&[u8]]) -> Result<Reply, Error> {
        let mut request = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            request.extend_from_slice(arg);
            request.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&request)
            .map_err(unavailable)?;
        self.reply()
    }

    fn line(&mut self) -> Result<String, Error> {
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(unavailable)?;
        if !line.ends_with("\r\n") {
            return Err(error("unavailable", "Redis closed the connection"));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn reply(&mut self) -> Result<Reply, Error> {
        let line = self.line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let number = |text: &str| {
            text.parse::<i64>()
                .map_err(|_| error("internal", format!("Redis sent a bad reply: {line}")))
        };
        match kind {
            "+" => Ok(Reply::Bulk(rest.as_bytes().to_vec())),
            "-" => match rest.strip_prefix("CONFLICT ") {
                Some(message) => Err(error("conflict", message)),
                None => Err(error("internal", format!("Redis: {rest}"))),
            },
            ":" => Ok(Reply::Int(number(rest)?)),
            "$" => {
                let len = number(rest)?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                let len = len as usize;
                if len > MAX_BULK {
                    return Err(error("internal", "Redis sent a value over 64 MiB"));
                }
                let mut value = vec![0; len + 2];
                self.reader.read_exact(&mut value).map_err(unavailable)?;
                value.truncate(len);
                Ok(Reply::Bulk(value))
            }
            "*" => {
                let len = number(rest)?;
                if len < 0 {
                    return Ok(Reply::Nil);
                }
                (0..len)
                    .map(|_| self.reply())
                    .collect::<Result<_, _>>()
                    .map(Reply::Array)
            }
            _ => Err(error("internal", format!("Redis sent a bad reply: {line}"))),
        }
    }
}

thread_local! {
    static CONNECTION: RefCell<Option<Connection>> = const { RefCell::new(None) };
}

/// Runs a command on the kept connection (opening it first); a connection that failed is
/// dropped, so the next call opens a new one.
fn call(args: &[&[u8]]) -> Result<Reply, Error> {
    CONNECTION.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(Connection::open()?);
        }
        let outcome = slot.as_mut().expect("opened").command(args);
        if matches!(&outcome, Err(e) if e.code == "unavailable") {
            *slot = None;
        }
        outcome
    })
}

fn script(source: &str, keys: &[&str], args: &[&[u8]]) -> Result<Reply, Error> {
    let count = keys.len().to_string();
    let mut all: Vec<&[u8]> = vec![b"EVAL", source.as_bytes(), count.as_bytes()];
    all.extend(keys.iter().map(|k| k.as_bytes()));
    all.extend_from_slice(args);
    call(&all)
}

fn prefix() -> String {
    config::get("prefix").unwrap_or_else(|| "ash:".into())
}

fn doc_prefix(collection: &str) -> String {
    format!("{}d:{}:{collection}", prefix(), collection.len())
}

fn collection_set(collection: &str) -> String {
    format!("{}c:{}:{collection}", prefix(), collection.len())
}

fn index_set(collection: &str, name: &str, value: &str) -> String {
    format!(
        "{}i:{}:{collection}:{}:{name}:{value}",
        prefix(),
        collection.len(),
        name.len()
    )
}

fn stream_keys(stream: &str) -> (String, String) {
    let base = format!("{}s:{}:{stream}", prefix(), stream.len());
    (format!("{base}:last"), format!("{base}:log"))
}

fn text(reply: Reply) -> Result<String, Error> {
    match reply {
        Reply::Bulk(bytes) => String::from_utf8(bytes)
            .map_err(|_| error("internal", "Redis holds a value that is not UTF-8")),
        _ => Err(error("internal", "Redis sent an unexpected reply")),
    }
}

fn int(reply: Reply) -> Result<u64, Error> {
    match reply {
        Reply::Int(n) if n >= 0 => Ok(n as u64),
        Reply::Bulk(bytes) => std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| error("internal", "Redis sent a bad number")),
        _ => Err(error("internal", "Redis sent an unexpected reply")),
    }
}

/// `(after` for a key range after `after`, or `-` for the start.
fn after_bound(after: &str) -> Vec<u8> {
    if after.is_empty() {
        b"-".to_vec()
    } else {
        [b"(".as_slice(), after.as_bytes()].concat()
    }
}

fn range(set: &str, collection: &str, after: &str, limit: u32) -> Result<Vec<Document>, Error> {
    let rows = match script(
        RANGE,
        &[set],
        &[
            &after_bound(after),
            limit.to_string().as_bytes(),
            doc_prefix(collection).as_bytes(),
        ],
    )? {
        Reply::Array(rows) => rows,
        _ => return Err(error("internal", "Redis sent an unexpected reply")),
    };
    rows.into_iter()
        .map(|row| match row {
            Reply::Array(fields) if fields.len() == 3 => {
                let mut fields = fields.into_iter();
                let key = text(fields.next().expect("3"))?;
                let revision = int(fields.next().expect("3"))?;
                let data = text(fields.next().expect("3"))?;
                Ok(Document {
                    collection: collection.to_owned(),
                    key,
                    revision,
                    data,
                })
            }
            _ => Err(error("internal", "Redis sent an unexpected reply")),
        })
        .collect()
}

struct Redis;

impl Guest for Redis {
    fn get(collection: String, key: String) -> Result<Option<Document>, Error> {
        let doc = format!("{}{key}", doc_prefix(&collection));
        match call(&[b"HMGET", doc.as_bytes(), b"rev", b"data"])? {
            Reply::Array(fields) if fields.len() == 2 => {
                let mut fields = fields.into_iter();
                match (fields.next().expect("2"), fields.next().expect("2")) {
                    (Reply::Nil, _) => Ok(None),
                    (revision, data) => Ok(Some(Document {
                        collection,
                        key,
                        revision: int(revision)?,
                        data: text(data)?,
                    })),
                }
            }
            _ => Err(error("internal", "Redis sent an unexpected reply")),
        }
    }

    fn put(
        collection: String,
        key: String,
        data: String,
        expected: u64,
        index: Vec<(String, String)>,
    ) -> Result<u64, Error> {
        let doc = format!("{}{key}", doc_prefix(&collection));
        let sets: Vec<String> = index
            .iter()
            .map(|(name, value)| index_set(&collection, name, value))
            .collect();
        let sets = serde_json::to_string(&sets).expect("strings");
        let reply = script(
            PUT,
            &[&doc, &collection_set(&collection)],
            &[
                expected.to_string().as_bytes(),
                data.as_bytes(),
                key.as_bytes(),
                sets.as_bytes(),
            ],
        )?;
        int(reply)
    }

    fn delete(collection: String, key: String, expected: u64) -> Result<bool, Error> {
        let doc = format!("{}{key}", doc_prefix(&collection));
        let reply = script(
            DELETE,
            &[&doc, &collection_set(&collection)],
            &[expected.to_string().as_bytes(), key.as_bytes()],
        )?;
        Ok(int(reply)? == 1)
    }

    fn list(collection: String, after: String, limit: u32) -> Result<Vec<Document>, Error> {
        range(&collection_set(&collection), &collection, &after, limit)
    }

    fn find(
        collection: String,
        index: String,
        value: String,
        after: String,
        limit: u32,
    ) -> Result<Vec<Document>, Error> {
        let set = index_set(&collection, &index, &value);
        range(&set, &collection, &after, limit)
    }

    fn append(stream: String, entries: Vec<String>) -> Result<u64, Error> {
        let (last, log) = stream_keys(&stream);
        let args: Vec<&[u8]> = entries.iter().map(|e| e.as_bytes()).collect();
        int(script(APPEND, &[&last, &log], &args)?)
    }

    fn read(stream: String, after: u64, limit: u32) -> Result<Vec<Entry>, Error> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (_, log) = stream_keys(&stream);
        let stop = after.saturating_add(u64::from(limit) - 1);
        let reply = call(&[
            b"LRANGE",
            log.as_bytes(),
            after.to_string().as_bytes(),
            stop.to_string().as_bytes(),
        ])?;
        let Reply::Array(items) = reply else {
            return Err(error("internal", "Redis sent an unexpected reply"));
        };
        items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                Ok(Entry {
                    sequence: after + 1 + i as u64,
                    data: text(item)?,
                })
            })
            .collect()
    }
}

export!(Redis);
