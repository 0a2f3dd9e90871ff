//! Ash's storage port (`ash:storage`) on Redis. Each read and each commit is one Lua script (or
//! one command), so Redis runs it atomically: a commit's revision checks and its writes, or an
//! append and its numbering, cannot interleave with another client's.
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
    world: "ash:storage/storage-backend@0.2.0",
    generate_all,
});

use std::borrow::Cow;
use std::cell::RefCell;
use std::io::{BufRead, BufReader, Read, Write as _};
use std::net::TcpStream;

use ash::host::config;
use ash::storage::types::{Document, Entry, Error, Write};
use exports::ash::storage::store::Guest;

/// The longest bulk reply read (a document is at most 16 MiB).
const MAX_BULK: usize = 64 * 1024 * 1024;

/// A commit: ARGV is the writes one after another — `put doc set key expected data idx`,
/// `delete doc set key expected`, `append last log n entry…` — checked all first (every
/// revision), then applied; so a conflict writes nothing.
const COMMIT: &str = r#"
local writes, i = {}, 1
while i <= #ARGV do
  local op = ARGV[i]
  if op == 'put' then
    table.insert(writes, {op = op, doc = ARGV[i+1], set = ARGV[i+2], key = ARGV[i+3],
      expected = tonumber(ARGV[i+4]), data = ARGV[i+5], idx = ARGV[i+6]})
    i = i + 7
  elseif op == 'delete' then
    table.insert(writes, {op = op, doc = ARGV[i+1], set = ARGV[i+2], key = ARGV[i+3],
      expected = tonumber(ARGV[i+4])})
    i = i + 5
  else
    local n = tonumber(ARGV[i+3])
    table.insert(writes, {op = op, last = ARGV[i+1], log = ARGV[i+2], first = i + 4, n = n})
    i = i + 4 + n
  end
end
for _, w in ipairs(writes) do
  if w.op ~= 'append' then
    local rev = tonumber(redis.call('HGET', w.doc, 'rev') or '0')
    if rev ~= w.expected and (w.op == 'put' or rev ~= 0) then
      return redis.error_reply('CONFLICT ' .. w.key .. ' is at revision ' .. rev)
    end
  end
end
local out = {}
for _, w in ipairs(writes) do
  if w.op == 'append' then
    local last = redis.call('INCRBY', w.last, w.n)
    for j = w.first, w.first + w.n - 1 do redis.call('RPUSH', w.log, ARGV[j]) end
    table.insert(out, last - w.n + 1)
  elseif w.op == 'delete' and redis.call('EXISTS', w.doc) == 0 then
    table.insert(out, 0)
  else
    local old = redis.call('HGET', w.doc, 'idx')
    if old then for _, set in ipairs(cjson.decode(old)) do redis.call('ZREM', set, w.key) end end
    if w.op == 'put' then
      for _, set in ipairs(cjson.decode(w.idx)) do redis.call('ZADD', set, 0, w.key) end
      redis.call('HSET', w.doc, 'rev', w.expected + 1, 'data', w.data, 'idx', w.idx)
      redis.call('ZADD', w.set, 0, w.key)
      table.insert(out, w.expected + 1)
    else
      redis.call('DEL', w.doc)
      redis.call('ZREM', w.set, w.key)
      table.insert(out, 1)
    end
  end
end
return out
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

    fn commit(writes: Vec<Write>) -> Result<Vec<u64>, Error> {
        let mut args: Vec<Cow<[u8]>> = Vec::new();
        let owned = |text: String| Cow::Owned(text.into_bytes());
        for write in &writes {
            match write {
                Write::Put(put) => {
                    let sets: Vec<String> = put
                        .index
                        .iter()
                        .map(|(name, value)| index_set(&put.collection, name, value))
                        .collect();
                    args.extend([
                        Cow::Borrowed(b"put".as_slice()),
                        owned(format!("{}{}", doc_prefix(&put.collection), put.key)),
                        owned(collection_set(&put.collection)),
                        Cow::Borrowed(put.key.as_bytes()),
                        owned(put.expected.to_string()),
                        Cow::Borrowed(put.data.as_bytes()),
                        owned(serde_json::to_string(&sets).expect("strings")),
                    ]);
                }
                Write::Delete(delete) => args.extend([
                    Cow::Borrowed(b"delete".as_slice()),
                    owned(format!("{}{}", doc_prefix(&delete.collection), delete.key)),
                    owned(collection_set(&delete.collection)),
                    Cow::Borrowed(delete.key.as_bytes()),
                    owned(delete.expected.to_string()),
                ]),
                Write::Append(append) => {
                    let (last, log) = stream_keys(&append.stream);
                    args.extend([
                        Cow::Borrowed(b"append".as_slice()),
                        owned(last),
                        owned(log),
                        owned(append.entries.len().to_string()),
                    ]);
                    args.extend(append.entries.iter().map(|e| Cow::Borrowed(e.as_bytes())));
                }
            }
        }
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_ref()).collect();
        match script(COMMIT, &[], &args)? {
            Reply::Array(results) => results.into_iter().map(int).collect(),
            _ => Err(error("internal", "Redis sent an unexpected reply")),
        }
    }
}

export!(Redis);
