//! TLS (the listener's side of every handshake): the only code that touches OpenSSL handshake
//! state.
//!
//! - `client_hello`: a pure parser for the SNI of the first bytes of a connection.
//! - `gate`: the pre-TLS gate (Pingora's `PreTlsProcess`): a client cycling through never-seen
//!   names is cut off before any lookup (`limits::clients` keeps its buckets).
//! - `handshake`: the certificate callback (`TlsAccept`), the TLS-ALPN-01 detection in the
//!   ClientHello callback, and the name a connection was established for.
//!
//! No policy here: which name is allowed and which certificate it gets is `certs::manager`'s.

pub mod client_hello;
pub mod gate;
pub mod handshake;
