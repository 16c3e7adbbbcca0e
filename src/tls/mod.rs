//! TLS (the listener's side of every handshake): the only code that touches OpenSSL handshake
//! state.
//!
//! - `accept`: before TLS: the PROXY protocol, connection admission, the client gate.
//! - `client_hello`: a pure parser for the SNI of the first bytes of a connection.
//! - `gate`: the pre-TLS gate (Pingora's `PreTlsProcess`): a client cycling through never-seen
//!   names is cut off before any lookup (`limits::clients` keeps its buckets).
//! - `hello`: the ClientHello record of a connection (its name, a TLS-ALPN-01 offer), a second
//!   ClientHello refused when it differs, sessions bound to their name.
//! - `handshake`: the certificate callback (`TlsAccept`), the early refusals with
//!   `unrecognized_name`, the hardened settings, and the name a connection was established for.
//! - `tickets`: session-ticket keys, rotated and shared.
//!
//! No policy here: which name is allowed and which certificate it gets is `certs::manager`'s.

pub mod accept;
pub mod client_hello;
pub mod gate;
pub mod handshake;
pub mod hello;
pub mod tickets;
