//! Roles: `CREATE ROLE | USER … [LOGIN] [SUPERUSER] [PASSWORD '…']`, `ALTER ROLE`, `DROP ROLE`,
//! and the SCRAM-SHA-256 verifiers their passwords are kept as (PostgreSQL's format, so a
//! verifier taken from PostgreSQL's pg_authid can be given as the password too).

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use datafusion::sql::sqlparser::ast;
use pgwire::api::auth::sasl::scram::{ScramSecret, gen_salted_password};

use super::Engine;
use super::session::Session;
use crate::catalog::{BOOTSTRAP_ROLE, RoleDef};
use crate::engine::Output;
use crate::error::{Result, sqlstate};

const ITERATIONS: usize = 4096;

/// The SCRAM-SHA-256 verifier of `password`, with a random salt.
pub fn scram_verifier(password: &str) -> Result<String> {
    if password.starts_with("SCRAM-SHA-256$") {
        parse_verifier(password)?;
        return Ok(password.to_string());
    }
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| crate::internal!("no random salt for the password"))?;
    let salted = gen_salted_password(password, &salt, ITERATIONS);
    let ScramSecret::Verifier {
        stored_key,
        server_key,
        ..
    } = ScramSecret::verifier_from_salted_password(salt.to_vec(), salted, ITERATIONS)
    else {
        return Err(crate::internal!("SCRAM verifier of an unexpected kind"));
    };
    Ok(format!(
        "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    ))
}

/// The secret a SCRAM exchange checks the client against, from a stored verifier.
pub fn parse_verifier(verifier: &str) -> Result<ScramSecret> {
    let bad = || {
        crate::err!(
            sqlstate::INVALID_PARAMETER_VALUE,
            "a SCRAM-SHA-256 verifier reads SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
        )
    };
    let rest = verifier.strip_prefix("SCRAM-SHA-256$").ok_or_else(bad)?;
    let (params, keys) = rest.split_once('$').ok_or_else(bad)?;
    let (iterations, salt) = params.split_once(':').ok_or_else(bad)?;
    let (stored, server) = keys.split_once(':').ok_or_else(bad)?;
    let decode = |s: &str| STANDARD.decode(s).map_err(|_| bad());
    Ok(ScramSecret::Verifier {
        salt: decode(salt)?,
        iterations: iterations.parse().map_err(|_| bad())?,
        stored_key: decode(stored)?,
        server_key: decode(server)?,
    })
}

impl Engine {
    /// Creates, changes (`replace`) or drops a role, durably.
    fn write_role(
        &self,
        name: &str,
        change: impl FnOnce(Option<RoleDef>) -> Result<Option<RoleDef>>,
    ) -> Result<()> {
        let _commit = self.commit_lock.lock();
        let mut catalog = (**self.catalog.read()).clone();
        let current = catalog.role(name).map(|r| (*r).clone());
        match change(current)? {
            Some(def) => catalog.put_role(&self.state, def)?,
            None => catalog.drop_role(&self.state, name)?,
        }
        *self.catalog.write() = Arc::new(catalog);
        Ok(())
    }

    /// Sets the bootstrap role's password (`EDDY_PASSWORD` at start-up).
    pub fn set_bootstrap_password(&self, password: &str) -> Result<()> {
        let verifier = scram_verifier(password)?;
        self.write_role(BOOTSTRAP_ROLE, |role| {
            let mut role = role.unwrap_or_else(|| RoleDef {
                name: BOOTSTRAP_ROLE.into(),
                login: true,
                superuser: true,
                password: None,
            });
            role.password = Some(verifier);
            Ok(Some(role))
        })
    }
}

/// The role options a statement gives.
#[derive(Default)]
struct Options {
    login: Option<bool>,
    superuser: Option<bool>,
    /// `Some(None)`: PASSWORD NULL.
    password: Option<Option<String>>,
}

fn password_of(p: &ast::Password) -> Result<Option<String>> {
    match p {
        ast::Password::NullPassword => Ok(None),
        ast::Password::Password(ast::Expr::Value(v)) => match &v.value {
            ast::Value::SingleQuotedString(s)
            | ast::Value::DollarQuotedString(ast::DollarQuotedString { value: s, .. }) => {
                if s.is_empty() {
                    // PostgreSQL: an empty password is no password.
                    Ok(None)
                } else {
                    scram_verifier(s).map(Some)
                }
            }
            ast::Value::Null => Ok(None),
            other => Err(crate::err!(
                sqlstate::SYNTAX_ERROR,
                "a password is a string literal, not {other}"
            )),
        },
        ast::Password::Password(other) => Err(crate::err!(
            sqlstate::SYNTAX_ERROR,
            "a password is a string literal, not {other}"
        )),
    }
}

impl Session {
    fn require_superuser(&self, what: &str) -> Result<()> {
        let catalog = self.engine.catalog();
        let allowed = match catalog.role(&self.user) {
            Some(role) => role.superuser,
            // Trust authentication lets any name in; such sessions act as the bootstrap role.
            None => true,
        };
        if !allowed {
            return Err(crate::err!(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "permission denied to {what}"
            )
            .with_hint("Only superusers manage roles."));
        }
        Ok(())
    }

    /// `CREATE ROLE` (and `CREATE USER`, whose `login` defaults to true).
    pub(super) fn create_role(
        &mut self,
        create: &ast::CreateRole,
        is_user: bool,
    ) -> Result<Output> {
        self.require_superuser("create role")?;
        let unsupported = !create.in_role.is_empty()
            || !create.in_group.is_empty()
            || !create.role.is_empty()
            || !create.user.is_empty()
            || !create.admin.is_empty()
            || create.valid_until.is_some()
            || create.connection_limit.is_some();
        // NOCREATEDB and the like say what holds; INHERIT means nothing without membership.
        let granted = [
            create.create_db,
            create.create_role,
            create.replication,
            create.bypassrls,
        ]
        .contains(&Some(true));
        if granted {
            return Err(crate::unsupported!(
                "CREATEDB, CREATEROLE, REPLICATION and BYPASSRLS: Eddy's roles have LOGIN, SUPERUSER and PASSWORD (a SUPERUSER manages roles)"
            ));
        }
        if unsupported {
            return Err(crate::unsupported!(
                "role membership, VALID UNTIL and CONNECTION LIMIT: Eddy's roles have LOGIN, SUPERUSER and PASSWORD"
            ));
        }
        let password = create
            .password
            .as_ref()
            .map(password_of)
            .transpose()?
            .flatten();
        // PostgreSQL answers CREATE USER with the tag CREATE ROLE too.
        let tag = "CREATE ROLE";
        for name in &create.names {
            let name = crate::sql::table_name(name)?;
            let (login, superuser) = (
                create.login.unwrap_or(is_user),
                create.superuser.unwrap_or(false),
            );
            let mut skipped = false;
            self.engine.write_role(&name, |existing| {
                if existing.is_some() {
                    if create.if_not_exists {
                        skipped = true;
                        return Ok(existing);
                    }
                    return Err(crate::err!(
                        sqlstate::DUPLICATE_OBJECT,
                        "role \"{name}\" already exists"
                    ));
                }
                Ok(Some(RoleDef {
                    name: name.clone(),
                    login,
                    superuser,
                    password: password.clone(),
                }))
            })?;
            if skipped {
                return Ok(Output::Warning {
                    tag,
                    message: format!("role \"{name}\" already exists, skipping"),
                });
            }
        }
        Ok(Output::Command { tag, rows: None })
    }

    /// `ALTER ROLE name [WITH] options` (`ALTER USER` too).
    pub(super) fn alter_role(
        &mut self,
        name: &ast::Ident,
        operation: &ast::AlterRoleOperation,
    ) -> Result<Output> {
        let name = name.value.clone();
        let ast::AlterRoleOperation::WithOptions { options } = operation else {
            return Err(crate::unsupported!(
                "ALTER ROLE {operation}: only ALTER ROLE … WITH options"
            ));
        };
        // A role may change its own password; anything else takes a superuser.
        let own_password = name == self.user
            && options
                .iter()
                .all(|o| matches!(o, ast::RoleOption::Password(_)));
        if !own_password {
            self.require_superuser("alter role")?;
        }
        let mut set = Options::default();
        for option in options {
            match option {
                ast::RoleOption::Login(v) => set.login = Some(*v),
                ast::RoleOption::SuperUser(v) => set.superuser = Some(*v),
                ast::RoleOption::Password(p) => set.password = Some(password_of(p)?),
                other => {
                    return Err(crate::unsupported!(
                        "role option {other}: Eddy's roles have LOGIN, SUPERUSER and PASSWORD"
                    ));
                }
            }
        }
        if name == BOOTSTRAP_ROLE && (set.login == Some(false) || set.superuser == Some(false)) {
            return Err(crate::err!(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "the bootstrap role \"{BOOTSTRAP_ROLE}\" stays a superuser that may log in"
            ));
        }
        self.engine.write_role(&name, |existing| {
            let mut role = existing.ok_or_else(|| {
                crate::err!(sqlstate::UNDEFINED_OBJECT, "role \"{name}\" does not exist")
            })?;
            if let Some(v) = set.login {
                role.login = v;
            }
            if let Some(v) = set.superuser {
                role.superuser = v;
            }
            if let Some(p) = set.password {
                role.password = p;
            }
            Ok(Some(role))
        })?;
        Ok(Output::Command {
            tag: "ALTER ROLE",
            rows: None,
        })
    }

    /// `DROP ROLE [IF EXISTS] names`.
    pub(super) fn drop_roles(
        &mut self,
        names: &[ast::ObjectName],
        if_exists: bool,
    ) -> Result<Output> {
        self.require_superuser("drop role")?;
        let mut skipped = Vec::new();
        for name in names {
            let name = crate::sql::table_name(name)?;
            if name == BOOTSTRAP_ROLE {
                return Err(crate::err!(
                    sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                    "the bootstrap role \"{BOOTSTRAP_ROLE}\" cannot be dropped"
                ));
            }
            if name == self.user {
                return Err(crate::err!(
                    sqlstate::OBJECT_IN_USE,
                    "current user cannot be dropped"
                ));
            }
            if self.engine.catalog().role(&name).is_none() {
                if if_exists {
                    skipped.push(format!("role \"{name}\" does not exist, skipping"));
                    continue;
                }
                return Err(crate::err!(
                    sqlstate::UNDEFINED_OBJECT,
                    "role \"{name}\" does not exist"
                ));
            }
            self.engine.write_role(&name, |_| Ok(None))?;
        }
        if !skipped.is_empty() {
            return Ok(Output::Warning {
                tag: "DROP ROLE",
                message: skipped.join("\n"),
            });
        }
        Ok(Output::Command {
            tag: "DROP ROLE",
            rows: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifiers_round_trip_and_salts_differ() {
        let a = scram_verifier("secret").unwrap();
        let b = scram_verifier("secret").unwrap();
        assert!(a.starts_with("SCRAM-SHA-256$4096:"));
        assert_ne!(a, b, "a new salt each time");
        assert!(matches!(
            parse_verifier(&a).unwrap(),
            ScramSecret::Verifier {
                iterations: 4096,
                ..
            }
        ));
        // A verifier given as the password is kept as it is.
        assert_eq!(scram_verifier(&a).unwrap(), a);
        assert!(parse_verifier("SCRAM-SHA-256$x").is_err());
    }
}
