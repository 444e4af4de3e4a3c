//! Server-rendered pages for tenant developers, admins and security auditors, mounted by
//! the gateway and using the same API as the CLI.
//!
//! Not built yet: it comes after the gateway. It must never call anything the public
//! API does not offer.
