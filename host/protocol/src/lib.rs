//! The bridge protocol: newline-delimited JSON between the host and the bridge in a sandbox.
//!
//! Host → bridge lines are [`Command`]s (`{"cmd": …}`), bridge → host lines are [`Event`]s
//! (`{"ev": …}`). Every command carries an `id` and every event that answers it echoes that
//! id, so several commands can be in flight on one connection without stealing each other's
//! events. Lines are capped at [`MAX_LINE_BYTES`]: a longer line is skipped whole and reported
//! as [`ProtocolError::LineTooLong`]; a line that is not a valid message is reported as
//! [`ProtocolError::Malformed`]. Neither ends the connection: the reader goes on with the
//! next line, so one bad line never takes a session down.

mod codec;
mod message;

pub use codec::{encode, LineReader, ProtocolError, MAX_LINE_BYTES};
pub use message::{Backend, Command, Event, QueryOptions, MODEL_SOCKET, PROTOCOL_VERSION};
