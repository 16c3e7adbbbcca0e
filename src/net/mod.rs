//! Network primitives with no knowledge of the edge: address ranges (`cidr`) and the PROXY
//! protocol header a TCP load balancer puts before a connection's first byte
//! (`proxy_protocol`). Pure code: no I/O, no allocation on the usual path, never panics on
//! input.

pub mod cidr;
pub mod proxy_protocol;
