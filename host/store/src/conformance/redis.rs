//! A key prefix of its own for each test on the shared test Redis (for the `storage-redis`
//! plugin), whose keys are deleted afterwards.

use std::io::{Read, Write};

/// The Redis the tests use: `ASH_TEST_REDIS`, by default this machine's (127.0.0.1:6379).
pub fn redis_address() -> String {
    std::env::var("ASH_TEST_REDIS").unwrap_or_else(|_| "127.0.0.1:6379".into())
}

/// A fresh key prefix; [`drop`](Self::drop) deletes every key under it.
pub struct TestRedis {
    pub prefix: String,
}

impl TestRedis {
    pub fn new() -> Self {
        Self {
            prefix: format!("ash-test-{}:", uuid::Uuid::new_v4().simple()),
        }
    }

    /// Deletes the prefix's keys, in one Lua call over a raw connection.
    pub fn drop(self) {
        let script =
            "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end return 0";
        let pattern = format!("{}*", self.prefix);
        let args = ["EVAL", script, "0", pattern.as_str()];
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        let mut redis = std::net::TcpStream::connect(redis_address()).expect("the test Redis");
        redis.write_all(request.as_bytes()).expect("send to Redis");
        let mut reply = [0u8; 4];
        redis.read_exact(&mut reply).expect("Redis answers");
        assert_eq!(&reply, b":0\r\n", "cleanup");
    }
}

impl Default for TestRedis {
    fn default() -> Self {
        Self::new()
    }
}
