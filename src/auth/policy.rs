//! Which role each route needs. Pure: method and path in, [`Access`] out,
//! decided before routing so an unauthenticated caller learns nothing about
//! which routes exist.

use super::keys::Role;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// No token needed (`GET /health`).
    Public,
    /// A key with at least this role.
    Role {
        role: Role,
        /// A node-wide view (no key of its own): refused to prefix-limited keys.
        node_wide: bool,
    },
}

/// The access `method path` needs.
pub fn required(method: &axum::http::Method, path: &str) -> Access {
    use axum::http::Method;
    let reading = *method == Method::GET || *method == Method::HEAD;
    let role = |role, node_wide| Access::Role { role, node_wide };
    match path {
        // The dashboard's static files hold no data; the API calls they make
        // carry the tab's token.
        "/health" | "/ready" | "/" | "/dashboard/app.js" | "/dashboard/style.css" if reading => {
            Access::Public
        }
        "/api/sync" => role(Role::Admin, true),
        // The whole store, API key hashes included: admin only.
        "/api/snapshot" => role(Role::Admin, true),
        p if p == "/api/keys" || p.starts_with("/api/keys/") => role(Role::Admin, true),
        p if p == "/kv" || p.starts_with("/kv/") => {
            role(if reading { Role::Read } else { Role::Write }, false)
        }
        "/api/readings" => role(if reading { Role::Read } else { Role::Write }, false),
        "/api/state" | "/api/updates" | "/api/watch" => role(Role::Read, false),
        p if p.starts_with("/api/sensors/") || p.starts_with("/api/entry/") => {
            role(Role::Read, false)
        }
        _ => role(Role::Read, true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    #[test]
    fn routes_need_the_roles_of_the_issue() {
        let cases = [
            (Method::GET, "/health", Access::Public),
            (Method::GET, "/ready", Access::Public),
            (
                Method::GET,
                "/kv/a",
                Access::Role {
                    role: Role::Read,
                    node_wide: false,
                },
            ),
            (
                Method::PUT,
                "/kv/a",
                Access::Role {
                    role: Role::Write,
                    node_wide: false,
                },
            ),
            (
                Method::DELETE,
                "/kv/a",
                Access::Role {
                    role: Role::Write,
                    node_wide: false,
                },
            ),
            (
                Method::POST,
                "/api/readings",
                Access::Role {
                    role: Role::Write,
                    node_wide: false,
                },
            ),
            (
                Method::GET,
                "/metrics",
                Access::Role {
                    role: Role::Read,
                    node_wide: true,
                },
            ),
            (
                Method::GET,
                "/api/sync",
                Access::Role {
                    role: Role::Admin,
                    node_wide: true,
                },
            ),
            (
                Method::POST,
                "/api/keys",
                Access::Role {
                    role: Role::Admin,
                    node_wide: true,
                },
            ),
            (
                Method::POST,
                "/health",
                Access::Role {
                    role: Role::Read,
                    node_wide: true,
                },
            ),
            (
                Method::GET,
                "/nowhere",
                Access::Role {
                    role: Role::Read,
                    node_wide: true,
                },
            ),
        ];
        for (m, p, want) in cases {
            assert_eq!(required(&m, p), want, "{m} {p}");
        }
    }
}
