//! The `ash` command line: the server (`ash start`) and a client for its REST + SSE API.

pub mod client;
pub mod sse;
