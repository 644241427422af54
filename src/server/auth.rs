//! Authentication (`--auth`): `trust` lets any user name in; `scram` asks for the password of a
//! role that may log in, by SCRAM-SHA-256 (with channel binding, SCRAM-SHA-256-PLUS, when TLS
//! is on). The default is `scram` when the server listens on an address other than loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pgwire::api::auth::mechanism::AuthMechanismFactory;
use pgwire::api::auth::sasl::scram::{ScramAuth, ScramSecret};
use pgwire::api::auth::{
    AuthDriver, AuthSource, DefaultServerParameterProvider, LoginInfo, Password,
};
use pgwire::error::{PgWireError, PgWireResult};

use crate::engine::Engine;
use crate::error::{Error, Result, sqlstate};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// Any user name, no password (the default on loopback).
    Trust,
    /// The password of a role with LOGIN, by SCRAM-SHA-256 (the default elsewhere).
    Scram,
}

impl AuthMode {
    /// `--auth`, or its default for the address listened on.
    pub fn for_listen(chosen: Option<AuthMode>, listen: SocketAddr) -> AuthMode {
        chosen.unwrap_or(if listen.ip().is_loopback() {
            AuthMode::Trust
        } else {
            AuthMode::Scram
        })
    }
}

/// What a connection's startup needs to authenticate it.
pub struct Authenticator {
    pub driver: AuthDriver<DefaultServerParameterProvider>,
    /// SCRAM-SHA-256 only: on connections without TLS, channel binding cannot be offered
    /// (libpq refuses a server that offers SCRAM-SHA-256-PLUS there).
    plain: Arc<dyn AuthMechanismFactory>,
    /// Also SCRAM-SHA-256-PLUS, bound to the TLS certificate, for TLS connections.
    tls: Option<Arc<dyn AuthMechanismFactory>>,
}

impl Authenticator {
    /// The SCRAM authenticator over the engine's roles; `certificate`: the TLS certificate
    /// (PEM), for channel binding.
    pub fn scram(engine: Arc<Engine>, certificate: Option<&[u8]>) -> Result<Authenticator> {
        let roles: Arc<dyn AuthSource> = Arc::new(Roles { engine });
        let tls = match certificate {
            Some(pem) => {
                let mut scram = ScramAuth::new(roles.clone());
                scram.configure_certificate(pem).map_err(|e| {
                    crate::internal!("TLS certificate for SCRAM channel binding: {e}")
                })?;
                Some(Arc::new(scram) as Arc<dyn AuthMechanismFactory>)
            }
            None => None,
        };
        Ok(Authenticator {
            driver: AuthDriver::new(DefaultServerParameterProvider::default()),
            plain: Arc::new(ScramAuth::new(roles)),
            tls,
        })
    }

    /// The mechanism for a connection (`secure`: over TLS).
    pub fn mechanism(&self, secure: bool) -> Box<dyn pgwire::api::auth::mechanism::AuthMechanism> {
        match (&self.tls, secure) {
            (Some(tls), true) => tls.create(),
            _ => self.plain.create(),
        }
    }
}

/// The error a failed authentication ends the connection with (whatever failed: PostgreSQL
/// does not tell a wrong password from an unknown role).
pub fn failed(user: &str) -> Error {
    Error::new(
        sqlstate::INVALID_PASSWORD,
        format!("password authentication failed for user \"{user}\""),
    )
}

/// Roles' passwords, as SCRAM secrets.
struct Roles {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for Roles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Roles")
    }
}

#[async_trait]
impl AuthSource for Roles {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        // Only SCRAM is offered, which asks for the secret below.
        Err(PgWireError::InvalidPassword(
            login.user().unwrap_or_default().to_owned(),
        ))
    }

    async fn get_scram_secret(&self, login: &LoginInfo) -> PgWireResult<(ScramSecret, Option<()>)> {
        let user = login.user().unwrap_or_default();
        let denied = || PgWireError::InvalidPassword(user.to_owned());
        let role = self.engine.catalog().role(user).ok_or_else(denied)?;
        if !role.login {
            return Err(denied());
        }
        let verifier = role.password.as_deref().ok_or_else(denied)?;
        let secret = crate::engine::parse_verifier(verifier).map_err(|_| denied())?;
        Ok((secret, None))
    }
}
