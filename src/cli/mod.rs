//! Command-line tools beyond `serve`: `verify`, `watch`, `promote`, `export`, `import`,
//! `policy check` and the `store` commands.
//!
//! Imports: `oci`, `config`, `policy`, `store`, `proxy`, `promote`,
//! `server::route` (reference parsing shares the proxy's routing), `watch`, `airgap`.

pub mod export;
pub mod import;
pub mod promote;
pub mod store;
pub mod verify;
pub mod watch;
