//! Command-line tools beyond `serve`: `verify`, `policy check` and the
//! `store` commands.
//!
//! Imports: `oci`, `config`, `policy`, `store`, `proxy`, `server::route`
//! (reference parsing shares the proxy's routing).

pub mod store;
pub mod verify;
